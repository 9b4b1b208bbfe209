"""Status of a ModelTraining with spec.tuning: each trial's phase, and the search's.

Pure: observed trial Jobs and pods in, TrialStatus and the resource's status out. The
search is Succeeded when every trial it will run has ended and at least one succeeded;
its metrics and artifact are then the best trial's.

A trial follows the rules of a training without tuning: a Job failed by the
infrastructure is replaced by the next attempt (resuming from the trial's checkpoints)
up to spec.maxRestarts times, a disrupted one without counting, a config error fails the
trial at once, and a Job that completed without rank 0's result fails it with
ResultMissing after the grace period. spec.suspend suspends every running trial's Job
and starts no new trial; the search is Suspended until it is false again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from modelplane_operator import constants as c
from modelplane_operator.api.common import ArtifactRef
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus, TrialStatus, Tuning
from modelplane_operator.conditions import Event, format_time
from modelplane_operator.naming import child_name
from modelplane_operator.status.pods import oom_killed
from modelplane_operator.status.training import (
    RESULT_GRACE,
    Decision,
    Manifest,
    config_error,
    disruption,
    job_condition,
    job_restarts,
    rank0_outcome,
    result_missing,
    set_phase,
)
from modelplane_operator.tuning import TrialRecord, should_stop
from modelplane_runtime.contract import TrainingResult

FINAL_TRIAL_PHASES = ("Succeeded", "Failed", "Stopped")


def trial_name(training_name: str, index: int) -> str:
    """Trial i of a training: `<name>-t<i>`, short enough for its Job's pods."""
    return child_name(training_name, f"t{index}", max_length=40)


def conclude_trial(
    trial: TrialStatus,
    *,
    result: TrainingResult | None = None,
    failure: str | None = None,
    stopped: str | None = None,
) -> TrialStatus:
    """A trial that ended: Stopped (`stopped` says why), Failed (`failure` says why) or
    Succeeded with rank 0's `result`. One rule for the operator (from a trial's Job) and
    for local mode (from the processes' exit): the same result gives the same phase."""
    if stopped is not None:
        return trial.model_copy(update={"phase": "Stopped", "reason": stopped})
    if failure is not None or result is None:
        reason = failure or "the run ended without a result"
        return trial.model_copy(update={"phase": "Failed", "reason": reason})
    return trial.model_copy(
        update={
            "phase": "Succeeded",
            "reason": "",  # a note of an earlier attempt's failure no longer applies
            "metrics": dict(result.metrics),
            # Every epoch's objective, not only those the progress polls caught: the
            # median rule compares trials at equal steps.
            "intermediate": {**trial.intermediate, **result.objective_by_step},
            "artifact": ArtifactRef(uri=result.artifact_uri, digest=result.digest),
        }
    )


@dataclass(frozen=True)
class TrialDecision:
    """A trial as its Job shows it, and what to do about the Job."""

    trial: TrialStatus
    replace: bool = False
    """The Job failed for an infrastructure reason (or was disrupted) and another attempt
    is allowed: the caller creates the next attempt after `trial.restarts` failures."""


def observe_trial(  # noqa: PLR0911  (one return per edge of the trial's phase machine)
    trial: TrialStatus,
    *,
    training: ModelTraining,
    job: Manifest | None,
    pods: tuple[Manifest, ...],
    attempt: int = 0,
    now: datetime,
    result_grace: timedelta = RESULT_GRACE,
) -> TrialDecision:
    """The trial's phase from its current attempt's Job and pods."""
    if trial.phase in FINAL_TRIAL_PHASES or job is None:
        return TrialDecision(trial)
    restarts = job_restarts(job)
    trial = trial.model_copy(update={"restarts": restarts})
    if (message := config_error(job, pods)) is not None:
        return TrialDecision(conclude_trial(trial, failure=message))
    if job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet"):
        outcome = rank0_outcome(pods)
        if not isinstance(outcome, str):
            return TrialDecision(conclude_trial(trial, result=outcome))
        artifact = f"{training.spec.output.uri.rstrip('/')}/{trial.name}"
        missing = result_missing(job, outcome, output_uri=artifact, now=now, grace=result_grace)
        if missing is not None:
            return TrialDecision(
                conclude_trial(trial, failure=f"{c.REASON_RESULT_MISSING}: {missing}")
            )
        return TrialDecision(trial.model_copy(update={"phase": "Running"}))
    if failed := job_condition(job, "Failed"):
        if (disrupted := disruption(job, pods)) is not None:
            note = (
                f"attempt {attempt + 1} was disrupted ({disrupted}); replaced, resuming from "
                "its newest checkpoint (not counted against maxRestarts)"
            )
            return TrialDecision(
                trial.model_copy(update={"phase": "Pending", "reason": note}), replace=True
            )
        why = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
        if (oom := oom_killed(pods)) is not None:
            why = oom.message
        max_restarts = training.spec.max_restarts
        if restarts < max_restarts:
            note = (
                f"attempt {attempt + 1} failed ({why}); replaced, resuming from its newest "
                f"checkpoint (restart {restarts + 1} of {max_restarts})"
            )
            update = {"phase": "Pending", "reason": note, "restarts": restarts + 1}
            return TrialDecision(trial.model_copy(update=update), replace=True)
        return TrialDecision(
            conclude_trial(
                trial,
                failure=f"failed after {restarts} restart(s) (maxRestarts {max_restarts}); "
                f"last failure: {why}",
            )
        )
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    return TrialDecision(trial.model_copy(update={"phase": "Running" if running else "Pending"}))


