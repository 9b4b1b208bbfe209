"""The ModelTraining phase machine, edge by edge."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus
from modelplane_operator.builders.training import build_job
from modelplane_operator.conditions import format_time
from modelplane_operator.render import render_run_config
from modelplane_operator.settings import Settings
from modelplane_operator.status.training import (
    Observed,
    derive_training_status,
    invalid_spec_status,
    rank0_ip,
    restart_backoff,
    without_invalid_verdict,
)
from modelplane_operator.validation import Problem
from tests.factories import make_training
from tests.unit.pods import NO_SUCH_IMAGE, make_pod

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
FAILED_AT = NOW - timedelta(minutes=10)
"""An attempt that failed long enough ago that its restart backoff has passed."""
GRACE = timedelta(seconds=60)
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


def job(*conditions: tuple[str, str], since: datetime = NOW) -> dict[str, Any]:
    """A Job whose `conditions` (type, reason) turned True at `since`."""
    return {
        "metadata": {"name": "demo-train"},
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
        "a complete job without a termination message past the grace is ResultMissing",
        training(),
        Observed(
            attempt=0,
            job=job(("Complete", "CompletionsReached"), since=NOW - GRACE),
            pods=(pod(0, "Succeeded", exit_code=0),),
        ),
        "Failed",
        "ResultMissing",
        False,
    ),
    (
        "a complete job whose rank 0 left garbage past the grace is ResultMissing",
        training(),
        Observed(
            attempt=0,
            job=job(("Complete", "CompletionsReached"), since=NOW - GRACE),
            pods=(pod(0, "Succeeded", exit_code=0, message="Traceback: oops"),),
        ),
        "Failed",
        "ResultMissing",
        False,
    ),
    (
        "a complete job whose rank 0 pod is gone past the grace is ResultMissing",
        training(),
        Observed(attempt=0, job=job(("Complete", "CompletionsReached"), since=NOW - GRACE)),
        "Failed",
        "ResultMissing",
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
            job=job(("Failed", "BackoffLimitExceeded"), since=FAILED_AT),
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
            restarts=1,
            job=job(("Failed", "BackoffLimitExceeded"), since=FAILED_AT),
            pods=(pod(0, "Failed", exit_code=137),),
        ),
        "Failed",
        "RestartsExhausted",
        False,
    ),
    (
        "a pod that cannot pull its image keeps the training Pending and says why",
        training(),
        Observed(
            attempt=0,
            job=job(),
            pods=(make_pod("demo-train-0-x", index=0, waiting=("ErrImagePull", NO_SUCH_IMAGE)),),
        ),
        "Pending",
        "ImagePullFailed",
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
    decision = derive_training_status(t, observed, now=NOW, result_grace=GRACE)
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
            job=job(("Failed", "BackoffLimitExceeded"), since=FAILED_AT),
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
            "tokens_per_second": 51_200.0,
            "phase": "training",
        },
    )
    status = derive_training_status(training(), observed, now=NOW).status
    assert status.progress is not None
    assert (status.progress.step, status.progress.percent) == (50, 50)
    assert status.progress.tokens_per_second == 51_200.0


def test_rank_0_is_found_by_its_completion_index() -> None:
    pods = [pod(1, "Running"), pod(0, "Running")]
    pods[0]["status"]["podIP"] = "10.0.0.2"
    pods[1]["status"]["podIP"] = "10.0.0.1"
    assert rank0_ip(pods) == "10.0.0.1"
    assert rank0_ip([pod(1, "Running")]) is None


def test_an_image_that_does_not_exist_keeps_the_training_pending_while_the_kubelet_retries() -> (
    None
):
    """A Job whose pod cannot pull never ends by itself; the training does not fail
    either (a registry outage or a late push heals it), but every condition says why."""
    t = training()
    pulling = make_pod("demo-train-0-x", index=0, waiting=("ErrImagePull", NO_SUCH_IMAGE))
    first = derive_training_status(t, Observed(attempt=0, job=job(), pods=(pulling,)), now=NOW)
    backing_off = make_pod("demo-train-0-x", index=0, waiting=("ImagePullBackOff", NO_SUCH_IMAGE))
    later = derive_training_status(
        training(status=first.status.model_dump(mode="json", by_alias=True, exclude_none=True)),
        Observed(attempt=0, job=job(), pods=(backing_off,)),
        now=datetime(2026, 5, 1, 13, 0, tzinfo=UTC),
    )
    for decision in (first, later):
        assert decision.status.phase == "Pending"
        assert decision.replace_job is False
        conditions = {cond.type: cond for cond in decision.status.conditions}
        assert conditions["Progressing"].status == "True"
        assert conditions["Progressing"].reason == c.REASON_IMAGE_PULL
        assert "pod demo-train-0-x cannot pull its image" in conditions["Progressing"].message
        assert NO_SUCH_IMAGE in conditions["Ready"].message
        assert (conditions["Failed"].status, conditions["Stalled"].status) == ("False", "False")
    assert later.events == ()


SETTINGS = Settings(runtime_image="registry.example/runtime:1")
EVICTED = ("EvictionByEvictionAPI", "Eviction API: evicting")
PREEMPTED = ("PreemptionByScheduler", "preempting to accommodate a higher priority pod")
BACKOFF = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
BY_RULE = (
    "PodFailurePolicy",
    "Pod ml/demo-train-1-b has condition DisruptionTarget matching FailJob rule at index 1",
)
BY_CONFIG_ERROR = (
    "PodFailurePolicy",
    "Container trainer for pod ml/demo-train-0-a failed with exit code 42 matching FailJob "
    "rule at index 0",
)


def failed_job(t: ModelTraining, why: tuple[str, str]) -> dict[str, Any]:
    """The Job the builder makes for `t`, pod failure policy included, failed for `why`
    (the Job controller's reason and message)."""
    manifest = build_job(t, render_run_config(t), attempt=0, settings=SETTINGS)
    reason, message = why
    manifest["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message}]
    }
    return manifest


def rank(index: int, code: int, disrupted: tuple[str, str] | None = None) -> dict[str, Any]:
    name = f"demo-train-{index}-{'ab'[index]}"
    return make_pod(name, "Failed", index=index, exit_code=code, disrupted=disrupted)


def oom_killed_rank(index: int, limit: str = "8Gi") -> dict[str, Any]:
    """A rank whose trainer the kernel killed at its memory limit (the pod's spec)."""
    pod = make_pod(f"demo-train-{index}-{'ab'[index]}", "Failed", index=index, container="trainer")
    pod["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 137, "reason": "OOMKilled"}
    }
    pod["spec"] = {"containers": [{"name": "trainer", "resources": {"limits": {"memory": limit}}}]}
    return pod


GANG = training({"spec.resources.nodes": 2, "spec.maxRestarts": 1})
ONE_NODE = training({"spec.maxRestarts": 1})
FIRST = Observed(attempt=0, restarts=0)
AFTER_A_RESTART = Observed(attempt=1, restarts=1)
FAILURES = [
    (
        "an evicted rank fails the gang's attempt by the disruption rule",
        GANG,
        FIRST,
        BY_RULE,
        (make_pod("demo-train-0-a", "Running", index=0), rank(1, 143, EVICTED)),
        ("Pending", "Restarting", 0, 1, "pod demo-train-1-b was disrupted (EvictionByEvictionAPI"),
    ),
    (
        "a rank that crashed because its peer was preempted failed the job first",
        GANG,
        FIRST,
        BACKOFF,
        (rank(0, 1), rank(1, 143, PREEMPTED)),
        ("Pending", "Restarting", 0, 1, "(PreemptionByScheduler: preempting to accommodate"),
    ),
    (
        "a disrupted pod that is gone is still named by the job's failure",
        GANG,
        FIRST,
        BY_RULE,
        (),
        ("Pending", "Restarting", 0, 1, BY_RULE[1]),
    ),
    (
        "a disruption after the last allowed restart still replaces the gang",
        GANG,
        AFTER_A_RESTART,
        BY_RULE,
        (rank(1, 143, EVICTED),),
        ("Pending", "Restarting", 1, 1, "does not count against maxRestarts"),
    ),
    (
        "a rank that crashed on its own counts as a restart",
        GANG,
        FIRST,
        BACKOFF,
        (rank(0, 1),),
        ("Pending", "Restarting", 1, 0, "attempt 1 failed (BackoffLimitExceeded"),
    ),
    (
        "a crash after the last allowed restart fails the training",
        GANG,
        AFTER_A_RESTART,
        BACKOFF,
        (rank(0, 1),),
        ("Failed", "RestartsExhausted", 1, 0, "failed after 1 restart(s)"),
    ),
    (
        "one node's evicted pod was replaced in place, so a later crash counts",
        ONE_NODE,
        FIRST,
        BACKOFF,
        (rank(0, 143, EVICTED), make_pod("demo-train-0-c", "Failed", index=0, exit_code=1)),
        ("Pending", "Restarting", 1, 0, "attempt 1 failed (BackoffLimitExceeded"),
    ),
    (
        "a rank the kernel OOM-killed fails the attempt for that reason, naming its limit",
        GANG,
        FIRST,
        BACKOFF,
        (rank(0, 1), oom_killed_rank(1)),
        (
            "Pending",
            "OOMKilled",
            1,
            0,
            "attempt 1 failed (pod demo-train-1-b: container trainer was OOM-killed (memory "
            "limit 8Gi); raise spec.resources.memory); replacing the job",
        ),
    ),
    (
        "an OOM kill after the last allowed restart fails the training for that reason",
        GANG,
        AFTER_A_RESTART,
        BACKOFF,
        (oom_killed_rank(0),),
        ("Failed", "OOMKilled", 1, 0, "last failure: pod demo-train-0-a: container trainer"),
    ),
    (
        "the config-error rule of the same policy is still a config error",
        GANG,
        FIRST,
        BY_CONFIG_ERROR,
        (),
        ("Failed", "ConfigError", 0, 0, "exit code 42"),
    ),
]


@pytest.mark.parametrize(
    ("t", "before", "why", "pods", "expected"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
def test_a_disrupted_attempt_is_replaced_whole_without_counting_a_restart(
    t: ModelTraining,
    before: Observed,
    why: tuple[str, str],
    pods: tuple[dict[str, Any], ...],
    expected: tuple[str, str, int, int, str],
) -> None:
    phase, reason, restarts, disruptions, says = expected
    observed = Observed(
        attempt=before.attempt, restarts=before.restarts, job=failed_job(t, why), pods=pods
    )
    decision = derive_training_status(t, observed, now=NOW)
    status = decision.status
    ready = next(cond for cond in status.conditions if cond.type == "Ready")
    assert (status.phase, ready.reason) == (phase, reason)
    assert decision.replace_job is (phase == "Pending")
    assert (status.restarts, status.disruptions) == (restarts, disruptions)
    assert says in ready.message
    (event,) = decision.events
    assert event.type == "Warning"


def test_an_oom_killed_rank_is_named_before_its_job_has_failed() -> None:
    """Between the rank's end and the Job controller's verdict the attempt is not
    running: it already says why."""
    observed = Observed(attempt=0, job=job(), pods=(oom_killed_rank(0),))
    decision = derive_training_status(training(), observed, now=NOW)
    ready = next(cond for cond in decision.status.conditions if cond.type == "Ready")
    assert (decision.status.phase, ready.reason) == ("Pending", c.REASON_OOM_KILLED)
    assert "pod demo-train-0-a: container trainer was OOM-killed (memory limit 8Gi)" in (
        ready.message
    )


@pytest.mark.parametrize(
    ("message", "missing"),
    [
        ("", "exited 0 without a termination message"),
        ("x" * 300, "is not a training result: '" + "x" * 200 + "'"),
    ],
    ids=["no message says so", "an unparsable message is quoted, first 200 characters"],
)
def test_a_missing_result_says_what_is_missing_and_where_the_artifact_may_be(
    message: str, missing: str
) -> None:
    observed = Observed(
        attempt=0,
        job=job(("Complete", "CompletionsReached"), since=NOW - GRACE),
        pods=(pod(0, "Succeeded", exit_code=0, message=message),),
    )
    decision = derive_training_status(training(), observed, now=NOW, result_grace=GRACE)
    failed = next(c for c in decision.status.conditions if c.type == "Failed")
    assert failed.reason == "ResultMissing"
    assert missing in failed.message
    assert "x" * 201 not in failed.message
    assert "may still be under pvc://models/demo/demo" in failed.message
    assert decision.events[0].reason == "ResultMissing"


def test_the_result_grace_is_measured_from_the_jobs_completion_not_the_operator() -> None:
    observed = Observed(
        attempt=0,
        job=job(("Complete", "CompletionsReached"), since=NOW - GRACE + timedelta(seconds=1)),
        pods=(pod(0, "Succeeded", exit_code=0),),
    )
    waiting = derive_training_status(training(), observed, now=NOW, result_grace=GRACE)
    assert waiting.status.phase == "Running"
    later = NOW + timedelta(seconds=1)
    assert derive_training_status(
        training(), observed, now=later, result_grace=GRACE
    ).status.phase == ("Failed")


def test_an_invalid_spec_is_failed_and_stalled_naming_each_field() -> None:
    problems = [
        Problem("spec.data.train.uri", "unknown built-in data set 'nope'"),
        Problem("spec.tuning.space.batchSize.min", "0 is not a valid batchSize"),
    ]
    decision = invalid_spec_status(None, problems, generation=3, now=NOW)
    status = decision.status
    assert (status.phase, status.observed_generation) == ("Failed", 3)
    states = {c.type: (c.status, c.reason) for c in status.conditions}
    assert states["Failed"] == ("True", "InvalidSpec")
    assert states["Stalled"] == ("True", "InvalidSpec")
    assert states["Reconciling"][0] == "False"
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert "spec.data.train.uri: unknown built-in data set 'nope'" in failed.message
    assert "spec.tuning.space.batchSize.min" in failed.message
    assert [e.reason for e in decision.events] == ["InvalidSpec"]


def test_a_changed_spec_after_an_invalid_verdict_loses_the_verdict_only() -> None:
    before = ModelTrainingStatus(restarts=2, disruptions=1, job_name="demo-train-3")
    verdict = invalid_spec_status(before, [Problem("spec.x", "bad")], generation=1, now=NOW)
    judged = training(status=verdict.status.model_dump(mode="json", by_alias=True))
    kept = without_invalid_verdict(judged).status
    assert kept is not None
    assert (kept.phase, kept.conditions) == (None, [])
    # What the run did before the verdict stays: its attempt, counts and trials.
    assert (kept.restarts, kept.disruptions, kept.job_name) == (2, 1, "demo-train-3")
    exhausted = training(status={"phase": "Failed", "restarts": 3})
    assert without_invalid_verdict(exhausted).status == exhausted.status


UPLOAD_FAILED = (
    "could not upload s3://models/runs/demo/model.safetensors to http://10.0.0.7:8333: "
    "Could not connect to the endpoint URL after 5 attempts"
)


def failed_rank(index: int, message: str, finished: str) -> dict[str, Any]:
    """A rank whose trainer exited 1 (an infrastructure failure) saying `message`."""
    failed = rank(index, 1)
    failed["status"]["containerStatuses"][0]["state"]["terminated"].update(
        {"message": message, "finishedAt": finished}
    )
    return failed


@pytest.mark.parametrize(
    ("restarts", "phase", "reason"),
    [(1, "Failed", "RestartsExhausted"), (0, "Pending", "Restarting")],
    ids=["the last attempt fails the run", "an attempt with restarts left is replaced"],
)
def test_a_failed_attempt_says_what_its_last_failed_pod_said(
    restarts: int, phase: str, reason: str
) -> None:
    pods = (
        failed_rank(1, "rank 1 saw its peer leave", "2026-05-01T11:59:00Z"),
        failed_rank(0, UPLOAD_FAILED, "2026-05-01T11:59:30Z"),
    )
    observed = Observed(
        attempt=restarts, restarts=restarts, job=failed_job(GANG, BACKOFF), pods=pods
    )
    status = derive_training_status(GANG, observed, now=NOW).status
    assert (status.phase, status.conditions[0].reason) == (phase, reason)
    ready = next(cond for cond in status.conditions if cond.type == "Ready")
    assert f"pod demo-train-0-a exited 1: {UPLOAD_FAILED}" in ready.message
    assert "rank 1 saw its peer leave" not in ready.message


def test_a_failed_pods_long_message_is_quoted_by_its_end() -> None:
    log_tail = "x" * 5000 + " StorageError: the end says why"
    observed = Observed(
        attempt=1,
        restarts=1,
        job=failed_job(ONE_NODE, BACKOFF),
        pods=(failed_rank(0, log_tail, "2026-05-01T11:59:30Z"),),
    )
    status = derive_training_status(ONE_NODE, observed, now=NOW).status
    failed = next(cond for cond in status.conditions if cond.type == "Failed")
    assert failed.message.endswith("StorageError: the end says why")
    assert len(failed.message) < 1000


def test_a_failed_attempt_is_replaced_only_after_its_backoff() -> None:
    """10 s after the first failure, doubling with each restart before it: the status says
    when the next attempt starts, counts nothing and replaces nothing until then."""
    failed_at = NOW - timedelta(seconds=15)
    observed = Observed(
        attempt=1,
        restarts=1,
        job=job(("Failed", "BackoffLimitExceeded"), since=failed_at),
        pods=(pod(0, "Failed", exit_code=1, message="storage failure: could not upload"),),
    )
    waiting = derive_training_status(training(), observed, now=NOW)
    assert (waiting.status.phase, waiting.replace_job, waiting.status.restarts) == (
        "Pending",
        False,
        1,
    )
    ready = next(c for c in waiting.status.conditions if c.type == "Ready")
    assert ready.reason == "Restarting"
    assert "could not upload" in ready.message
    assert f"starts at {format_time(failed_at + timedelta(seconds=20))}" in ready.message
    later = derive_training_status(training(), observed, now=failed_at + timedelta(seconds=20))
    assert (later.replace_job, later.status.restarts) == (True, 2)


def test_the_restart_backoff_doubles_and_is_capped() -> None:
    assert [restart_backoff(n).total_seconds() for n in range(7)] == [
        10, 20, 40, 80, 160, 300, 300,
    ]  # fmt: skip
