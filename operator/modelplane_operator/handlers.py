"""kopf wiring: watch events mark keys dirty in a work queue per kind; workers reconcile.

kopf supplies the watches, their per-object serialisation and batching of events, peering,
and in-memory indexes of the children (`watchcache`); it starts no handler before every
index holds its initial listing. What kopf lacks is written here and in `workqueue`: an
event of a training, its Job or one of its Pods only marks the training's key dirty;
16 workers per kind run one pass per key at a time, a key dirtied during its pass runs
once more after it, a pass that raises is retried with a doubling backoff (1 s up to
5 minutes; a new generation of the spec cuts it short), and a resource's queue entry,
poll state, load series and backoff are dropped when it is deleted.

Trainings: events drive the passes. A Running training is also passed on a timer that
polls rank 0's /progress, every `PROGRESS_S` or slower so that all running trainings
together are polled at most `PROGRESS_RATE` times a second (a poll holds a worker up
to its 1 s timeout, so polls that time out take at most 10 of the 16 workers); every
`RESYNC_S` each unfinished training with nothing queued is passed once more, a safety
net for a missed event. A training that ends (Succeeded, or Failed, InvalidSpec
included) leaves both, and its later events cost one GET that returns before any log
line or write.

Deployments: events of the ModelDeployment, its Ray Deployments and its pods drive the
passes; `polling.Poller` reads each one's Serve state at a period that adapts (fast while
it moves or works, slow at rest, a cap on reads in flight) and queues a pass when it
changed or its load measurement (`status.load`, the request counters kept in memory
between passes: a restarted operator measures afresh) is due.

Every pass reads its resource afresh with a GET (an event's body may be older than what
the pass before it wrote); children come from the watch indexes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from modelplane_operator import constants as c
from modelplane_operator import observability as obs
from modelplane_operator.builders.serving import TOKEN_KEY, names_for
from modelplane_operator.client import Client
from modelplane_operator.dashboard import Dashboard
from modelplane_operator.polling import READ_TIMEOUT_S, Polled, Poller
from modelplane_operator.reconcile.serving import reconcile_deployment
from modelplane_operator.reconcile.training import reconcile_training
from modelplane_operator.serve_metrics import LoadTracker, fetch_metrics
from modelplane_operator.settings import Settings
from modelplane_operator.status.serving import ServeState
from modelplane_operator.watchcache import WatchCache, keys_of
from modelplane_operator.workqueue import Key, WorkQueue

log = logging.getLogger("modelplane.operator")
WORKERS = 16
"""Passes in flight at once, per kind."""
PROGRESS_S = 5.0
PROGRESS_RATE = 10.0
RESYNC_S = 60.0
TOKEN_RETRY_S = 5.0
"""A deployment without a token yet (no cluster) is not asked for it more often."""
PROGRESS = "progress"
"""The flag of a pass that polls rank 0's /progress."""
Manifest = dict[str, Any]


