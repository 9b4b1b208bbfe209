"""reconcile_tuning: a ModelTraining with spec.tuning runs its trials as Jobs.

Restart safety comes from the order of writes: a new trial is first recorded in
status.trials (name and sampled parameters), and only a later pass creates its Job, with
a name derived from the trial's. A restarted operator finds either the trial without a
Job (and creates it) or both; it never samples a trial twice and never loses one.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus, TrialStatus
from modelplane_operator.builders.training import (
    build_config_map,
    build_job,
    build_service,
    needs_service,
)
from modelplane_operator.client import Client
from modelplane_operator.reconcile import status_patch
from modelplane_operator.render import render_run_config
from modelplane_operator.settings import Settings
from modelplane_operator.status.training import rank0_ip
from modelplane_operator.status.tuning import (
    FINAL_TRIAL_PHASES,
    apply_early_stopping,
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
    client: Client, training: ModelTraining, trial: TrialStatus, *, settings: Settings
) -> Manifest:
    run_config = render_run_config(
        training,
        run_name=trial.name,
        hyperparameters=dict(trial.params),
        progress_port=settings.progress_port,
    )
    await client.apply(build_config_map(training, run_config, attempt=0))
    if needs_service(training):
        await client.apply(build_service(training, attempt=0, settings=settings, run=trial.name))
    return await client.apply(build_job(training, run_config, attempt=0, settings=settings))


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
        if trial.phase in FINAL_TRIAL_PHASES:
            continue
        jobs = await client.list_jobs(namespace, {c.LABEL_RUN: trial.name})
        job = jobs[0] if jobs else None
        if job is None:
            job = await create_trial_run(client, training, trial, settings=settings)
        pods = await client.list_pods(namespace, {c.LABEL_RUN: trial.name})
        observed = observe_trial(trial, job, tuple(pods))
        if poll_progress and observed.phase == "Running":
            ip = rank0_ip(pods)
            progress = await client.progress(ip, settings.progress_port) if ip else None
            observed = record_progress(tuning, observed, progress)
        trials[index] = observed
    before = [t.phase for t in trials]
    trials = apply_early_stopping(tuning, trials)
    for trial, phase in zip(trials, before, strict=True):
        if trial.phase == "Stopped" and phase != "Stopped":
            for job in await client.list_jobs(namespace, {c.LABEL_RUN: trial.name}):
                await client.delete_job(namespace, job["metadata"]["name"])

    active = sum(t.phase not in FINAL_TRIAL_PHASES for t in trials)
    failed = sum(t.phase == "Failed" for t in trials)
    room = min(tuning.parallel_trials - active, tuning.max_trials - len(trials))
    exhausted = False
    if room > 0 and failed <= tuning.max_failed_trials:
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
