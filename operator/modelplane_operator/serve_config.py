"""ModelDeployment spec -> Ray Serve config: the one rendering shared by the operator and
local mode, plus the model gate (`requireMetrics`).

The config is what `serve deploy` reads (Ray's `ServeDeploySchema`): one application
running the runtime's app builder with `ServeArgs`, one deployment whose `user_config` is
the batching (applied live) and whose autoscaling comes from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.judge import SpecError
from modelplane_runtime.contract import (
    SERVE_DEPLOYMENT,
    SERVE_HTTP_PORT,
    SERVE_IMPORT_PATH,
    BatchingConfig,
    GateFailure,
    ServeArgs,
)
from modelplane_runtime.contract import gate_failures as contract_gate_failures

# Seconds a client told "503, overloaded" waits before trying again.
RETRY_AFTER_S = 1.0
# Autoscaling reacts on the last 2 s of load (Ray's default looks back 30 s); with the
# 0.5 s metric push of RAY_SERVE_ENVIRONMENT a load step is seen within about a second,
# and upscaleDelaySeconds (default 2) decides when replicas are added.
LOOK_BACK_PERIOD_S = 2.0
METRICS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ResolvedModel:
    """The artifact a deployment serves, as its model card or training reported it."""

    uri: str
    digest: str
    metrics: dict[str, float]


def gate(deployment: ModelDeployment, model: ResolvedModel) -> list[GateFailure]:
    """What keeps the model from being rolled out: each unmet requireMetrics entry."""
    return contract_gate_failures(deployment.spec.require_metrics, model.metrics)


def autoscaling_config(deployment: ModelDeployment) -> dict[str, Any]:
    spec = deployment.spec
    return {
        "min_replicas": spec.replicas.min,
        "max_replicas": spec.replicas.max,
        "initial_replicas": max(spec.replicas.min, 1),
        "target_ongoing_requests": spec.autoscaling.target_ongoing_requests,
        "upscale_delay_s": spec.autoscaling.upscale_delay_seconds,
        "downscale_delay_s": spec.autoscaling.downscale_delay_seconds,
        "look_back_period_s": LOOK_BACK_PERIOD_S,
        # Deprecated in Ray in favour of the push-interval variables, but still checked
        # against look_back_period_s; it matches RAY_SERVE_ENVIRONMENT's push interval.
        "metrics_interval_s": METRICS_INTERVAL_S,
    }


def render_serve_args(
    deployment: ModelDeployment, model: ResolvedModel, *, threads: int = 0
) -> ServeArgs:
    spec = deployment.spec
    name = deployment.metadata.name
    if not name:
        raise SpecError(
            "metadata.name", "a ModelDeployment needs a name to render its Serve config"
        )
    return ServeArgs(
        model_name=name,
        model_uri=model.uri,
        expected_digest=model.digest or None,
        device="cuda" if spec.resources.gpus_per_replica > 0 else "cpu",
        dtype=spec.optimization.dtype,
        quantization=spec.optimization.quantization,
        compile=spec.optimization.compile,
        threads=threads,
        require_metrics=dict(spec.require_metrics),
    )


def render_serve_config(
    deployment: ModelDeployment,
    model: ResolvedModel,
    *,
    replica_cpus: float = 1.0,
    threads: int = 0,
    http_host: str = "0.0.0.0",
    http_port: int = SERVE_HTTP_PORT,
) -> dict[str, Any]:
    """The Serve config (`serve deploy` format) that serves `model` as `deployment` says.

    `replica_cpus` is what Ray reserves for each replica: the worker pod's one replica
    slot on a cluster, a share of the machine in local mode. `threads` are the replica's
    torch threads; 0 means as many as the CPUs Ray reserved.
    """
    spec = deployment.spec
    options: dict[str, Any] = {
        "name": SERVE_DEPLOYMENT,
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
        # New replicas start before old ones stop: a new model rolls out without a gap,
        # and one that cannot start leaves the old version serving (Serve then stops
        # the failed rollout and reports DEPLOY_FAILED with the replica's error).
        "max_surge_percent": 100,
        "user_config": BatchingConfig(
            max_batch_size=spec.batching.max_batch_size,
            batch_wait_timeout_s=spec.batching.batch_wait_timeout_ms / 1000,
        ).model_dump(mode="json"),
        "ray_actor_options": {
            "num_cpus": replica_cpus,
            "num_gpus": spec.resources.gpus_per_replica,
        },
    }
    if spec.replicas.min == spec.replicas.max:
        options["num_replicas"] = spec.replicas.min
    else:
        options["autoscaling_config"] = autoscaling_config(deployment)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": http_host, "port": http_port},
        "applications": [
            {
                "name": deployment.metadata.name,
                "route_prefix": "/",
                "import_path": SERVE_IMPORT_PATH,
                # One log line per request costs a replica ~5% of its CPU at 1,000
                # requests/s; request counts and latency are in the metrics instead.
                "logging_config": {"enable_access_log": False},
                "args": render_serve_args(deployment, model, threads=threads).model_dump(
                    mode="json"
                ),
                "deployments": [options],
            }
        ],
    }
