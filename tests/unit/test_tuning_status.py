"""The search's status from its trials."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import TrialStatus
from modelplane_operator.conditions import format_time
from modelplane_operator.status.tuning import (
    TrialDecision,
    apply_early_stopping,
    derive_tuning_status,
    observe_trial,
    record_progress,
    trial_name,
)
from tests.factories import make_training, make_tuning
from tests.unit.pods import make_pod

NOW = datetime(2026, 5, 1, tzinfo=UTC)
GRACE = timedelta(seconds=60)


def search(spec: dict[str, Any] | None = None, **tuning: Any) -> ModelTraining:
    obj = make_training(
        {"spec.tuning": {**make_tuning(), "maxTrials": 3, **tuning}, **(spec or {})}
    )
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
    job = trial_job(("Complete", "CompletionsReached"))
    pod = {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
        "status": {
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message}}}]
        },
    }
    return job, pod


def trial_job(
    *conditions: tuple[str, str], restarts: int = 0, since: datetime = NOW
) -> dict[str, Any]:
    """A trial's Job after `restarts` counted failures, whose `conditions` turned True at
    `since`."""
    return {
        "metadata": {
            "name": "demo-t0-train",
            "annotations": {c.ANNOTATION_RESTARTS: str(restarts)},
        },
        "spec": {},
        "status": {
            "conditions": [
                {
                    "type": t,
                    "status": "True",
                    "reason": r,
                    "message": f"{t} because {r}",
                    "lastTransitionTime": format_time(since),
                }
                for t, r in conditions
            ]
        },
    }


def observe(
    job: dict[str, Any],
    *pods: dict[str, Any],
    training: ModelTraining | None = None,
    attempt: int = 0,
) -> TrialDecision:
    return observe_trial(
        trial(0, "Running"),
        training=training or search(),
        job=job,
        pods=pods,
        attempt=attempt,
        now=NOW,
        result_grace=GRACE,
    )


def test_trial_names_are_deterministic_and_short() -> None:
    assert trial_name("demo", 4) == "demo-t4"
    assert len(trial_name("x" * 63, 999)) <= 40


def test_a_complete_trial_job_records_rank_0s_metrics_and_artifact() -> None:
    job, pod = completed_trial()
    observed = observe(job, pod).trial
    assert observed.phase == "Succeeded"
    assert observed.metrics == {"f1": 0.8}
    assert observed.artifact is not None
    assert observed.artifact.uri == "pvc://m/demo-t0"


def test_a_finished_trial_knows_its_objective_at_every_epochs_end() -> None:
    """Polls caught only step 60; the result brings the epochs they missed."""
    job, pod = completed_trial(objective_by_step={"30": 0.5, "60": 0.7, "90": 0.8})
    polled = trial(0, "Running").model_copy(update={"intermediate": {"60": 0.7}})
    observed = observe_trial(polled, training=search(), job=job, pods=(pod,), now=NOW).trial
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
    trials = [
        trial(i, "Succeeded").model_copy(update={"metrics": {"loss": loss}})
        for i, loss in enumerate((0.7, 0.9, 0.8))
    ]
    t = search(objective={"metric": "loss", "goal": "minimize"})
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


CRASHED = make_pod("demo-t0-train-0-a", "Failed", index=0, exit_code=1)
EVICTED = make_pod(
    "demo-t0-train-0-a",
    "Failed",
    index=0,
    exit_code=143,
    disrupted=("EvictionByEvictionAPI", "Eviction API: evicting"),
)
GANG_JOB_RULES = {
    "podFailurePolicy": {
        "rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    }
}


def test_a_trial_failed_by_the_infrastructure_is_retried_counting_a_restart() -> None:
    decision = observe(trial_job(("Failed", "BackoffLimitExceeded")), CRASHED)
    assert decision.replace
    assert (decision.trial.phase, decision.trial.restarts) == ("Pending", 1)
    assert "attempt 1 failed (BackoffLimitExceeded" in decision.trial.reason
    assert "restart 1 of 3" in decision.trial.reason


def test_a_trial_out_of_restarts_fails_and_says_after_how_many() -> None:
    t = search({"spec.maxRestarts": 1})
    decision = observe(
        trial_job(("Failed", "BackoffLimitExceeded"), restarts=1), CRASHED, training=t, attempt=1
    )
    assert not decision.replace
    assert decision.trial.phase == "Failed"
    assert decision.trial.reason.startswith("failed after 1 restart(s) (maxRestarts 1)")


def test_max_restarts_0_gives_a_trial_one_attempt() -> None:
    decision = observe(
        trial_job(("Failed", "BackoffLimitExceeded")),
        CRASHED,
        training=search({"spec.maxRestarts": 0}),
    )
    assert (decision.replace, decision.trial.phase) == (False, "Failed")


def test_a_disrupted_trial_is_replaced_without_counting_a_restart() -> None:
    job = trial_job(("Failed", "PodFailurePolicy"), restarts=0)
    job["spec"] = GANG_JOB_RULES
    job["status"]["conditions"][0]["message"] = (
        "Pod ml/demo-t0-train-0-a has condition DisruptionTarget matching FailJob rule at index 1"
    )
    decision = observe(job, EVICTED, training=search({"spec.resources.nodes": 2}))
    assert decision.replace
    assert (decision.trial.phase, decision.trial.restarts) == ("Pending", 0)
    assert "not counted against maxRestarts" in decision.trial.reason


def test_a_config_error_fails_the_trial_without_a_retry() -> None:
    pod = make_pod("demo-t0-train-0-a", "Failed", index=0, exit_code=42)
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = "bad column"
    decision = observe(trial_job(("Failed", "PodFailurePolicy")), pod)
    assert (decision.replace, decision.trial.phase, decision.trial.reason) == (
        False,
        "Failed",
        "bad column",
    )


def test_a_trial_that_succeeds_after_a_restart_keeps_its_count_and_drops_the_note() -> None:
    job, pod = completed_trial()
    job["metadata"]["annotations"] = {c.ANNOTATION_RESTARTS: "1"}
    restarted = trial(0, "Running").model_copy(update={"reason": "attempt 1 failed", "restarts": 1})
    observed = observe_trial(restarted, training=search(), job=job, pods=(pod,), now=NOW).trial
    assert (observed.phase, observed.restarts, observed.reason) == ("Succeeded", 1, "")


def rank0(message: str) -> dict[str, Any]:
    pod = make_pod("demo-t0-train-0-a", "Succeeded", index=0, exit_code=0)
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = message
    return pod


@pytest.mark.parametrize(
    ("message", "missing"),
    [("", "without a termination message"), ("not json", "is not a training result")],
    ids=["without a message", "with an unparsable message"],
)
def test_a_trial_complete_without_a_result_fails_with_result_missing_after_the_grace(
    message: str, missing: str
) -> None:
    within = observe(trial_job(("Complete", "CompletionsReached")), rank0(message))
    assert within.trial.phase == "Running"
    late = observe(trial_job(("Complete", "CompletionsReached"), since=NOW - GRACE), rank0(message))
    assert late.trial.phase == "Failed"
    assert late.trial.reason.startswith("ResultMissing: the job completed, but")
    assert missing in late.trial.reason
    assert "may still be under pvc://models/demo/demo-t0" in late.trial.reason


def test_a_suspended_search_is_suspended_while_trials_remain() -> None:
    t = search({"spec.suspend": True})
    trials = [trial(0, "Succeeded", 0.7), trial(1, "Pending")]
    status = derive_tuning_status(t, trials, exhausted=False, now=NOW).status
    assert status.phase == "Suspended"
    suspended = next(cond for cond in status.conditions if cond.type == "Suspended")
    assert (suspended.status, suspended.reason) == ("True", "Suspended")
    assert "1 trial(s) suspended" in suspended.message
    resumed = derive_tuning_status(search(), trials, exhausted=False, now=NOW).status
    assert resumed.phase == "Pending"
    assert next(cond for cond in resumed.conditions if cond.type == "Suspended").status == "False"
