"""ModelTraining status from what its children show: a pure phase machine.

    Pending ──pods running──► Running ──Job complete──► Succeeded
       │                        │
       │                        ├─ infrastructure failure, restarts left ─► (replace Job) Pending
       │                        ├─ infrastructure failure, none left ─────► Failed RestartsExhausted
       └────────────────────────┴─ config-error exit code ────────────────► Failed ConfigError
    any ──spec.suspend──► Suspended ──resume──► Pending

Succeeded and Failed are final: a later observation never moves them (the Job may be
garbage-collected, the result stays in status).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelplane_operator import constants as c
from modelplane_operator.api.common import ArtifactRef
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus, Progress, TrainingPhase
from modelplane_operator.conditions import Event, format_time, set_condition
from modelplane_runtime.contract import ExitCode, TrainingResult

Manifest = dict[str, Any]
FINAL_PHASES = ("Succeeded", "Failed")
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class Observed:
    """The children of the current attempt, as the API server returned them."""

    attempt: int
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
    is allowed: the caller creates the next attempt's children."""


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


def config_error(job: Manifest | None, pods: tuple[Manifest, ...]) -> str | None:
    """The message of a pod that exited with the config-error code, if any did."""
    for pod in pods:
        state = _terminated(pod)
        if state and state.get("exitCode") == ExitCode.CONFIG_ERROR:
            return str(state.get("message") or "the runtime reported a configuration error")
    failed = job_condition(job, "Failed")
    if failed and failed.get("reason") == "PodFailurePolicy":
        return str(failed.get("message") or "the runtime reported a configuration error")
    return None


def rank0_result(pods: tuple[Manifest, ...]) -> TrainingResult | None:
    for pod in pods:
        if (pod.get("metadata") or {}).get("annotations", {}).get(COMPLETION_INDEX) != "0":
            continue
        state = _terminated(pod)
        if state and state.get("exitCode") == 0 and state.get("message"):
            try:
                return TrainingResult.model_validate(json.loads(state["message"]))
            except (ValueError, ValidationError):
                return None
    return None


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
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
                return c.REASON_IMAGE_PULL, str(waiting.get("message") or waiting["reason"])
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
    training: ModelTraining, observed: Observed, status: ModelTrainingStatus, now: datetime
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
        result = rank0_result(pods)
        if result is None:
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
        why = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
        if observed.attempt < training.spec.max_restarts:
            status.restarts = observed.attempt + 1
            return _Verdict(
                "Pending",
                c.REASON_RESTARTING,
                f"attempt {observed.attempt + 1} failed ({why}); replacing the job, which "
                "resumes from its newest checkpoint",
                replace=True,
            )
        return _Verdict(
            "Failed",
            c.REASON_RESTARTS_EXHAUSTED,
            f"failed after {observed.attempt} restart(s) (maxRestarts "
            f"{training.spec.max_restarts}); last failure: {why}",
        )
    running = [p for p in pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded")]
    if len(running) >= training.spec.resources.nodes:
        status.start_time = status.start_time or format_time(now)
        return _Verdict("Running", c.REASON_TRAINING, "training")
    return _Verdict("Pending", *_pending_reason(pods, observed.job_warnings))


def derive_training_status(
    training: ModelTraining, observed: Observed, *, now: datetime
) -> Decision:
    """The status `training` should have given `observed`, and what to do about it."""
    previous = training.status or ModelTrainingStatus()
    generation = training.metadata.generation or 0
    if previous.phase in FINAL_PHASES:
        # Final: keep the result, only acknowledge the generation.
        return Decision(status=previous.model_copy(update={"observed_generation": generation}))
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    status.restarts = observed.attempt
    status.job_name = (observed.job or {}).get("metadata", {}).get("name")
    verdict = _verdict(training, observed, status, now)
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
                    "eta_seconds",
                )
            }
        )
    status.phase = verdict.phase
    for type_, holds, always_explain in (
        (c.COND_READY, verdict.phase == "Succeeded", True),
        (c.COND_PROGRESSING, verdict.phase in ("Pending", "Running"), True),
        (c.COND_FAILED, verdict.phase == "Failed", False),
        (c.COND_SUSPENDED, verdict.phase == "Suspended", False),
        (c.COND_RECONCILING, verdict.phase in ("Pending", "Running"), False),
        (c.COND_STALLED, verdict.phase == "Failed", False),
    ):
        # Ready and Progressing always say where the run stands; Failed and Suspended
        # carry the detail only while they hold.
        explain = holds or always_explain
        status.conditions = set_condition(
            status.conditions,
            type_=type_,
            status="True" if holds else "False",
            reason=verdict.reason if explain else f"Not{type_}",
            message=verdict.message if explain else "",
            observed_generation=generation,
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