@dataclass
class State:
    """What the handlers share: the client, settings, queues and per-resource memory."""

    client: Client = field(default_factory=lambda: Client(cache=WatchCache()))
    settings: Settings = field(default_factory=Settings.from_environ)
    unfinished: set[Key] = field(default_factory=set)
    """Trainings not Succeeded or Failed: the resync passes them."""
    running: set[Key] = field(default_factory=set)
    """Trainings Running: their progress is polled."""
    generations: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """(kind, namespace, name) -> the generation its last event carried."""
    http: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self.trainings = WorkQueue(
            "ModelTraining",
            training_pass,
            workers=WORKERS,
            on_drop=lambda key: _forget_training(self, key),
        )
        self.deployments = WorkQueue(
            "ModelDeployment",
            deployment_pass,
            workers=WORKERS,
            on_drop=lambda key: _forget_deployment(self, key),
        )
        self.load = LoadTracker(self.metrics)
        """Each deployment's request counters between passes, for `status.load`."""
        self.poller = Poller(self.read_serve, self.deployments.add)

    def session(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        return self.http

    def dashboard(self, url: str, token: str) -> Dashboard:
        return Dashboard(url, token, self.session())

    async def metrics(self, url: str) -> str | None:
        return await fetch_metrics(self.session(), url)

    async def read_serve(self, key: Key, polled: Polled) -> ServeState | None:
        """The poller's read of one deployment's Serve state."""
        namespace, name = key
        names = names_for(name)
        if polled.token is None:
            now = time.monotonic()
            if now - polled.token_read_at < TOKEN_RETRY_S:
                return None
            polled.token_read_at = now
            polled.token = await self.client.get_secret_value(namespace, names.secret, TOKEN_KEY)
            if polled.token is None:
                return None  # no cluster yet: its pass creates one
        url = self.settings.dashboard_url.format(head=names.head_service, namespace=namespace)
        dashboard = self.dashboard(url, polled.token)
        serve = await dashboard.application(name, timeout=READ_TIMEOUT_S)
        if dashboard.status in (401, 403):
            polled.token = None  # read it again: the Secret changed
        return serve

    def progress_after(self) -> float:
        """Seconds until a running training's next /progress poll."""
        return max(PROGRESS_S, len(self.running) / PROGRESS_RATE)

    def spec_changed(self, kind: str, meta: Manifest) -> bool:
        """Whether an event carries a new generation (the user changed the spec)."""
        key = (kind, meta["namespace"], meta["name"])
        generation = meta.get("generation")
        before = self.generations.get(key)
        if generation is not None:
            self.generations[key] = generation
        return before is not None and generation != before


STATE: dict[str, Any] = {}


def _state() -> State:
    state: State = STATE["state"]
    return state


async def training_pass(key: Key, flags: frozenset[str]) -> None:
    state = _state()
    namespace, name = key
    body = await state.client.get_training(namespace, name)
    if body is None:
        _forget_training(state, key)
        return
    with obs.reconciling(c.KIND_TRAINING, namespace, name):
        try:
            phase = await reconcile_training(
                state.client,
                body,
                settings=state.settings,
                now=datetime.now(UTC),
                poll_progress=PROGRESS in flags,
            )
        except Exception:
            obs.failed(c.KIND_TRAINING)
            state.unfinished.add(key)
            raise
    obs.record_phase(c.KIND_TRAINING, namespace, name, phase)
    if phase in ("Succeeded", "Failed"):
        if key in state.unfinished:
            _nudge_waiting_deployments(state, namespace)
        state.unfinished.discard(key)
        state.running.discard(key)
        state.trainings.cancel_timer(key)  # its progress poll: 1,000 of them would idle busy
        return
    state.unfinished.add(key)
    if phase == "Running":
        state.running.add(key)
        state.trainings.add(key, PROGRESS, after=state.progress_after())
    else:
        state.running.discard(key)


async def deployment_pass(key: Key, flags: frozenset[str]) -> None:
    state = _state()
    namespace, name = key
    body = await state.client.get_model_deployment(namespace, name)
    if body is None:
        _forget_deployment(state, key)
        return
    polled = state.poller.track(key)
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
            raise
    measured = state.load.deployments.get(key)
    load = measured.load if measured is not None else None
    busy = load is not None and bool(
        load.ongoing_requests or load.requests_per_second or load.running_sequences
    )
    polled.after_pass(ready=phase == "Ready", busy=busy, now=time.monotonic())
    obs.record_phase(c.KIND_DEPLOYMENT, namespace, name, phase)


def _nudge_waiting_deployments(state: State, namespace: str) -> None:
    """A training just ended: the namespace's deployments that are not Ready (one may
    wait for this training's model) get a pass now rather than at their next poll."""
    for key, polled in list(state.poller.deployments.items()):
        if key[0] == namespace and not polled.ready:
            state.deployments.add(key)


def _forget_training(state: State, key: Key) -> None:
    state.trainings.drop(key)
    state.unfinished.discard(key)
    state.running.discard(key)
    state.generations.pop((c.KIND_TRAINING, *key), None)
    obs.record_phase(c.KIND_TRAINING, *key, None)


def _forget_deployment(state: State, key: Key) -> None:
    state.deployments.drop(key)
    state.poller.forget(key)
    state.load.forget(key)
    state.generations.pop((c.KIND_DEPLOYMENT, *key), None)
    obs.record_phase(c.KIND_DEPLOYMENT, *key, None)


async def _resync() -> None:
    """The safety net: pass every unfinished training with nothing queued."""
    while True:
        await asyncio.sleep(RESYNC_S)
        state = _state()
        for key in list(state.unfinished):
            if not state.trainings.waiting(key):
                state.trainings.add(key)


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
    state = State()
    STATE["state"] = state
    state.trainings.start()
    state.deployments.start()
    loop = asyncio.get_running_loop()
    STATE["tasks"] = [loop.create_task(_resync()), loop.create_task(state.poller.run())]


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in STATE.pop("tasks", []):
        task.cancel()
    state = _state()
    await state.poller.stop()
    await state.trainings.stop()
    await state.deployments.stop()
    if state.http is not None:
        await state.http.close()
    await state.client.close()


# The watch indexes (kopf names each after its function): what the passes read instead
# of listing children. managedFields are left out: they are most of an object's size.


def _indexed(body: kopf.Body) -> dict[Any, Manifest]:
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    labels = meta.get("labels") or {}
    return keys_of(meta["namespace"], meta["name"], labels, {**body, "metadata": meta})


@kopf.index("batch", "v1", "jobs", labels={c.LABEL_COMPONENT: "training"})
async def training_jobs(body: kopf.Body, **_: Any) -> Any:
    return _indexed(body)


@kopf.index("", "v1", "pods", labels={c.LABEL_COMPONENT: "training"})
async def training_pods(body: kopf.Body, **_: Any) -> Any:
    return _indexed(body)


@kopf.index("", "v1", "pods", labels={c.LABEL_COMPONENT: "serving"})
async def serving_pods(body: kopf.Body, **_: Any) -> Any:
    return _indexed(body)


@kopf.index("apps", "v1", "deployments", labels={c.LABEL_COMPONENT: "serving"})
async def serving_deployments(body: kopf.Body, **_: Any) -> Any:
    return _indexed(body)


def _bound(kwargs: dict[str, Any]) -> State:
    """The state, with the watch indexes from a handler's arguments."""
    state = _state()
    if state.client.cache is not None:
        state.client.cache.bind(kwargs)
    return state


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL_TRAINING)
async def training_event(body: kopf.Body, **kwargs: Any) -> None:
    state = _bound(kwargs)
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if kwargs.get("type") == "DELETED":
        _forget_training(state, key)
        return
    state.trainings.add(key, force=state.spec_changed(c.KIND_TRAINING, meta))


