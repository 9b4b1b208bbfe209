"""reconcile_training: one level-based pass that converges a ModelTraining.

Every trigger (the resource changed, a child changed, the resync timer) runs this same
function. It reads the children, lets the pure phase machine decide, applies what is
missing, and patches status once, only when it changed. Killed at any point and run
again, it finds the same deterministic children and continues.

A spec that cannot run as written (a body that does not parse, a problem `judge_training`
finds before the first child, a builder's SpecError) ends Failed with reason InvalidSpec
for its generation, written once: later passes over the same generation return at once,
without a log line or a write. A new generation is judged afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ModelTrainingStatus
from modelplane_operator.builders.training import (
    build_job,
    build_service,
    names_for,
    needs_service,
)
from modelplane_operator.client import Client
from modelplane_operator.conditions import set_condition
from modelplane_operator.judge import SpecError, judge_training
from modelplane_operator.reconcile import owned_by, status_patch
from modelplane_operator.reconcile.tuning import reconcile_tuning
from modelplane_operator.render import render_run_config
from modelplane_operator.settings import Settings
from modelplane_operator.status.training import (
    FINAL_PHASES,
    Observed,
    derive_training_status,
    invalid_spec_status,
    job_attempt,
    job_restarts,
    rank0_ip,
    without_invalid_verdict,
)
from modelplane_operator.validation import Problem, problems_of

log = logging.getLogger("modelplane.training")
Manifest = dict[str, Any]


def spec_hash(training: ModelTraining) -> str:
    """Hash of the fields a running Job was built from (suspend may change freely)."""
    spec = training.spec.model_dump(mode="json", exclude={"suspend"})
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


async def create_attempt(
    client: Client, training: ModelTraining, *, attempt: int, restarts: int, settings: Settings
) -> Manifest:
    """Apply the Service (a gang's) and the Job of `attempt`, which follows `restarts`
    counted failures (kept on the Job, so a pass killed before its status patch loses no
    count); return the Job. The Job's pod template carries the run config."""
    run_config = render_run_config(training, progress_port=settings.progress_port)
    # The Job is built before anything is applied: a SpecError leaves nothing behind.
    job = build_job(training, run_config, attempt=attempt, settings=settings)
    job["metadata"].setdefault("annotations", {}).update(
        {c.ANNOTATION_SPEC_HASH: spec_hash(training), c.ANNOTATION_RESTARTS: str(restarts)}
    )
    if needs_service(training):
        await client.apply(build_service(training, attempt=attempt, settings=settings))
    return await client.apply(job)


async def reconcile_training(
    client: Client,
    body: Manifest,
    *,
    settings: Settings,
    now: datetime,
    poll_progress: bool = False,
) -> str | None:
    """Converge one ModelTraining; return its phase after this pass.

    `poll_progress` asks rank 0 for /progress; only the periodic resync does, so a burst
    of child events never waits on pods' HTTP endpoints.
    """
    meta = body["metadata"]
    current_status = body.get("status") or {}
    if current_status.get("phase") in FINAL_PHASES and current_status.get(
        "observedGeneration"
    ) == meta.get("generation"):
        return str(current_status["phase"])
    try:
        training = ModelTraining.model_validate(body)
    except ValidationError as exc:
        # The CRD's schema and CEL normally refuse such objects; an older CRD might not.
        return await refuse(client, body, problems_of(exc), now=now)
    training = without_invalid_verdict(training)
    status = training.status
    started = status is not None and (status.job_name is not None or bool(status.trials))
    # A search samples its next trials from the spec as it is now, so it is judged on every
    # pass; a started run keeps the spec its Job was built from (SpecChangeIgnored).
    judged = not started or training.spec.tuning is not None
    if judged and (problems := judge_training(training)):
        return await refuse(client, body, problems, now=now)
    try:
        if training.spec.tuning is not None:
            return await reconcile_tuning(
                client, body, training, settings=settings, now=now, poll_progress=poll_progress
            )
        return await _reconcile_run(
            client, body, training, settings=settings, now=now, poll_progress=poll_progress
        )
    except SpecError as exc:
        return await refuse(client, body, [exc.problem], now=now)


async def refuse(client: Client, body: Manifest, problems: list[Problem], *, now: datetime) -> str:
    """Write the terminal InvalidSpec status of `body`'s generation (the body may not
    parse: only its metadata and status are read) and record why, once."""
    meta = body["metadata"]
    current_status = body.get("status") or {}
    try:
        previous: ModelTrainingStatus | None = ModelTrainingStatus.model_validate(current_status)
    except ValidationError:
        previous = None  # a status the operator cannot read is replaced whole
    decision = invalid_spec_status(
        previous, problems, generation=int(meta.get("generation") or 0), now=now
    )
    new_status = decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    patch = status_patch(current_status, new_status)
    if patch is not None:
        await client.patch_training_status(meta["namespace"], meta["name"], patch)
    for event in decision.events:
        await client.event(
            owner=body, type_=event.type, reason=event.reason, message=event.message, now=now
        )
    return "Failed"


async def _reconcile_run(
    client: Client,
    body: Manifest,
    training: ModelTraining,
    *,
    settings: Settings,
    now: datetime,
    poll_progress: bool,
) -> str | None:
    """One pass over a training without tuning: its current attempt's Job and pods."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    current_status = body.get("status") or {}
    jobs = owned_by(
        await client.list_jobs(namespace, {c.LABEL_TRAINING: name}), training.metadata.uid
    )
    recorded = training.status
    attempt = max(
        [recorded.restarts + recorded.disruptions if recorded else 0, *map(job_attempt, jobs)]
    )
    job = next((j for j in jobs if job_attempt(j) == attempt), None)
    restarts = job_restarts(job) if job is not None else (recorded.restarts if recorded else 0)
    if job is None and (recorded.phase if recorded else None) not in FINAL_PHASES:
        job = await create_attempt(
            client, training, attempt=attempt, restarts=restarts, settings=settings
        )
    elif job is not None and bool(job["spec"].get("suspend")) != training.spec.suspend:
        await client.suspend_job(namespace, job["metadata"]["name"], suspend=training.spec.suspend)
    names = names_for(name, attempt)
    pods = (
        await client.list_pods(namespace, {c.LABEL_RUN: name, c.LABEL_ATTEMPT: str(attempt)})
        if job is not None
        else []
    )
    progress = None
    if poll_progress and pods and current_status.get("phase") == "Running":
        ip = rank0_ip(pods)
        progress = await client.progress(ip, settings.progress_port) if ip else None

    warnings: list[str] = []
    if job is not None and not pods and not training.spec.suspend:
        # Pods that could not be created (a ResourceQuota, a LimitRange) leave no pod to
        # look at; the Job controller says why only in Events.
        warnings = await client.job_create_failures(namespace, job["metadata"]["name"])
    decision = derive_training_status(
        training,
        Observed(
            attempt=attempt,
            restarts=restarts,
            job=job,
            pods=tuple(pods),
            progress=progress,
            job_warnings=tuple(warnings),
        ),
        now=now,
        result_grace=timedelta(seconds=settings.result_grace_seconds),
    )
    status = decision.status
    if job is not None and _spec_changed(job, training):
        status.conditions = set_condition(
            status.conditions,
            type_=c.COND_SPEC_CHANGE_IGNORED,
            status="True",
            reason=c.REASON_IMMUTABLE_FIELD,
            message=(
                f"spec changed after job {names.job} was created; the running job "
                "keeps its spec. Create a new ModelTraining to train with the change."
            ),
            observed_generation=training.metadata.generation or 0,
            now=now,
        )
    if decision.replace_job:
        # The phase machine decided, and counted the failure or the disruption in status.
        # The next attempt first: if building it fails (a SpecError after a spec edit), the
        # failed Job stays, and the pass after the fix counts and replaces it again.
        await create_attempt(
            client, training, attempt=attempt + 1, restarts=status.restarts, settings=settings
        )
        if job is not None:
            await client.delete_job(namespace, job["metadata"]["name"])
    new_status = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    patch = status_patch(current_status, new_status)
    if patch is not None:
        await client.patch_training_status(namespace, name, patch)
    for event in decision.events:
        await client.event(
            owner=body, type_=event.type, reason=event.reason, message=event.message, now=now
        )
    return status.phase


def _spec_changed(job: Manifest, training: ModelTraining) -> bool:
    recorded = job["metadata"].get("annotations", {}).get(c.ANNOTATION_SPEC_HASH)
    return recorded is not None and recorded != spec_hash(training)
