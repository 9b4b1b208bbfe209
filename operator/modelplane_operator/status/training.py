"""ModelTraining status from what its children show: a pure phase machine.

    (spec judged invalid) ──────────────────────────────► Failed InvalidSpec
    Pending ──pods running──► Running ──Job complete──► Succeeded
       │                        ├─ Job complete, no result past the grace ─► Failed ResultMissing
       │                        │
       │                        ├─ a pod disrupted (evicted, preempted) ──► (replace Job) Pending
       │                        ├─ infrastructure failure, restarts left ─► (replace Job after
       │                        │                                          the backoff) Pending
       │                        ├─ infrastructure failure, none left ─────► Failed RestartsExhausted
       └────────────────────────┴─ config-error exit code ────────────────► Failed ConfigError
    any ──spec.suspend──► Suspended ──resume──► Pending

Succeeded and Failed are final: a later observation never moves them (the Job may be
garbage-collected, the result stays in status). A disruption replaces the whole gang
without counting against maxRestarts: the run did nothing wrong. A pod that cannot pull
its image keeps the training Pending with the ImagePullFailed reason: the kubelet keeps
retrying, and the Job never ends by itself. An attempt that failed because the kernel
OOM-killed a rank gives reason OOMKilled (restarting or failed) and names the pod and
its memory limit: the Job's own message does not say why its pod failed. A failed
attempt is replaced after a backoff (`restart_backoff`: 10 s doubling per restart, at most
5 min, counted from the Job's Failed condition so a restarted operator waits the same).

A spec the operator judges unrunnable (judge.py, or a builder's SpecError) is Failed
with reason InvalidSpec for its generation; a new generation is judged afresh. A Job
that completed without rank 0's readable result is Failed with reason ResultMissing once
`result_grace` has passed since its Complete condition: measured from the Job, so a
restarted operator decides the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from modelplane_operator import constants as c
from modelplane_operator.api.common import ArtifactRef
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus, Progress, TrainingPhase
from modelplane_operator.conditions import Event, find_condition, format_time, set_condition
from modelplane_operator.settings import RESULT_GRACE_SECONDS
from modelplane_operator.status.pods import oom_killed, pod_problem
from modelplane_operator.validation import Problem
from modelplane_runtime.contract import ExitCode, TrainingResult

Manifest = dict[str, Any]
FINAL_PHASES = ("Succeeded", "Failed")
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
RESULT_GRACE = timedelta(seconds=RESULT_GRACE_SECONDS)
RESTART_BACKOFF = timedelta(seconds=10)
RESTART_BACKOFF_CAP = timedelta(minutes=5)
QUOTED_MESSAGE_CHARS = 200
# A failed rank's termination message: the runtime's own words (a storage error names the
# object, the endpoint and the cause), or with FallbackToLogsOnError its log's tail, whose
# end says the most.
QUOTED_FAILURE_CHARS = 600


@dataclass(frozen=True)
class Observed:
    """The children of the current attempt, as the API server returned them."""

    attempt: int
    """Every replacement counts here: attempt n's Job is `<name>-train-<n>`."""
    restarts: int = 0
    """Failures counted against maxRestarts before this attempt (the Job's annotation);
    the other `attempt - restarts` replacements followed disruptions."""
    job: Manifest | None = None
    pods: tuple[Manifest, ...] = ()
    job_warnings: tuple[str, ...] = ()
    """Messages of the Job's FailedCreate events (why pods could not even be created)."""
    progress: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    status: ModelTrainingStatus
    events: tuple[Event, ...] = ()
    replace_job: bool = False
    """True when the current Job failed for an infrastructure reason and another attempt
    is allowed: the caller creates the next attempt's children, counting
    `status.restarts` failures before it."""


def job_attempt(job: Manifest) -> int:
    """The attempt a Job is (its label): every replacement of a run counts."""
    return int(job["metadata"].get("labels", {}).get(c.LABEL_ATTEMPT, "0"))


def job_restarts(job: Manifest) -> int:
    """Failures counted before this attempt. A Job from before disruptions were told
    apart has no annotation: every replacement before it counted."""
    recorded = job["metadata"].get("annotations", {}).get(c.ANNOTATION_RESTARTS)
    return int(recorded) if recorded is not None else job_attempt(job)