def objective_value(tuning: Tuning, trial: TrialStatus) -> float | None:
    return trial.metrics.get(tuning.objective.metric)


def history(tuning: Tuning, trials: list[TrialStatus]) -> list[TrialRecord]:
    """status.trials as the search sees them."""
    states = {
        "Pending": "running",
        "Running": "running",
        "Succeeded": "complete",
        "Failed": "failed",
        "Stopped": "stopped",
    }
    return [
        TrialRecord(
            params=dict(t.params),
            state=states[t.phase],  # type: ignore[arg-type]
            value=objective_value(tuning, t),
            intermediate={int(step): value for step, value in t.intermediate.items()},
        )
        for t in trials
    ]


def record_progress(tuning: Tuning, trial: TrialStatus, progress: Manifest | None) -> TrialStatus:
    """Add the objective at the current step, when the trial's progress reports it."""
    if not progress or trial.phase != "Running":
        return trial
    value = (progress.get("metrics") or {}).get(tuning.objective.metric)
    # The step the metrics belong to (an epoch's end), so every trial is compared at the
    # same steps; the current step only when the runtime does not say.
    step = progress.get("metrics_step") or progress.get("step")
    if value is None or not step:
        return trial
    return trial.model_copy(
        update={"intermediate": {**trial.intermediate, str(step): float(value)}}
    )


def apply_early_stopping(tuning: Tuning, trials: list[TrialStatus]) -> list[TrialStatus]:
    """Running trials the median rule stops become Stopped, with the reason."""
    records = history(tuning, trials)
    return [
        trial.model_copy(
            update={
                "phase": "Stopped",
                "reason": "stopped early: worse than the median of completed trials at step "
                f"{max(map(int, trial.intermediate))}",
            }
        )
        if trial.phase == "Running" and should_stop(tuning, history=records, index=index)
        else trial
        for index, trial in enumerate(trials)
    ]


def best_trial(tuning: Tuning, trials: list[TrialStatus]) -> TrialStatus | None:
    scored = [
        t for t in trials if t.phase == "Succeeded" and objective_value(tuning, t) is not None
    ]
    if not scored:
        return None
    sign = 1.0 if tuning.objective.goal == "maximize" else -1.0
    return max(scored, key=lambda t: sign * (objective_value(tuning, t) or 0.0))


def derive_tuning_status(
    training: ModelTraining, trials: list[TrialStatus], *, exhausted: bool, now: datetime
) -> Decision:
    """The search's status. `exhausted`: the search has nothing left to suggest."""
    tuning = training.spec.tuning
    if tuning is None:
        raise ValueError("derive_tuning_status needs spec.tuning")
    previous = training.status or ModelTrainingStatus()
    generation = training.metadata.generation or 0
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    status.trials = trials
    ended = [t for t in trials if t.phase in FINAL_TRIAL_PHASES]
    failed = [t for t in trials if t.phase == "Failed"]
    active = len(trials) - len(ended)
    status.trial_summary = f"{len(ended)}/{tuning.max_trials}"
    best = best_trial(tuning, trials)
    if best is not None:
        status.best_trial = best.name
        value = objective_value(tuning, best)
        status.key_metric = f"{tuning.objective.metric}={value:.3f}"
    done = active == 0 and (len(trials) >= tuning.max_trials or exhausted)
    if len(failed) > tuning.max_failed_trials:
        phase, reason = "Failed", c.REASON_TOO_MANY_FAILED
        message = (
            f"{len(failed)} trials failed (maxFailedTrials "
            f"{tuning.max_failed_trials}); last: {failed[-1].reason}"
        )
    elif done and best is None:
        phase, reason, message = "Failed", c.REASON_NO_TRIAL_SUCCEEDED, "no trial succeeded"
    elif done and best is not None:
        phase, reason = "Succeeded", c.REASON_SUCCEEDED
        message = f"best of {len(trials)} trials: {best.name} ({status.key_metric})"
        status.metrics = dict(best.metrics)
        status.artifact = best.artifact
        status.completion_time = format_time(now)
    elif training.spec.suspend:
        phase, reason = "Suspended", c.REASON_SUSPENDED
        message = (
            f"spec.suspend is true: {active} trial(s) suspended, {len(ended)} of "
            f"{tuning.max_trials} ended; no trial starts until it is false"
        )
    else:
        running = any(t.phase == "Running" for t in trials)
        phase = "Running" if running else "Pending"
        reason = c.REASON_SEARCHING
        message = f"{len(ended)} of {tuning.max_trials} trials ended, {active} running"
        if running:
            status.start_time = status.start_time or format_time(now)
    set_phase(
        status,
        phase,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )
    events: tuple[Event, ...] = ()
    if phase != previous.phase and previous.phase is not None:
        events = (Event("Warning" if phase == "Failed" else "Normal", reason, message),)
    return Decision(status=status, events=events)
