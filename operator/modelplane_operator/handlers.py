"""kopf wiring: thin handlers that all call the same reconcile function.

Only watch-event handlers are used, so kopf persists nothing on the resources (no
annotations, no finalizers, nothing in status): the reconcile is level-based and needs
no memory of what it did. A resync loop re-runs every unfinished training every few
seconds; that is also when rank 0's /progress is polled. A second loop re-runs every
ModelDeployment each second: the scaling loop (read Serve's target, size the workers;
every few seconds also its load from Ray's metrics, whose request counters are the one
thing kept in memory between passes: a restarted operator measures afresh).

A training that ends (Succeeded, or Failed, InvalidSpec included) leaves the resync set,
and its later events return before any log line or write. A pass that raises for any
other reason (the API server, a network error) is retried with a per-resource backoff
(5 s doubling to 5 minutes), logged once per step; a change to the resource (a new
generation) is tried at once. The backoff is in memory: a restarted operator tries afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from modelplane_operator import constants as c
from modelplane_operator import observability as obs
from modelplane_operator.client import Client
from modelplane_operator.dashboard import Dashboard
from modelplane_operator.reconcile.serving import reconcile_deployment
from modelplane_operator.reconcile.training import reconcile_training
from modelplane_operator.serve_metrics import LoadTracker, fetch_metrics
from modelplane_operator.settings import Settings

log = logging.getLogger("modelplane.operator")
RESYNC_SECONDS = 5.0
SCALING_SECONDS = 1.0
RESYNC_CONCURRENCY = 16
BACKOFF_FIRST_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class Backoff:
    """A resource whose passes keep raising: when to try again, and for which spec."""

    failures: int
    until: float
    """time.monotonic() before which no pass runs (unless the spec changes)."""
    generation: int | None

    @classmethod
    def after(cls, previous: Backoff | None, *, generation: int | None, now: float) -> Backoff:
        failures = previous.failures + 1 if previous is not None else 1
        delay = min(BACKOFF_FIRST_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS)
        return cls(failures=failures, until=now + delay, generation=generation)

    def holds(self, *, generation: int | None, now: float) -> bool:
        """Whether a pass should wait; a new generation (the user changed the spec) not."""
        changed = generation is not None and generation != self.generation
        return now < self.until and not changed


class State:
    """What the handlers share: the client, settings, per-resource locks, open work."""

    def __init__(self) -> None:
        self.client = Client()
        self.settings = Settings.from_environ()
        self.locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.unfinished: set[tuple[str, str]] = set()
        self.backoff: dict[tuple[str, str], Backoff] = {}
        """Resources whose last pass raised (a training by (namespace, name), a deployment
        by (namespace, "ModelDeployment/<name>")); cleared by a pass that does not."""
        self.deployments: set[tuple[str, str]] = set()
        """Every ModelDeployment: each resync reads its Serve state (serving never ends)."""
        self.http: aiohttp.ClientSession | None = None
        self.load = LoadTracker(self.metrics)
        """Each deployment's request counters between passes, for `status.load`."""

    def session(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        return self.http

    def dashboard(self, url: str, token: str) -> Dashboard:
        return Dashboard(url, token, self.session())

    async def metrics(self, url: str) -> str | None:
        return await fetch_metrics(self.session(), url)


STATE: dict[str, State] = {}


def _state() -> State:
    return STATE["state"]


def _back_off(
    state: State,
    key: tuple[str, str],
    waiting: Backoff | None,
    *,
    generation: int | None,
    what: str,
) -> None:
    """After a pass that raised (inside its `except`): the resource's next backoff step,
    and one log line with the traceback for it."""
    backoff = Backoff.after(waiting, generation=generation, now=time.monotonic())
    state.backoff[key] = backoff
    log.exception(
        "%s: reconcile failed (%d in a row); retrying in %.0f s",
        what,
        backoff.failures,
        backoff.until - time.monotonic(),
    )


async def run_training(
    namespace: str,
    name: str,
    *,
    generation: int | None = None,
    poll_progress: bool = False,
) -> None:
    """Reconcile one training, one pass at a time per resource.

    Every pass reads the resource afresh, inside the lock: an event's body may be older
    than what the pass before it saw (the event waited for the lock), and a pass on an
    old spec would undo the newer one's work (suspend a Job the user just resumed).
    `generation`: the event's, so a changed spec skips the backoff without a read."""
    state = _state()
    key = (namespace, name)
    async with state.locks[key]:
        waiting = state.backoff.get(key)
        if waiting is not None and waiting.holds(generation=generation, now=time.monotonic()):
            return  # a child event or the resync, before the backoff's end: not even a GET
        body = await state.client.get_training(namespace, name)
        if body is None:
            state.unfinished.discard(key)
            state.backoff.pop(key, None)
            obs.record_phase(c.KIND_TRAINING, namespace, name, None)
            return
        generation = body["metadata"].get("generation")
        with obs.reconciling(c.KIND_TRAINING, namespace, name):
            try:
                phase = await reconcile_training(
                    state.client,
                    body,
                    settings=state.settings,
                    now=datetime.now(UTC),
                    poll_progress=poll_progress,
                )
            except Exception:
                obs.failed(c.KIND_TRAINING)
                _back_off(state, key, waiting, generation=generation, what=f"{namespace}/{name}")
                state.unfinished.add(key)
                return
        state.backoff.pop(key, None)
        obs.record_phase(c.KIND_TRAINING, namespace, name, phase)
        if phase in ("Succeeded", "Failed"):
            state.unfinished.discard(key)
        else:
            state.unfinished.add(key)


async def run_deployment(namespace: str, name: str, *, generation: int | None = None) -> None:
    """Reconcile one deployment, one pass at a time per resource, reading it afresh inside
    the lock (an event's body may predate the status the pass before it wrote). A pass
    that raises backs off as a training's does, so a failure is not logged every second
    by the scaling loop; `generation`: the event's, so a changed spec skips the backoff."""
    state = _state()
    key = (namespace, name)
    lock_key = (namespace, f"{c.KIND_DEPLOYMENT}/{name}")
    async with state.locks[lock_key]:
        waiting = state.backoff.get(lock_key)
        if waiting is not None and waiting.holds(generation=generation, now=time.monotonic()):
            return
        body = await state.client.get_model_deployment(*key)
        if body is None:
            state.deployments.discard(key)
            state.backoff.pop(lock_key, None)
            state.load.forget(key)
            obs.record_phase(c.KIND_DEPLOYMENT, namespace, name, None)
            return
        state.deployments.add(key)
        generation = body["metadata"].get("generation")
        with obs.reconciling(c.KIND_DEPLOYMENT, namespace, name):
            try:
                phase = await reconcile_deployment(
                    state.client,
                    body,
                    settings=state.settings,
                    now=datetime.now(UTC),
                    dashboard_for=state.dashboard,
                    load=state.load,
                )
            except Exception:
                obs.failed(c.KIND_DEPLOYMENT)
                _back_off(
                    state, lock_key, waiting, generation=generation, what=f"{namespace}/{name}"
                )
                return
        state.backoff.pop(lock_key, None)
        obs.record_phase(c.KIND_DEPLOYMENT, namespace, name, phase)


async def _resync() -> None:
    """Re-run every unfinished training every few seconds, polling progress."""
    limit = asyncio.Semaphore(RESYNC_CONCURRENCY)

    async def one(namespace: str, name: str) -> None:
        async with limit:
            await run_training(namespace, name, poll_progress=True)

    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        await asyncio.gather(*(one(ns, n) for ns, n in list(_state().unfinished)))


async def _scaling_loop() -> None:
    """Re-run every deployment each second: its pass reads Serve's replica target from
    the head (one GET) and resizes the workers, so the decision follows Serve within
    about a second; a deployment waiting for its training proceeds here too."""
    limit = asyncio.Semaphore(RESYNC_CONCURRENCY)

    async def one(namespace: str, name: str) -> None:
        async with limit:
            await run_deployment(namespace, name)

    while True:
        await asyncio.sleep(SCALING_SECONDS)
        await asyncio.gather(*(one(ns, n) for ns, n in list(_state().deployments)))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Peering (several replicas, one reconciling) is chosen by `kopf.run`'s arguments in
    # __main__; its priority ranks the oldest instance first (a restarted one joins as the
    # standby), with a random tie-breaker.
    settings.posting.enabled = False  # the reconcile records its own Events
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=c.ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    STATE["state"] = State()
    loop = asyncio.get_running_loop()
    STATE["resync"] = loop.create_task(_resync())  # type: ignore[assignment]
    STATE["scaling"] = loop.create_task(_scaling_loop())  # type: ignore[assignment]


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for key in ("resync", "scaling"):
        task = STATE.pop(key, None)
        if isinstance(task, asyncio.Task):
            task.cancel()
    state = _state()
    if state.http is not None:
        await state.http.close()
    await state.client.close()


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL_TRAINING)
async def training_event(body: kopf.Body, **kwargs: Any) -> None:
    meta = body["metadata"]
    if kwargs.get("type") == "DELETED":
        _state().unfinished.discard((meta["namespace"], meta["name"]))
        _state().backoff.pop((meta["namespace"], meta["name"]), None)
        obs.record_phase(c.KIND_TRAINING, meta["namespace"], meta["name"], None)
        return
    await run_training(meta["namespace"], meta["name"], generation=meta.get("generation"))