@kopf.on.event("batch", "v1", "jobs", labels={c.LABEL_COMPONENT: "training"})
async def job_event(body: kopf.Body, **kwargs: Any) -> None:
    state = _bound(kwargs)
    _gone_child(state, "jobs", body, kwargs.get("type"))
    _child_event(state.trainings, body, c.LABEL_TRAINING)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_COMPONENT: "training"})
async def pod_event(body: kopf.Body, **kwargs: Any) -> None:
    _child_event(_bound(kwargs).trainings, body, c.LABEL_TRAINING)


def _gone_child(state: State, kind: str, body: kopf.Body, type_: str | None) -> None:
    """A deleted child: the copy the operator applied no longer stands in for it."""
    if type_ == "DELETED" and state.client.cache is not None:
        meta = body["metadata"]
        state.client.cache.gone(kind, meta["namespace"], meta["name"])


def _child_event(queue: WorkQueue, body: kopf.Body, label: str) -> None:
    owner = body["metadata"].get("labels", {}).get(label)
    if owner:
        queue.add((body["metadata"]["namespace"], owner))


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL_DEPLOYMENT)
async def deployment_event(body: kopf.Body, **kwargs: Any) -> None:
    state = _bound(kwargs)
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if kwargs.get("type") == "DELETED":
        _forget_deployment(state, key)
        return
    state.poller.track(key)
    state.deployments.add(key, force=state.spec_changed(c.KIND_DEPLOYMENT, meta))


@kopf.on.event("apps", "v1", "deployments", labels={c.LABEL_COMPONENT: "serving"})
async def ray_deployments_event(body: kopf.Body, **kwargs: Any) -> None:
    state = _bound(kwargs)
    _gone_child(state, "deployments", body, kwargs.get("type"))
    _child_event(state.deployments, body, c.LABEL_DEPLOYMENT)


@kopf.on.event("", "v1", "pods", labels={c.LABEL_COMPONENT: "serving"})
async def ray_pods_event(body: kopf.Body, **kwargs: Any) -> None:
    _child_event(_bound(kwargs).deployments, body, c.LABEL_DEPLOYMENT)
