"""ModelDeployment spec -> Ray Serve config: the one rendering shared by the operator and
local mode, plus the model gate (`requireMetrics`).

The config is what `serve deploy` reads (Ray's `ServeDeploySchema`): one application
running the runtime's app builder with `ServeArgs`, one deployment whose `user_config` is
the batching (applied live) and whose autoscaling comes from the spec.

A language model's replica admits `maxSequences + maxWaiting` sequences and answers 429
beyond them; Serve sends it exactly that many (`max_ongoing_requests`) and queues
`maxQueuedRequests` more before its own 503, so a caller meets the replica's limit first
and Serve's queue only when every replica is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelplane_operator import constants as c
from modelplane_operator.api.deployment import SERVED_BUILTIN_MODELS
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.judge import SpecError
from modelplane_runtime.contract import (
    GENERATION_ENGINE,
    SERVE_DEPLOYMENT,
    SERVE_HTTP_PORT,
    SERVE_IMPORT_PATH,
    AdapterRef,
    BatchingConfig,
    GateFailure,
    GenerationArgs,
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
    task: str | None = None
    """Its task where the operator knows it (the fromTraining training's
    spec.model.task); None for a model.uri artifact, whose card only the replica reads."""


LANGUAGE_TASK = "text-generation"


def known_task(deployment: ModelDeployment, task: str | None) -> str | None:
    """The served model's task as far as the operator knows it: a builtin:// model's,
    else `task` (the training's, or None)."""
    if deployment.spec.model.uri in SERVED_BUILTIN_MODELS:
        return LANGUAGE_TASK
    return task


def is_language_model(deployment: ModelDeployment, task: str | None) -> bool:
    """Whether the deployment serves a language model, as far as the operator can tell:
    spec.generation says so, or the model's known task does."""
    return deployment.spec.generation is not None or known_task(deployment, task) == LANGUAGE_TASK


def engine(deployment: ModelDeployment, task: str | None) -> str:
    """status.engine: what the replicas run the model with."""
    return GENERATION_ENGINE if is_language_model(deployment, task) else c.ENGINE_DYNAMIC_BATCHING


def generation_problem(deployment: ModelDeployment, task: str | None) -> SpecError | None:
    """spec.generation on a model the operator knows is a classifier, or None. Known from
    the training's spec, so it is judged before the training ends."""
    task = known_task(deployment, task)
    if deployment.spec.generation is None or task is None or task == LANGUAGE_TASK:
        return None
    source = deployment.spec.model.from_training
    return SpecError(
        "spec.generation",
        f"the model of ModelTraining {source!r} is a {task} model, which answers /predict "
        "with dynamic batching (spec.batching); generation settings are for "
        "text-generation models: remove spec.generation",
    )


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


def render_generation(deployment: ModelDeployment) -> GenerationArgs | None:
    """ServeArgs.generation from spec.generation (None: the replica's defaults). Raises
    SpecError for an adapter named as the deployment, whose name a request's `model`
    gives to the base model."""
    generation = deployment.spec.generation
    if generation is None:
        return None
    for i, adapter in enumerate(generation.adapters):
        if adapter.name == deployment.metadata.name:
            raise SpecError(
                f"spec.generation.adapters[{i}].name",
                f"{adapter.name!r} is the deployment's own name, which a request's model "
                "uses for the base model without an adapter: rename the adapter",
            )
    return GenerationArgs(
        max_sequences=generation.max_sequences,
        max_waiting=generation.max_waiting,
        max_tokens=generation.max_tokens,
        kv_cache_tokens=generation.kv_cache_tokens,
        max_batch_tokens=generation.max_batch_tokens,
        adapters=tuple(AdapterRef(name=a.name, uri=a.uri) for a in generation.adapters),
        max_loaded_adapters=generation.max_loaded_adapters,
    )


def render_serve_args(
    deployment: ModelDeployment, model: ResolvedModel, *, threads: int = 0
) -> ServeArgs:
    """The replica's arguments. Raises SpecError for a spec they cannot carry."""
    spec = deployment.spec
    name = deployment.metadata.name
    if not name:
        raise SpecError(
            "metadata.name", "a ModelDeployment needs a name to render its Serve config"
        )
    if (problem := generation_problem(deployment, model.task)) is not None:
        raise problem
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
        generation=render_generation(deployment),
    )


def max_ongoing_requests(deployment: ModelDeployment, task: str | None) -> int:
    """What Serve sends one replica at once: a classifier's maxOngoingRequests; for a
    language model, the sequences its replica admits (running and waiting), so the
    replica's own 429 comes before Serve queues anything."""
    if not is_language_model(deployment, task):
        return deployment.spec.max_ongoing_requests
    generation = render_generation(deployment) or GenerationArgs()
    return generation.max_sequences + generation.max_waiting


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
    args = render_serve_args(deployment, model, threads=threads)
    options: dict[str, Any] = {
        "name": SERVE_DEPLOYMENT,
        "max_ongoing_requests": max_ongoing_requests(deployment, model.task),
        "max_queued_requests": spec.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
        # New replicas start before old ones stop: a new model rolls out without a gap,
        # and one that cannot start leaves the old version serving (Serve then stops
        # the failed rollout and reports DEPLOY_FAILED with the replica's error).
        "max_surge_percent": 100,
        # A language model's replica is given the batching too, and ignores it: the
        # operator cannot tell every language model apart (a model.uri artifact).
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
                "args": args.model_dump(mode="json"),
                "deployments": [options],
            }
        ],
    }