@kopf.on.event("batch", "v1", "jobs", labels={c.LABEL_COMPONENT: "training"})
async def job_event(body: kopf.Body, **_: Any) -> None:
    await _child_event(body)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_COMPONENT: "training"})
async def pod_event(body: kopf.Body, **_: Any) -> None:
    await _child_event(body)


async def _child_event(body: kopf.Body) -> None:
    owner = body["metadata"].get("labels", {}).get(c.LABEL_TRAINING)
    if owner:
        await run_training(body["metadata"]["namespace"], owner)


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL_DEPLOYMENT)
async def deployment_event(body: kopf.Body, **kwargs: Any) -> None:
    meta = body["metadata"]
    if kwargs.get("type") == "DELETED":
        _state().deployments.discard((meta["namespace"], meta["name"]))
        _state().load.forget((meta["namespace"], meta["name"]))
        _state().backoff.pop((meta["namespace"], f"{c.KIND_DEPLOYMENT}/{meta['name']}"), None)
        obs.record_phase(c.KIND_DEPLOYMENT, meta["namespace"], meta["name"], None)
        return
    await run_deployment(meta["namespace"], meta["name"], generation=meta.get("generation"))


@kopf.on.event("apps", "v1", "deployments", labels={c.LABEL_COMPONENT: "serving"})
async def ray_pods_event(body: kopf.Body, **_: Any) -> None:
    owner = body["metadata"].get("labels", {}).get(c.LABEL_DEPLOYMENT)
    if owner:
        await run_deployment(body["metadata"]["namespace"], owner)