def job_condition(job: Manifest | None, type_: str) -> Manifest | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _terminated(pod: Manifest) -> Manifest | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated")
        if state:
            return dict(state)
    return None


def _failed_by_disruption_rule(failed: Manifest | None) -> bool:
    """The Job failed by its FailJob rule on DisruptionTarget; the Job controller's
    message reads `Pod <ns>/<pod> has condition DisruptionTarget matching FailJob ...`."""
    return (
        failed is not None
        and failed.get("reason") == "PodFailurePolicy"
        and c.POD_DISRUPTION_TARGET in str(failed.get("message") or "")
    )


def config_error(job: Manifest | None, pods: tuple[Manifest, ...]) -> str | None:
    """The message of a pod that exited with the config-error code, if any did."""
    for pod in pods:
        state = _terminated(pod)
        if state and state.get("exitCode") == ExitCode.CONFIG_ERROR:
            return str(state.get("message") or "the runtime reported a configuration error")
    failed = job_condition(job, "Failed")
    if (
        failed
        and failed.get("reason") == "PodFailurePolicy"
        and not _failed_by_disruption_rule(failed)
    ):
        return str(failed.get("message") or "the runtime reported a configuration error")
    return None


def _fails_on_disruption(job: Manifest) -> bool:
    """The Job's own pod failure policy ends the attempt when a pod is disrupted (a gang);
    a Job that ignores disruptions replaces that pod alone, so a disrupted pod among its
    pods never explains the Job's failure."""
    rules = (((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules")) or []
    return any(
        rule.get("action") == "FailJob"
        and any(
            cond.get("type") == c.POD_DISRUPTION_TARGET
            for cond in rule.get("onPodConditions") or []
        )
        for rule in rules
    )


def disruption(job: Manifest | None, pods: tuple[Manifest, ...]) -> str | None:
    """Why a failed attempt was the cluster's doing (a pod evicted, preempted or lost with
    its node), or None when it failed on its own. A rank that crashed because its peer
    vanished fails the Job too, maybe first: the disrupted pod is the cause either way."""
    failed = job_condition(job, "Failed")
    if job is None or failed is None or not _fails_on_disruption(job):
        return None
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == c.POD_DISRUPTION_TARGET and cond.get("status") == "True":
                name = (pod.get("metadata") or {}).get("name") or "(unnamed)"
                why = ": ".join(str(cond[k]) for k in ("reason", "message") if cond.get(k))
                return f"pod {name} was disrupted ({why or c.POD_DISRUPTION_TARGET})"
    if _failed_by_disruption_rule(failed):
        return str(failed.get("message"))
    return None


def failed_pod_message(pods: tuple[Manifest, ...]) -> str | None:
    """What the pod that failed last said as it ended (its termination message), naming
    the pod and its exit code, or None when no failed pod left a message. The Job's own
    condition only says that a pod failed; this says why, e.g. that rank 0 could not
    upload the artifact to object storage."""
    failed = []
    for pod in pods:
        state = _terminated(pod)
        if state and state.get("exitCode") not in (None, 0) and str(state.get("message") or ""):
            failed.append((str(state.get("finishedAt") or ""), pod, state))
    if not failed:
        return None
    _, pod, state = max(failed, key=lambda found: found[0])
    name = (pod.get("metadata") or {}).get("name") or "(unnamed)"
    message = " ".join(str(state["message"]).split())
    if len(message) > QUOTED_FAILURE_CHARS:
        message = "..." + message[-QUOTED_FAILURE_CHARS:]
    return f"pod {name} exited {state['exitCode']}: {message}"


def _failure(failed: Manifest, pods: tuple[Manifest, ...]) -> str:
    """Why a Job failed: its condition, and what its last failed pod said."""
    why = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
    said = failed_pod_message(pods)
    return f"{why}; {said}" if said is not None else why


def rank0_outcome(pods: tuple[Manifest, ...]) -> TrainingResult | str:
    """Rank 0's result from its termination message, or what is missing instead."""
    rank0 = [
        pod
        for pod in pods
        if (pod.get("metadata") or {}).get("annotations", {}).get(COMPLETION_INDEX) == "0"
    ]
    why = "no pod of rank 0 is left to read its result from"
    for pod in rank0:
        name = (pod.get("metadata") or {}).get("name") or "of rank 0"
        state = _terminated(pod)
        if not state or state.get("exitCode") != 0:
            continue
        message = str(state.get("message") or "")
        if not message.strip():
            why = f"rank 0 (pod {name}) exited 0 without a termination message"
            continue
        try:
            return TrainingResult.model_validate(json.loads(message))
        except (ValueError, ValidationError):
            why = (
                f"rank 0's termination message (pod {name}) is not a training result: "
                f"{message[:QUOTED_MESSAGE_CHARS]!r}"
            )
    return why


def rank0_result(pods: tuple[Manifest, ...]) -> TrainingResult | None:
    outcome = rank0_outcome(pods)
    return outcome if isinstance(outcome, TrainingResult) else None


def completed_at(job: Manifest | None) -> datetime | None:
    """When the Job completed (its Complete or SuccessCriteriaMet condition's time)."""
    for type_ in ("Complete", "SuccessCriteriaMet"):
        cond = job_condition(job, type_)
        if cond and cond.get("lastTransitionTime"):
            return datetime.fromisoformat(str(cond["lastTransitionTime"]))
    return None


def restart_backoff(restarts: int) -> timedelta:
    """How long after a failed attempt the next one starts: 10 s, doubling with each
    restart before it, at most 5 minutes — the Job controller's own pod backoff, which the
    operator's restarts (a new Job each) would otherwise skip. Without it, a cause that
    lasts a minute (object storage down, a flaky node) burns every restart in that minute."""
    return min(RESTART_BACKOFF * (1 << min(restarts, 16)), RESTART_BACKOFF_CAP)


def next_attempt_at(failed: Manifest, *, restarts: int) -> datetime | None:
    """When the attempt after the one that failed (its Job's Failed condition) starts;
    None when the condition has no time (then at once)."""
    stamp = failed.get("lastTransitionTime")
    if not stamp:
        return None
    return datetime.fromisoformat(str(stamp)) + restart_backoff(restarts)


def result_missing(
    job: Manifest | None, why: str, *, output_uri: str, now: datetime, grace: timedelta
) -> str | None:
    """The ResultMissing message once `grace` has passed since the Job completed without
    rank 0's result (`why` says what is missing), or None while it may still come. A Job
    without the condition's time has nothing to wait from: its result is missing now."""
    done = completed_at(job)
    if done is not None and now - done < grace:
        return None
    return (
        f"the job completed, but {why} (waited {grace.total_seconds():g} s); the artifact "
        f"may still be under {output_uri}"
    )


def rank0_ip(pods: list[Manifest]) -> str | None:
    """The pod IP of rank 0 (completion index 0), where /progress is served."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("annotations", {}).get(COMPLETION_INDEX) == "0":
            ip = (pod.get("status") or {}).get("podIP")
            return str(ip) if ip else None
    return None


def _pending_reason(
    pods: tuple[Manifest, ...], job_warnings: tuple[str, ...] = ()
) -> tuple[str, str]:
    """Why pods are not running yet, the most telling reason first."""
    for warning in job_warnings:
        if "exceeded quota" in warning:
            return c.REASON_QUOTA_EXCEEDED, warning
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return c.REASON_UNSCHEDULABLE, str(cond.get("message", ""))
    if (problem := pod_problem(pods)) is not None:
        return problem.reason, problem.message
    return c.REASON_WAITING_FOR_PODS, "waiting for every node's pod to start"


def key_metric(training: ModelTraining, metrics: dict[str, float]) -> str | None:
    """The headline metric: the first requested, else accuracy, else perplexity."""
    wanted = [*training.spec.evaluation.metrics, "accuracy", "perplexity"]
    for name in wanted:
        if name in metrics:
            return f"{name}={metrics[name]:.3f}"
    return None


@dataclass
class _Verdict:
    phase: TrainingPhase
    reason: str
    message: str
    replace: bool = False


def _verdict(  # noqa: PLR0911  (one return per edge of the phase machine)
    training: ModelTraining,
    observed: Observed,
    status: ModelTrainingStatus,
    *,
    now: datetime,
    result_grace: timedelta,
) -> _Verdict:
    """The phase the observation implies; fills result fields of `status` on success."""
    job, pods = observed.job, observed.pods
    if training.spec.suspend:
        return _Verdict("Suspended", c.REASON_SUSPENDED, "spec.suspend is true")
    if job is None:
        return _Verdict("Pending", c.REASON_CREATED, "creating the training job")
    if (config_message := config_error(job, pods)) is not None:
        return _Verdict("Failed", c.REASON_CONFIG_ERROR, config_message)
    if job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet"):
        result = rank0_outcome(pods)
        if isinstance(result, str):
            missing = result_missing(
                job,
                result,
                output_uri=f"{training.spec.output.uri.rstrip('/')}/{training.metadata.name}",
                now=now,
                grace=result_grace,
            )
            if missing is not None:
                return _Verdict("Failed", c.REASON_RESULT_MISSING, missing)
            return _Verdict(
                "Running", c.REASON_TRAINING, "the job completed; waiting for rank 0's result"
            )
        status.metrics = dict(result.metrics)
        status.key_metric = key_metric(training, result.metrics)
        status.artifact = ArtifactRef(uri=result.artifact_uri, digest=result.digest)
        status.completion_time = format_time(now)
        if status.progress:
            status.progress.step = status.progress.total_steps or result.steps
            status.progress.percent = 100
        return _Verdict(
            "Succeeded",
            c.REASON_SUCCEEDED,
            f"trained {result.steps} steps; artifact {result.artifact_uri}",
        )
    if failed := job_condition(job, "Failed"):
        if (disrupted := disruption(job, pods)) is not None:
            status.disruptions += 1
            return _Verdict(
                "Pending",
                c.REASON_RESTARTING,
                f"attempt {observed.attempt + 1} was disrupted: {disrupted}; replacing "
                "every node's pod, which resume from the newest checkpoint (a disruption "
                "does not count against maxRestarts)",
                replace=True,
            )
        return _failed_attempt(training, observed, status, failed, now=now)
    running = [p for p in pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded")]
    if len(running) >= training.spec.resources.nodes:
        status.start_time = status.start_time or format_time(now)
        return _Verdict("Running", c.REASON_TRAINING, "training")
    return _Verdict("Pending", *_pending_reason(pods, observed.job_warnings))


def _failed_attempt(
    training: ModelTraining,
    observed: Observed,
    status: ModelTrainingStatus,
    failed: Manifest,
    *,
    now: datetime,
) -> _Verdict:
    """An attempt that failed on its own: the next one after the backoff while restarts
    are left, else Failed."""
    pods = observed.pods
    why = _failure(failed, pods)
    oom = oom_killed(pods)
    if oom is not None:
        why = oom.message
    if observed.restarts < training.spec.max_restarts:
        due = next_attempt_at(failed, restarts=observed.restarts)
        if due is not None and now < due:
            return _Verdict(
                "Pending",
                c.REASON_OOM_KILLED if oom else c.REASON_RESTARTING,
                f"attempt {observed.attempt + 1} failed ({why}); the next attempt starts "
                f"at {format_time(due)}, {restart_backoff(observed.restarts).seconds} s "
                "after the failure (the backoff doubles with each restart)",
            )
        status.restarts = observed.restarts + 1
        return _Verdict(
            "Pending",
            c.REASON_OOM_KILLED if oom else c.REASON_RESTARTING,
            f"attempt {observed.attempt + 1} failed ({why}); replacing the job, which "
            "resumes from its newest checkpoint",
            replace=True,
        )
    return _Verdict(
        "Failed",
        c.REASON_OOM_KILLED if oom else c.REASON_RESTARTS_EXHAUSTED,
        f"failed after {observed.restarts} restart(s) (maxRestarts "
        f"{training.spec.max_restarts}); last failure: {why}",
    )


def derive_training_status(
    training: ModelTraining,
    observed: Observed,
    *,
    now: datetime,
    result_grace: timedelta = RESULT_GRACE,
) -> Decision:
    """The status `training` should have given `observed`, and what to do about it.
    `result_grace`: how long a completed Job may lack rank 0's result."""
    previous = training.status or ModelTrainingStatus()
    generation = training.metadata.generation or 0
    if previous.phase in FINAL_PHASES:
        # Final: keep the result, only acknowledge the generation.
        return Decision(status=previous.model_copy(update={"observed_generation": generation}))
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    status.restarts = observed.restarts
    status.disruptions = observed.attempt - observed.restarts
    status.job_name = (observed.job or {}).get("metadata", {}).get("name")
    verdict = _verdict(training, observed, status, now=now, result_grace=result_grace)
    if observed.progress and verdict.phase == "Running":
        status.progress = Progress.model_validate(
            {
                k: observed.progress.get(k)
                for k in (
                    "epoch",
                    "step",
                    "total_steps",
                    "percent",
                    "loss",
                    "samples_per_second",
                    "tokens_per_second",
                    "eta_seconds",
                )
            }
        )
    set_phase(
        status,
        verdict.phase,
        reason=verdict.reason,
        message=verdict.message,
        generation=generation,
        now=now,
    )
    events: tuple[Event, ...] = ()
    # An Event per transition worth telling; a new resource becoming Pending is not one
    # (its creation is already in the audit trail, and every Event is an API write).
    first_pending = previous.phase is None and verdict.phase == "Pending"
    if (verdict.phase != previous.phase and not first_pending) or verdict.replace:
        warning = verdict.phase == "Failed" or verdict.replace
        events = (Event("Warning" if warning else "Normal", verdict.reason, verdict.message),)
    return Decision(status=status, events=events, replace_job=verdict.replace)


def set_phase(
    status: ModelTrainingStatus,
    phase: TrainingPhase,
    *,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> None:
    """Set `status.phase` and the conditions that follow from it (a search's too)."""
    status.phase = phase
    for type_, holds, always_explain in (
        (c.COND_READY, phase == "Succeeded", True),
        (c.COND_PROGRESSING, phase in ("Pending", "Running"), True),
        (c.COND_FAILED, phase == "Failed", False),
        (c.COND_SUSPENDED, phase == "Suspended", False),
        (c.COND_RECONCILING, phase in ("Pending", "Running"), False),
        (c.COND_STALLED, phase == "Failed", False),
    ):
        # Ready and Progressing always say where the run stands; Failed and Suspended
        # carry the detail only while they hold.
        explain = holds or always_explain
        status.conditions = set_condition(
            status.conditions,
            type_=type_,
            status="True" if holds else "False",
            reason=reason if explain else f"Not{type_}",
            message=message if explain else "",
            observed_generation=generation,
            now=now,
        )


def invalid_spec_status(
    previous: ModelTrainingStatus | None,
    problems: Sequence[Problem],
    *,
    generation: int,
    now: datetime,
) -> Decision:
    """Failed with reason InvalidSpec for `generation`, naming every problem's field: the
    spec cannot run as written, and nothing is retried until a new generation."""
    status = (previous or ModelTrainingStatus()).model_copy(deep=True)
    status.observed_generation = generation
    message = (
        "the spec cannot run as written: "
        + "; ".join(str(p) for p in problems)
        + ". Fix the field and apply again."
    )
    set_phase(
        status,
        "Failed",
        reason=c.REASON_INVALID_SPEC,
        message=message,
        generation=generation,
        now=now,
    )
    events: tuple[Event, ...] = ()
    if previous is None or previous.model_dump() != status.model_dump():
        events = (Event("Warning", c.REASON_INVALID_SPEC, message),)
    return Decision(status=status, events=events)


def judged_invalid(status: ModelTrainingStatus | None) -> bool:
    """The status is an InvalidSpec verdict (of some generation)."""
    failed = find_condition(status.conditions, c.COND_FAILED) if status else None
    return failed is not None and failed.status == "True" and failed.reason == c.REASON_INVALID_SPEC


def without_invalid_verdict(training: ModelTraining) -> ModelTraining:
    """`training` to reconcile: an InvalidSpec verdict (of an older generation, or the
    reconcile would not get this far) judged a spec that has since changed, so the changed
    spec is reconciled instead of staying Failed. Only the verdict goes: what the run did
    before it (its Job, restarts and disruptions, a search's trials) is kept, so a run
    refused mid-way continues where it was and a search never samples a trial name twice
    (its old Jobs would be adopted with another trial's parameters)."""
    status = training.status
    if status is None or not judged_invalid(status):
        return training
    cleared = status.model_copy(update={"phase": None, "conditions": [], "completion_time": None})
    return training.model_copy(update={"status": cleared})
