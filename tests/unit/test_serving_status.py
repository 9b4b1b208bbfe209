"""The ModelDeployment phase machine: from the model, the gate and Serve's state to a
status, a roll-out decision and Events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.conditions import find_condition
from modelplane_operator.serve_config import ResolvedModel
from modelplane_operator.status.serving import (
    ModelWaiting,
    ObservedDeployment,
    ServeState,
    derive_deployment_status,
    resolve_from_training,
    summarize_serve_message,
)
from tests.factories import make_deployment, make_training

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MODEL = ResolvedModel(uri="pvc://models/s/s", digest="sha256:ab", metrics={"f1": 0.93})
ENDPOINT = "http://sentiment.ml.svc:8000"
TRACEBACK = (
    "Failed to update the deployments ['model']. Error:\n"
    "ray::ServeReplica:sentiment:model.initialize_and_get_metadata()\n"
    '  File "replica.py", line 1, in initialize\n'
    "modelplane_runtime.errors.ConfigError: /mnt/pvc/models/s/s: weights digest "
    "sha256:00 does not match sha256:ab; the artifact was changed or is incomplete"
)


def deployment(status: dict[str, Any] | None = None, **changes: Any) -> ModelDeployment:
    obj = make_deployment({f"spec.{k}": v for k, v in changes.items()}, name="sentiment")
    obj["metadata"].update({"namespace": "ml", "uid": "u", "generation": 3})
    if status:
        obj["status"] = status
    return ModelDeployment.model_validate(obj)


def observe(**fields: Any) -> ObservedDeployment:
    return ObservedDeployment(**{"model": MODEL, "endpoint": ENDPOINT, **fields})


CASES = [
    (
        "a missing training keeps it pending",
        observe(model=ModelWaiting(c.REASON_WAITING_FOR_TRAINING, "waiting for X")),
        "Pending",
        False,
        c.REASON_WAITING_FOR_TRAINING,
    ),
    (
        "a model below the gate is rejected",
        observe(gate_failures=("f1 is 0.7, below the required 0.9",)),
        "Rejected",
        False,
        c.REASON_METRICS_BELOW_THRESHOLD,
    ),
    (
        "no word from the head yet is progressing",
        observe(),
        "Progressing",
        True,
        c.REASON_ROLLING_OUT,
    ),
    (
        "a deploying application is progressing",
        observe(serve=ServeState(status="DEPLOYING")),
        "Progressing",
        True,
        c.REASON_ROLLING_OUT,
    ),
    (
        "a running application with replicas is ready",
        observe(serve=ServeState(status="RUNNING", target_replicas=2, running_replicas=2)),
        "Ready",
        True,
        c.REASON_SERVING,
    ),
    (
        "a failed deployment is degraded and keeps the cluster",
        observe(serve=ServeState(status="DEPLOY_FAILED", message=TRACEBACK)),
        "Degraded",
        True,
        c.REASON_APPLICATION_ERROR,
    ),
]


@pytest.mark.parametrize(
    ("observed", "phase", "roll_out", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_observation_has_one_phase_and_decision(
    observed: ObservedDeployment, phase: str, roll_out: bool, reason: str
) -> None:
    decision = derive_deployment_status(deployment(), observed, now=NOW)
    assert (decision.status.phase, decision.roll_out) == (phase, roll_out)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert (ready.status, ready.reason) == ("True" if phase == "Ready" else "False", reason)
    assert ready.observed_generation == 3
    assert decision.status.observed_generation == 3
    assert (decision.status.endpoint == ENDPOINT) is roll_out
    # kstatus: Reconciling while working toward the spec, Stalled when it cannot.
    reconciling = find_condition(decision.status.conditions, c.COND_RECONCILING)
    stalled = find_condition(decision.status.conditions, c.COND_STALLED)
    assert reconciling is not None
    assert stalled is not None
    assert reconciling.status == ("True" if phase in ("Pending", "Progressing") else "False")
    assert stalled.status == ("True" if phase in ("Rejected", "Degraded") else "False")
    if stalled.status == "True":
        assert stalled.reason == reason


def test_a_rejection_names_metric_value_and_threshold_and_warns() -> None:
    decision = derive_deployment_status(
        deployment(),
        observe(gate_failures=("f1 is 0.7, below the required 0.9",)),
        now=NOW,
    )
    accepted = find_condition(decision.status.conditions, c.COND_MODEL_ACCEPTED)
    assert accepted is not None
    assert accepted.status == "False"
    assert "f1 is 0.7, below the required 0.9" in accepted.message
    (event,) = decision.events
    assert (event.type, event.reason) == ("Warning", c.REASON_METRICS_BELOW_THRESHOLD)


def test_serves_own_reason_reaches_the_condition_without_the_traceback() -> None:
    decision = derive_deployment_status(
        deployment(), observe(serve=ServeState(status="DEPLOY_FAILED", message=TRACEBACK)), now=NOW
    )
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert "weights digest sha256:00 does not match sha256:ab" in ready.message
    assert 'File "replica.py"' not in ready.message
    assert ready.message.startswith("Serve reports DEPLOY_FAILED: Failed to update")


def test_status_carries_the_model_replicas_workers_and_load() -> None:
    workers = {"spec": {"replicas": 3}, "status": {"readyReplicas": 2}}
    serve = ServeState(
        status="RUNNING",
        target_replicas=3,
        running_replicas=2,
        ongoing_requests=11.5,
        requests_per_second=240,
    )
    status = derive_deployment_status(
        deployment(), observe(serve=serve, workers=workers), now=NOW
    ).status
    assert status.model is not None
    assert (status.model.uri, status.model.digest, status.model.metrics) == (
        MODEL.uri,
        MODEL.digest,
        MODEL.metrics,
    )
    assert status.replicas is not None
    assert (status.replicas.desired, status.replicas.ready) == (3, 2)
    assert status.workers is not None
    assert (status.workers.desired, status.workers.ready) == (3, 2)
    assert status.load is not None
    assert (status.load.ongoing_requests, status.load.requests_per_second) == (11.5, 240)


def test_an_unchanged_phase_writes_no_event() -> None:
    ready = observe(serve=ServeState(status="RUNNING", running_replicas=1))
    first = derive_deployment_status(deployment(), ready, now=NOW)
    again = derive_deployment_status(
        deployment(status=first.status.model_dump(by_alias=True, exclude_none=True)), ready, now=NOW
    )
    assert first.events
    assert again.events == ()
    assert again.status == first.status


def training(status: dict[str, Any] | None) -> ModelTraining:
    obj = make_training(name="sentiment")
    if status is not None:
        obj["status"] = status
    return ModelTraining.model_validate(obj)


@pytest.mark.parametrize(
    ("status", "waiting_for"),
    [
        (None, "to succeed (it is new)"),
        ({"phase": "Running"}, "to succeed (it is Running)"),
        ({"phase": "Failed"}, "it failed, so fix and re-run it"),
    ],
    ids=["a new training", "a running training", "a failed training"],
)
def test_from_training_waits_until_it_succeeded(
    status: dict[str, Any] | None, waiting_for: str
) -> None:
    resolved = resolve_from_training("sentiment", training(status))
    assert isinstance(resolved, ModelWaiting)
    assert waiting_for in resolved.message


def test_a_missing_training_is_named() -> None:
    resolved = resolve_from_training("ghost", None)
    assert isinstance(resolved, ModelWaiting)
    assert "'ghost'" in resolved.message


def test_a_succeeded_training_gives_its_artifact_and_metrics() -> None:
    resolved = resolve_from_training(
        "sentiment",
        training(
            {
                "phase": "Succeeded",
                "metrics": {"f1": 0.91},
                "artifact": {"uri": "pvc://models/s/s", "digest": "sha256:ab"},
            }
        ),
    )
    assert resolved == ResolvedModel(
        uri="pvc://models/s/s", digest="sha256:ab", metrics={"f1": 0.91}
    )


def test_a_message_without_a_traceback_is_kept() -> None:
    assert summarize_serve_message("replica died\n") == "replica died"
    assert summarize_serve_message("") == ""
