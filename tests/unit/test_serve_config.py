"""A ModelDeployment renders to the Serve config the runtime's app runs under, and the
model gate names what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.judge import SpecError
from modelplane_operator.serve_config import ResolvedModel, gate, render_serve_config
from modelplane_runtime.contract import (
    SERVE_DEPLOYMENT,
    SERVE_IMPORT_PATH,
    AdapterRef,
    BatchingConfig,
    GenerationArgs,
    ServeArgs,
)
from tests.factories import make_deployment

MODEL = ResolvedModel(uri="pvc://models/demo/demo", digest="sha256:ab", metrics={"f1": 0.82})


def render(changes: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    deployment = ModelDeployment.model_validate(make_deployment(changes))
    return render_serve_config(deployment, MODEL, **options)


def only_deployment(config: dict[str, Any]) -> dict[str, Any]:
    (application,) = config["applications"]
    (deployment,) = application["deployments"]
    return deployment  # type: ignore[no-any-return]


def test_the_application_runs_the_runtime_app_with_typed_args() -> None:
    config = render({"spec.optimization": {"dtype": "bf16", "compile": True}})
    (application,) = config["applications"]
    assert application["import_path"] == SERVE_IMPORT_PATH
    assert application["route_prefix"] == "/"
    args = ServeArgs.model_validate(application["args"])
    assert (args.model_name, args.model_uri, args.expected_digest) == (
        "demo",
        "pvc://models/demo/demo",
        "sha256:ab",
    )
    assert (args.dtype, args.compile, args.device) == ("bf16", True, "cpu")
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_batching_is_user_config_in_seconds_so_it_changes_live() -> None:
    options = only_deployment(
        render({"spec.batching": {"maxBatchSize": 16, "batchWaitTimeoutMs": 20}})
    )
    assert options["name"] == SERVE_DEPLOYMENT
    assert BatchingConfig.model_validate(options["user_config"]) == BatchingConfig(
        max_batch_size=16, batch_wait_timeout_s=0.02
    )


def test_backpressure_bounds_the_queue_and_answers_503_with_retry_after() -> None:
    options = only_deployment(render({"spec.maxOngoingRequests": 40, "spec.maxQueuedRequests": 10}))
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (40, 10)
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1.0}


def test_a_rollout_starts_new_replicas_before_stopping_old_ones() -> None:
    assert only_deployment(render())["max_surge_percent"] == 100


def test_a_replica_range_maps_to_ray_autoscaling_with_fast_defaults() -> None:
    options = only_deployment(
        render(
            {
                "spec.replicas": {"min": 1, "max": 8},
                "spec.autoscaling": {
                    "targetOngoingRequests": 4,
                    "upscaleDelaySeconds": 1,
                    "downscaleDelaySeconds": 30,
                },
            }
        )
    )
    assert "num_replicas" not in options
    scaling = options["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["initial_replicas"]) == (
        1,
        8,
        1,
    )
    assert scaling["target_ongoing_requests"] == 4
    assert (scaling["upscale_delay_s"], scaling["downscale_delay_s"]) == (1, 30)
    # Ray's default looks back 30 s; a load step must count within seconds.
    assert scaling["look_back_period_s"] <= 2
    assert scaling["metrics_interval_s"] < scaling["look_back_period_s"]


def test_scale_to_zero_starts_with_one_replica() -> None:
    scaling = only_deployment(render({"spec.replicas": {"min": 0, "max": 2}}))["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["initial_replicas"]) == (0, 1)


def test_a_fixed_replica_count_needs_no_autoscaler() -> None:
    options = only_deployment(render({"spec.replicas": {"min": 3, "max": 3}}))
    assert options["num_replicas"] == 3
    assert "autoscaling_config" not in options


def test_gpus_per_replica_reserve_gpus_and_select_cuda() -> None:
    config = render({"spec.resources": {"gpusPerReplica": 2}}, replica_cpus=4.0)
    options = only_deployment(config)
    assert options["ray_actor_options"] == {"num_cpus": 4.0, "num_gpus": 2}
    assert config["applications"][0]["args"]["device"] == "cuda"


@pytest.mark.parametrize(
    ("required", "expected"),
    [
        ({}, []),
        ({"f1": 0.8}, []),
        ({"f1": 0.9}, ["f1 is 0.82, below the required 0.9"]),
        (
            {"accuracy": 0.5},
            [
                "accuracy is required to be at least 0.5, but the model reports no "
                "accuracy (it reports: f1)"
            ],
        ),
    ],
    ids=["nothing required", "a met threshold", "a missed threshold", "a metric the model lacks"],
)
def test_the_gate_names_each_unmet_metric(required: dict[str, float], expected: list[str]) -> None:
    deployment = ModelDeployment.model_validate(make_deployment({"spec.requireMetrics": required}))
    assert [str(failure) for failure in gate(deployment, MODEL)] == expected


def test_the_replica_is_given_require_metrics_to_check_against_the_model_card() -> None:
    config = render({"spec.requireMetrics": {"f1": 0.9, "accuracy": 0.8}})
    args = config["applications"][0]["args"]
    assert args["require_metrics"] == {"f1": 0.9, "accuracy": 0.8}


# Language models


def test_a_language_model_deployment_renders_its_generation_settings_for_the_replica() -> None:
    adapters = [{"name": "support", "uri": "pvc://models/support/support"}]
    config = render(
        {
            "spec.model": {"uri": "builtin://smollm2-135m-instruct"},
            "spec.generation": {
                "maxSequences": 8,
                "maxWaiting": 4,
                "maxTokens": 256,
                "kvCacheTokens": 4096,
                "maxBatchTokens": 128,
                "adapters": adapters,
                "maxLoadedAdapters": 1,
            },
        }
    )
    args = ServeArgs.model_validate(config["applications"][0]["args"])
    assert args.generation == GenerationArgs(
        max_sequences=8,
        max_waiting=4,
        max_tokens=256,
        kv_cache_tokens=4096,
        max_batch_tokens=128,
        adapters=(AdapterRef(name="support", uri="pvc://models/support/support"),),
        max_loaded_adapters=1,
    )


def test_a_classifier_renders_no_generation_settings() -> None:
    args = ServeArgs.model_validate(render()["applications"][0]["args"])
    assert args.generation is None


@pytest.mark.parametrize(
    ("changes", "task", "ongoing"),
    [
        ({"spec.maxOngoingRequests": 40}, None, 40),
        ({"spec.maxOngoingRequests": 40}, "text-classification", 40),
        ({"spec.maxOngoingRequests": 40}, "text-generation", 16 + 32),
        ({"spec.model": {"uri": "builtin://smollm2-135m-instruct"}}, None, 16 + 32),
        (
            {
                "spec.generation": {"maxSequences": 24, "maxWaiting": 0},
                "spec.maxOngoingRequests": 40,
            },
            None,
            24,
        ),
    ],
    ids=[
        "a model.uri without generation settings takes maxOngoingRequests",
        "a classifier training's model takes maxOngoingRequests",
        "a language model training's takes the replica's default sequences",
        "a built-in language model takes them too",
        "generation settings give the sequences the replica admits",
    ],
)
def test_serve_sends_a_language_model_replica_the_sequences_it_admits(
    changes: dict[str, Any], task: str | None, ongoing: int
) -> None:
    deployment = ModelDeployment.model_validate(make_deployment(changes))
    model = ResolvedModel(uri="pvc://models/demo/demo", digest="", metrics={}, task=task)
    options = only_deployment(render_serve_config(deployment, model))
    assert options["max_ongoing_requests"] == ongoing
    # Serve's own queue (503 with Retry-After) is beyond the replica's 429 either way.
    assert options["max_queued_requests"] == deployment.spec.max_queued_requests


def test_an_adapter_named_as_the_deployment_cannot_be_asked_for() -> None:
    deployment = ModelDeployment.model_validate(
        make_deployment(
            {
                "spec.model": {"uri": "builtin://smollm2-135m-instruct"},
                "spec.generation.adapters": [
                    {"name": "ok", "uri": "pvc://models/a/a"},
                    {"name": "demo", "uri": "pvc://models/b/b"},
                ],
            }
        )
    )
    with pytest.raises(SpecError) as raised:
        render_serve_config(deployment, MODEL)
    assert raised.value.problem.field == "spec.generation.adapters[1].name"
    assert "'demo' is the deployment's own name" in raised.value.problem.message


def test_generation_settings_on_a_known_classifier_are_refused_by_the_rendering_too() -> None:
    deployment = ModelDeployment.model_validate(make_deployment({"spec.generation": {}}))
    classifier = ResolvedModel(uri="pvc://m/m", digest="", metrics={}, task="image-classification")
    with pytest.raises(SpecError) as raised:
        render_serve_config(deployment, classifier)
    assert raised.value.problem.field == "spec.generation"
    assert "image-classification model" in raised.value.problem.message
