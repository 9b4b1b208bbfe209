"""The ModelTraining phase machine, edge by edge."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.status.training import Observed, derive_training_status, rank0_ip
from tests.factories import make_training

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RESULT = {
    "version": 1,
    "run": "demo",
    "metrics": {"accuracy": 0.9, "f1": 0.88},
    "artifact_uri": "pvc://models/demo/demo",
    "digest": "sha256:ab",
    "steps": 10,
    "epochs": 1,
}


def training(
    changes: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
) -> ModelTraining:
    obj = make_training(changes)
    obj["metadata"].update({"namespace": "ml", "uid": "u", "generation": 2})
    if status:
        obj["status"] = status
    return ModelTraining.model_validate(obj)


def job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-train"},
        "spec": {},
        "status": {
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": f"{t} because {r}"}
                for t, r in conditions
            ]
        },
    }


def pod(
    index: int,
    phase: str,
    *,
    exit_code: int | None = None,
    message: str = "",
    scheduled: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {"state": {"terminated": {"exitCode": exit_code, "message": message}}}
        ]
    if scheduled:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": scheduled,
            }
        ]
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": status,
    }


CASES = [
    ("no job yet is Pending", training(), Observed(attempt=0), "Pending", "Created", False),
    (
        "unschedulable pods are Pending with the scheduler's reason",
        training(),
        Observed(attempt=0, job=job(), pods=(pod(0, "Pending", scheduled="Insufficient gpu"),)),
        "Pending",
        "Unschedulable",
        False,
    ),
    (
        "all pods running is Running",
        training(),
        Observed(attempt=0, job=job(), pods=(pod(0, "Running"),)),
        "Running",
        "Training",
        False,
    ),
    (
        "a complete job with rank 0's result is Succeeded",
        training(),
        Observed(
            attempt=0,
            job=job(("Complete", "CompletionsReached")),
            pods=(pod(0, "Succeeded", exit_code=0, message=json.dumps(RESULT)),),
        ),
        "Succeeded",
        "Succeeded",
        False,
    ),
    (
        "a complete job without a result waits for it",
        training(),
        Observed(
            attempt=0,
            job=job(("Complete", "CompletionsReached")),
            pods=(pod(0, "Succeeded", exit_code=0),),
        ),
        "Running",
        "Training",
        False,
    ),
    (
        "the config-error exit code fails at once",
        training(),
        Observed(
            attempt=0,
            job=job(("Failed", "PodFailurePolicy")),
            pods=(pod(0, "Failed", exit_code=42, message="unknown column"),),
        ),
        "Failed",
        "ConfigError",
        False,
    ),
    (
        "an infrastructure failure with restarts left replaces the job",
        training(),
        Observed(
            attempt=0,
            job=job(("Failed", "BackoffLimitExceeded")),
            pods=(pod(0, "Failed", exit_code=1),),
        ),
        "Pending",
        "Restarting",
        True,
    ),
    (
        "an infrastructure failure with no restarts left is Failed",
        training({"spec.maxRestarts": 1}),
        Observed(
            attempt=1,
            job=job(("Failed", "BackoffLimitExceeded")),
            pods=(pod(0, "Failed", exit_code=137),),
        ),
        "Failed",
        "RestartsExhausted",
        False,
    ),
    (
        "spec.suspend is Suspended",
        training({"spec.suspend": True}),
        Observed(attempt=0, job=job(), pods=(pod(0, "Running"),)),
        "Suspended",
        "Suspended",
        False,
    ),
]


@pytest.mark.parametrize(
    ("t", "observed", "phase", "reason", "replace"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_phase_machine(
    t: ModelTraining, observed: Observed, phase: str, reason: str, replace: bool
) -> None:
    decision = derive_training_status(t, observed, now=NOW)
    assert decision.status.phase == phase
    assert decision.replace_job is replace
    ready = next(c for c in decision.status.conditions if c.type == "Ready")
    assert ready.reason == reason
    assert ready.observed_generation == 2
    assert decision.status.observed_generation == 2
    # kstatus: Reconciling while working toward the spec, Stalled when it cannot.
    states = {c.type: c.status for c in decision.status.conditions}
    assert states["Reconciling"] == ("True" if phase in ("Pending", "Running") else "False")
    assert states["Stalled"] == ("True" if phase == "Failed" else "False")


def test_success_records_metrics_artifact_and_the_headline_metric() -> None:
    t = training({"spec.evaluation.metrics": ["f1", "accuracy"]})
    observed = Observed(
        attempt=0,
        job=job(("Complete", "CompletionsReached")),
        pods=(pod(0, "Succeeded", exit_code=0, message=json.dumps(RESULT)),),
    )
    status = derive_training_status(t, observed, now=NOW).status
    assert status.metrics == {"accuracy": 0.9, "f1": 0.88}
    assert status.artifact is not None
    assert (status.artifact.uri, status.artifact.digest) == ("pvc://models/demo/demo", "sha256:ab")
    assert status.key_metric == "f1=0.880"
    assert next(c for c in status.conditions if c.type == "Ready").status == "True"


def test_a_restart_counts_and_says_why() -> None:
    decision = derive_training_status(
        training(),
        Observed(
            attempt=0,
            job=job(("Failed", "BackoffLimitExceeded")),
            pods=(pod(0, "Failed", exit_code=1),),
        ),
        now=NOW,
    )
    assert decision.status.restarts == 1
    assert decision.events[0].type == "Warning"
    assert "BackoffLimitExceeded" in decision.events[0].message


def test_final_phases_never_move_again() -> None:
    done = training(status={"phase": "Succeeded", "metrics": {"f1": 0.9}, "restarts": 0})
    decision = derive_training_status(done, Observed(attempt=0), now=NOW)
    assert decision.status.phase == "Succeeded"
    assert decision.status.metrics == {"f1": 0.9}
    assert decision.events == ()


def test_an_unchanged_observation_emits_no_event_and_keeps_transition_times() -> None:
    t = training()
    observed = Observed(attempt=0, job=job(), pods=(pod(0, "Running"),))
    first = derive_training_status(t, observed, now=NOW).status
    again = training(status=first.model_dump(mode="json", by_alias=True, exclude_none=True))
    second = derive_training_status(again, observed, now=datetime(2026, 5, 2, tzinfo=UTC))
    assert second.events == ()
    assert second.status == first


def test_progress_is_copied_while_running() -> None:
    observed = Observed(
        attempt=0,
        job=job(),
        pods=(pod(0, "Running"),),
        progress={
            "epoch": 2,
            "step": 50,
            "total_steps": 100,
            "percent": 50,
            "loss": 0.3,
            "samples_per_second": 900.0,
            "phase": "training",
        },
    )
    status = derive_training_status(training(), observed, now=NOW).status
    assert status.progress is not None
    assert (status.progress.step, status.progress.percent) == (50, 50)


def test_rank_0_is_found_by_its_completion_index() -> None:
    pods = [pod(1, "Running"), pod(0, "Running")]
    pods[0]["status"]["podIP"] = "10.0.0.2"
    pods[1]["status"]["podIP"] = "10.0.0.1"
    assert rank0_ip(pods) == "10.0.0.1"
    assert rank0_ip([pod(1, "Running")]) is None
