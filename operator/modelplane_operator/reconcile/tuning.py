"""reconcile_tuning: a ModelTraining with spec.tuning runs its trials as Jobs.

Restart safety comes from the order of writes: a new trial is first recorded in
status.trials (name and sampled parameters), and only a later pass creates its Job, with
a name derived from the trial's. A restarted operator finds either the trial without a
Job (and creates it) or both; it never samples a trial twice and never loses one.

A trial's failed Job is replaced by the next attempt's (`<trial>-train-<n>`, labelled
with the attempt and annotated with the restarts before it) before the failed one is
deleted: a pass killed in between leaves both, and the next one keeps the newest. With
spec.suspend every active trial's Job is suspended and no trial is added.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus, TrialStatus
from modelplane_operator.builders.training import (
    build_job,
    build_service,
    needs_service,
)
from modelplane_operator.client import Client
from modelplane_operator.reconcile import owned_by, status_patch
from modelplane_operator.render import render_run_config
from modelplane_operator.settings import Settings
from modelplane_operator.status.training import job_attempt, rank0_ip
from modelplane_operator.status.tuning import (
    FINAL_TRIAL_PHASES,
    apply_early_stopping,
    conclude_trial,
    derive_tuning_status,
    history,
    observe_trial,
    record_progress,
    trial_name,
)
from modelplane_operator.tuning import suggest

log = logging.getLogger("modelplane.tuning")
Manifest = dict[str, Any]


async def create_trial_run(
    client: Client,
    training: ModelTraining,
    trial: TrialStatus,
    *,
    attempt: int,
    restarts: int,
    settings: Settings,
) -> Manifest:
    """Apply the Service (a gang's) and the Job of the trial's `attempt`, which follows
    `restarts` counted failures (kept on the Job); return the Job. The run keeps the
    trial's name whatever the attempt, so a replacement resumes from its checkpoints."""
    run_config = render_run_config(
        training,
        run_name=trial.name,
        hyperparameters=dict(trial.params),
        progress_port=settings.progress_port,
    )
    # The Job is built before anything is applied: a SpecError leaves nothing behind.
    job = build_job(training, run_config, attempt=attempt, settings=settings)
    job["metadata"].setdefault("annotations", {})[c.ANNOTATION_RESTARTS] = str(restarts)
    if needs_service(training):
        await client.apply(
            build_service(training, attempt=attempt, settings=settings, run=trial.name)
        )
    return await client.apply(job)


async def _trial_pass(
    client: Client,
    training: ModelTraining,
    trial: TrialStatus,
    *,
    settings: Settings,
    now: datetime,
    poll_progress: bool,
) -> TrialStatus:
    """Converge one active trial's Job; return the trial as it now stands."""
    namespace = training.metadata.namespace or ""
    jobs = owned_by(
        await client.list_jobs(namespace, {c.LABEL_RUN: trial.name}), training.metadata.uid
    )
    attempt = max([0, *map(job_attempt, jobs)])
    job = next((j for j in jobs if job_attempt(j) == attempt), None)
    for stale in jobs:
        if stale is not job:  # an attempt replaced by a pass killed before deleting it
            await client.delete_job(namespace, stale["metadata"]["name"])
    if job is None:
        job = await create_trial_run(
            client, training, trial, attempt=attempt, restarts=trial.restarts, settings=settings
        )
    elif bool(job["spec"].get("suspend")) != training.spec.suspend:
        await client.suspend_job(namespace, job["metadata"]["name"], suspend=training.spec.suspend)
    pods = await client.list_pods(
        namespace, {c.LABEL_RUN: trial.name, c.LABEL_ATTEMPT: str(attempt)}
    )
    decision = observe_trial(
        trial,
        training=training,
        job=job,
        pods=tuple(pods),
        attempt=attempt,
        now=now,
        result_grace=timedelta(seconds=settings.result_grace_seconds),
    )
    observed = decision.trial
    if decision.replace:
        await create_trial_run(
            client,
            training,
            observed,
            attempt=attempt + 1,
            restarts=observed.restarts,
            settings=settings,
        )
        await client.delete_job(namespace, job["metadata"]["name"])
    if poll_progress and observed.phase == "Running" and training.spec.tuning is not None:
        ip = rank0_ip(pods)
        progress = await client.progress(ip, settings.progress_port) if ip else None
        observed = record_progress(training.spec.tuning, observed, progress)
    return observed


async def _stop_active(
    client: Client, namespace: str, trials: list[TrialStatus], *, why: str
) -> list[TrialStatus]:
    """`trials` with every unfinished one Stopped for `why`, its Jobs deleted."""
    stopped = []
    for trial in trials:
        if trial.phase in FINAL_TRIAL_PHASES:
            stopped.append(trial)
            continue
        for job in await client.list_jobs(namespace, {c.LABEL_RUN: trial.name}):
            await client.delete_job(namespace, job["metadata"]["name"])
        stopped.append(conclude_trial(trial, stopped=why))
    return stopped


async def reconcile_tuning(
    client: Client,
    body: Manifest,
    training: ModelTraining,
    *,
    settings: Settings,
    now: datetime,
    poll_progress: bool = False,
) -> str | None:
    tuning = training.spec.tuning
    if tuning is None:
        raise ValueError("reconcile_tuning needs spec.tuning")
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = training.status or ModelTrainingStatus()
    trials = list(status.trials)
    for index, trial in enumerate(trials):
        if trial.phase not in FINAL_TRIAL_PHASES:
            trials[index] = await _trial_pass(
                client, training, trial, settings=settings, now=now, poll_progress=poll_progress
            )
    before = [t.phase for t in trials]
    trials = apply_early_stopping(tuning, trials)
    for trial, phase in zip(trials, before, strict=True):
        if trial.phase == "Stopped" and phase != "Stopped":
            for job in owned_by(
                await client.list_jobs(namespace, {c.LABEL_RUN: trial.name}), training.metadata.uid
            ):
                await client.delete_job(namespace, job["metadata"]["name"])

    failed = sum(t.phase == "Failed" for t in trials)
    if failed > tuning.max_failed_trials:
        # The search fails in this pass: its running trials cannot change that, and a
        # Failed training is never reconciled again, so nothing would stop them later.
        trials = await _stop_active(
            client,
            namespace,
            trials,
            why=f"the search failed: {failed} trials failed "
            f"(maxFailedTrials {tuning.max_failed_trials})",
        )
    active = sum(t.phase not in FINAL_TRIAL_PHASES for t in trials)
    room = min(tuning.parallel_trials - active, tuning.max_trials - len(trials))
    exhausted = False
    if room > 0 and failed <= tuning.max_failed_trials and not training.spec.suspend:
        new = suggest(
            tuning,
            seed=training.spec.hyperparameters.seed,
            history=history(tuning, trials),
            count=room,
        )
        exhausted = len(new) < room
        for params in new:
            trials.append(TrialStatus(name=trial_name(name, len(trials)), params=params))
    decision = derive_tuning_status(training, trials, exhausted=exhausted, now=now)
    new_status = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    patch = status_patch(body.get("status") or {}, new_status)
    if patch is not None:
        # New trials are recorded here; their Jobs are created by the next pass.
        await client.patch_training_status(namespace, name, patch)
    for event in decision.events:
        await client.event(
            owner=body, type_=event.type, reason=event.reason, message=event.message, now=now
        )
    return decision.status.phase
