"""Status of a ModelTraining with spec.tuning: each trial's phase, and the search's.

Pure: observed trial Jobs and pods in, TrialStatus and the resource's status out. The
search is Succeeded when every trial it will run has ended and at least one succeeded;
its metrics and artifact are then the best trial's.
"""

from __future__ import annotations

from datetime import datetime

from modelplane_operator import constants as c
from modelplane_operator.api.common import ArtifactRef
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus, TrialStatus, Tuning
from modelplane_operator.conditions import Event, format_time, set_condition
from modelplane_operator.naming import child_name
from modelplane_operator.status.training import (
    Decision,
    Manifest,
    config_error,
    job_condition,
    rank0_result,
)
from modelplane_operator.tuning import TrialRecord, should_stop
from modelplane_runtime.contract import TrainingResult

FINAL_TRIAL_PHASES = ("Succeeded", "Failed", "Stopped")
REASON_SEARCHING = "Searching"
REASON_TOO_MANY_FAILED = "TooManyFailedTrials"
REASON_NO_TRIAL_SUCCEEDED = "NoTrialSucceeded"


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
            "metrics": dict(result.metrics),
            # Every epoch's objective, not only those the progress polls caught: the
            # median rule compares trials at equal steps.
            "intermediate": {**trial.intermediate, **result.objective_by_step},
            "artifact": ArtifactRef(uri=result.artifact_uri, digest=result.digest),
        }
    )


def observe_trial(
    trial: TrialStatus, job: Manifest | None, pods: tuple[Manifest, ...]
) -> TrialStatus:
    """The trial's phase from its Job (one attempt: a failed trial is not retried)."""
    if trial.phase in FINAL_TRIAL_PHASES or job is None:
        return trial
    if (message := config_error(job, pods)) is not None:
        return conclude_trial(trial, failure=message)
    if job_condition(job, "Complete") or job_condition(job, "SuccessCriteriaMet"):
        result = rank0_result(pods)
        if result is None:
            return trial.model_copy(update={"phase": "Running"})
        return conclude_trial(trial, result=result)
    if failed := job_condition(job, "Failed"):
        return conclude_trial(trial, failure=f"{failed.get('reason')}: {failed.get('message', '')}")
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    return trial.model_copy(update={"phase": "Running" if running else "Pending"})


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
        phase, reason = "Failed", REASON_TOO_MANY_FAILED
        message = (
            f"{len(failed)} trials failed (maxFailedTrials "
            f"{tuning.max_failed_trials}); last: {failed[-1].reason}"
        )
    elif done and best is None:
        phase, reason, message = "Failed", REASON_NO_TRIAL_SUCCEEDED, "no trial succeeded"
    elif done and best is not None:
        phase, reason = "Succeeded", c.REASON_SUCCEEDED
        message = f"best of {len(trials)} trials: {best.name} ({status.key_metric})"
        status.metrics = dict(best.metrics)
        status.artifact = best.artifact
        status.completion_time = format_time(now)
    else:
        running = any(t.phase == "Running" for t in trials)
        phase = "Running" if running else "Pending"
        reason = REASON_SEARCHING
        message = f"{len(ended)} of {tuning.max_trials} trials ended, {active} running"
        if running:
            status.start_time = status.start_time or format_time(now)
    status.phase = phase  # type: ignore[assignment]
    for type_, holds in (
        (c.COND_READY, phase == "Succeeded"),
        (c.COND_PROGRESSING, phase in ("Pending", "Running")),
        (c.COND_FAILED, phase == "Failed"),
        (c.COND_RECONCILING, phase in ("Pending", "Running")),
        (c.COND_STALLED, phase == "Failed"),
    ):
        explain = holds or type_ in (c.COND_READY, c.COND_PROGRESSING)
        status.conditions = set_condition(
            status.conditions,
            type_=type_,
            status="True" if holds else "False",
            reason=reason if explain else f"Not{type_}",
            message=message if explain else "",
            observed_generation=generation,
            now=now,
        )
    events: tuple[Event, ...] = ()
    if phase != previous.phase and previous.phase is not None:
        events = (Event("Warning" if phase == "Failed" else "Normal", reason, message),)
    return Decision(status=status, events=events)
