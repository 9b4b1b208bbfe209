"""The search's status from its trials."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import TrialStatus
from modelplane_operator.status.tuning import (
    apply_early_stopping,
    derive_tuning_status,
    observe_trial,
    record_progress,
    trial_name,
)
from tests.factories import make_training, make_tuning

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def search(**tuning: Any) -> ModelTraining:
    obj = make_training({"spec.tuning": {**make_tuning(), "maxTrials": 3, **tuning}})
    obj["metadata"].update({"namespace": "ml", "uid": "u", "generation": 1})
    return ModelTraining.model_validate(obj)


def trial(i: int, phase: str, f1: float | None = None) -> TrialStatus:
    return TrialStatus.model_validate(
        dict(
            name=f"demo-t{i}",
            params={"learningRate": 0.001 * (i + 1)},
            phase=phase,
            metrics={} if f1 is None else {"f1": f1},
        )
    )


def completed_trial(**result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A complete trial Job and its rank 0 pod, whose termination message is trial 0's
    result (f1 0.8) with `result`'s fields added."""
    message = json.dumps(
        {
            "version": 1,
            "run": "demo-t0",
            "metrics": {"f1": 0.8},
            "artifact_uri": "pvc://m/demo-t0",
            "digest": "sha256:1",
            **result,
        }
    )
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    pod = {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
        "status": {
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message}}}]
        },
    }
    return job, pod


def test_trial_names_are_deterministic_and_short() -> None:
    assert trial_name("demo", 4) == "demo-t4"
    assert len(trial_name("x" * 63, 999)) <= 40


def test_a_complete_trial_job_records_rank_0s_metrics_and_artifact() -> None:
    job, pod = completed_trial()
    observed = observe_trial(trial(0, "Running"), job, (pod,))
    assert observed.phase == "Succeeded"
    assert observed.metrics == {"f1": 0.8}
    assert observed.artifact is not None
    assert observed.artifact.uri == "pvc://m/demo-t0"


def test_a_finished_trial_knows_its_objective_at_every_epochs_end() -> None:
    """Polls caught only step 60; the result brings the epochs they missed."""
    job, pod = completed_trial(objective_by_step={"30": 0.5, "60": 0.7, "90": 0.8})
    polled = trial(0, "Running").model_copy(update={"intermediate": {"60": 0.7}})
    observed = observe_trial(polled, job, (pod,))
    assert observed.intermediate == {"30": 0.5, "60": 0.7, "90": 0.8}


def test_the_search_succeeds_with_the_best_trial_when_all_have_ended() -> None:
    trials = [trial(0, "Succeeded", 0.7), trial(1, "Succeeded", 0.9), trial(2, "Failed")]
    status = derive_tuning_status(search(), trials, exhausted=False, now=NOW).status
    assert status.phase == "Succeeded"
    assert status.best_trial == "demo-t1"
    assert status.metrics == {"f1": 0.9}
    assert status.key_metric == "f1=0.900"
    assert status.trial_summary == "3/3"


def test_minimize_picks_the_lowest() -> None:
    trials = [trial(0, "Succeeded", 0.7), trial(1, "Succeeded", 0.9), trial(2, "Succeeded", 0.8)]
    t = search(objective={"metric": "f1", "goal": "minimize"})
    assert derive_tuning_status(t, trials, exhausted=False, now=NOW).status.best_trial == (
        "demo-t0"
    )


def test_a_search_with_running_trials_is_running() -> None:
    trials = [trial(0, "Succeeded", 0.7), trial(1, "Running")]
    status = derive_tuning_status(search(), trials, exhausted=False, now=NOW).status
    assert status.phase == "Running"
    assert status.trial_summary == "1/3"


def test_an_exhausted_grid_ends_the_search_early() -> None:
    trials = [trial(0, "Succeeded", 0.7)]
    status = derive_tuning_status(search(), trials, exhausted=True, now=NOW).status
    assert status.phase == "Succeeded"


def test_too_many_failed_trials_fail_the_search() -> None:
    trials = [trial(0, "Failed"), trial(1, "Failed")]
    status = derive_tuning_status(
        search(maxFailedTrials=1), trials, exhausted=False, now=NOW
    ).status
    assert status.phase == "Failed"
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.reason == "TooManyFailedTrials"


def test_progress_adds_the_objective_at_its_step() -> None:
    t = search()
    assert t.spec.tuning is not None
    running = trial(0, "Running")
    updated = record_progress(t.spec.tuning, running, {"step": 40, "metrics": {"f1": 0.6}})
    assert updated.intermediate == {"40": 0.6}
    assert record_progress(t.spec.tuning, running, {"step": 40, "metrics": {}}) == running
    at_epoch_end = record_progress(
        t.spec.tuning, running, {"step": 47, "metrics_step": 40, "metrics": {"f1": 0.6}}
    )
    assert at_epoch_end.intermediate == {"40": 0.6}


def test_the_median_rule_stops_a_lagging_live_trial_and_says_why() -> None:
    t = search(maxTrials=6, earlyStopping={"rule": "median", "minSteps": 10})
    assert t.spec.tuning is not None
    done = [
        trial(i, "Succeeded", 0.8).model_copy(update={"intermediate": {"20": v}})
        for i, v in enumerate((0.7, 0.8, 0.9))
    ]
    lagging = trial(3, "Running").model_copy(update={"intermediate": {"20": 0.5}})
    leading = trial(4, "Running").model_copy(update={"intermediate": {"20": 0.95}})
    result = apply_early_stopping(t.spec.tuning, [*done, lagging, leading])
    assert [r.phase for r in result] == ["Succeeded"] * 3 + ["Stopped", "Running"]
    assert "step 20" in result[3].reason
