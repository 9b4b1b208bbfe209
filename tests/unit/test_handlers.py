"""The handlers around the queues: every pass reads its resource afresh, a failing pass
waits out its backoff however often events and polls ask, a new spec cuts it short, a
Running training is polled for progress on a timer that stretches with their number,
and a deleted resource leaves nothing behind in memory. The watch cache answers the
client's lists and gets from kopf's indexes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator import handlers
from modelplane_operator import observability as obs
from modelplane_operator.client import Client
from modelplane_operator.handlers import PROGRESS, State
from modelplane_operator.reconcile import owned_by
from modelplane_operator.watchcache import WatchCache, keys_of

KEY = ("ml", "d")
BODY: dict[str, Any] = {
    "metadata": {"namespace": "ml", "name": "d", "generation": 1},
    "status": {"phase": "X"},
}


class ApiClient:
    """The resource GETs a pass makes; nothing else is reached in these tests."""

    def __init__(self, body: dict[str, Any] | None) -> None:
        self.body = body
        self.gets = 0
        self.cache = None

    async def get_model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        return self.body

    async def get_training(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        return self.body

    async def get_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return "token"


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> State:
    fake = State(client=ApiClient(BODY))  # type: ignore[arg-type]
    monkeypatch.setitem(handlers.STATE, "state", fake)
    monkeypatch.setattr(obs.PHASES, "phases", {})  # the phases these passes record
    return fake


def event(body: dict[str, Any], type_: str | None = "MODIFIED") -> dict[str, Any]:
    return {"body": body, "type": type_}


async def fire(handler: Any, **kwargs: Any) -> None:
    """Call a kopf handler as kopf would (its decorator hides the coroutine's type)."""
    await handler(**kwargs)


def test_a_failing_deployment_is_retried_on_its_backoff_not_on_every_event_or_poll(
    state: State, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    passes = 0

    async def broken(*_: Any, **__: Any) -> str:
        nonlocal passes
        passes += 1
        raise RuntimeError("the API server said no")

    monkeypatch.setattr(handlers, "reconcile_deployment", broken)

    async def for_a_while() -> None:
        state.deployments.start()
        await fire(handlers.deployment_event, **event(BODY))
        for _ in range(10):  # child events and polls, well inside the first 1 s step
            await asyncio.sleep(0.03)
            state.deployments.add(KEY)
        assert passes == 1
        # A changed spec is tried at once.
        await fire(
            handlers.deployment_event,
            **event({**BODY, "metadata": {**BODY["metadata"], "generation": 2}}),
        )
        await asyncio.sleep(0.05)
        await state.deployments.stop()

    with caplog.at_level(logging.ERROR, logger="modelplane.queue"):
        asyncio.run(for_a_while())
    assert passes == 2
    assert len([r for r in caplog.records if "reconcile failed" in r.message]) == 2


def test_every_deployment_pass_reads_the_resource_afresh(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    async def record(client: Any, body: dict[str, Any], **_: Any) -> str:
        seen.append(body)
        return "Ready"

    monkeypatch.setattr(handlers, "reconcile_deployment", record)
    stale = {**BODY, "status": {"phase": "older"}}
    asyncio.run(handlers.deployment_pass(KEY, frozenset()))
    asyncio.run(handlers.deployment_pass(KEY, frozenset()))
    assert isinstance(state.client, ApiClient)
    assert state.client.gets == 2
    assert seen == [BODY, BODY] != [stale]
    assert state.poller.deployments[KEY].ready


def test_a_deleted_deployment_leaves_nothing_in_memory(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def ready(*_: Any, **__: Any) -> str:
        return "Ready"

    monkeypatch.setattr(handlers, "reconcile_deployment", ready)

    async def lifetime() -> None:
        await fire(handlers.deployment_event, **event(BODY))
        await handlers.deployment_pass(KEY, frozenset())
        state.load.record(KEY, application="d", head=None, replicas=[])
        state.deployments.add(KEY, after=60)
        await fire(handlers.deployment_event, **event(BODY, "DELETED"))

    asyncio.run(lifetime())
    assert state.poller.deployments == {}
    assert state.load.deployments == {}
    assert state.deployments.tracked() == 0
    assert state.generations == {}


def test_a_running_training_is_polled_for_progress_on_a_timer_that_stretches_with_their_number(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls: list[bool] = []

    async def running(*_: Any, poll_progress: bool, **__: Any) -> str:
        polls.append(poll_progress)
        return "Running"

    monkeypatch.setattr(handlers, "reconcile_training", running)
    monkeypatch.setattr(handlers, "PROGRESS_S", 0.05)
    monkeypatch.setattr(handlers, "PROGRESS_RATE", 100.0)

    async def body() -> None:
        state.trainings.start()
        state.trainings.add(KEY)
        await asyncio.sleep(0.18)
        await state.trainings.stop()

    asyncio.run(body())
    assert polls[0] is False  # the event's pass does not wait on the pod's endpoint
    assert polls[1:]
    assert all(polls[1:])
    assert 2 <= len(polls) <= 5
    assert state.running == {KEY}
    assert state.progress_after() == 0.05
    state.running |= {("ml", f"t{i}") for i in range(999)}
    assert state.progress_after() == 10.0  # 1000 running: at most 100 polls a second


def test_a_finished_training_leaves_the_resync_and_a_deleted_one_everything(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    phases = iter(["Running", "Succeeded"])

    async def next_phase(*_: Any, **__: Any) -> str:
        return next(phases)

    monkeypatch.setattr(handlers, "reconcile_training", next_phase)

    async def body() -> None:
        await handlers.training_pass(KEY, frozenset())
        assert KEY in state.unfinished
        assert KEY in state.running
        assert state.trainings.waiting(KEY)  # its progress timer
        await handlers.training_pass(KEY, frozenset({PROGRESS}))
        assert not state.trainings.waiting(KEY)  # no more progress polls
        assert KEY not in state.unfinished
        assert KEY not in state.running
        await fire(handlers.training_event, **event(BODY, "DELETED"))

    asyncio.run(body())
    assert state.trainings.tracked() == 0


def test_child_events_mark_their_owner_and_nothing_else(state: State) -> None:
    async def body() -> None:
        pod = {"metadata": {"namespace": "ml", "name": "p", "labels": {c.LABEL_TRAINING: "t"}}}
        for _ in range(5):
            await fire(handlers.pod_event, **event(pod))
        await fire(handlers.job_event, **event({"metadata": {"namespace": "ml", "name": "j"}}))

    asyncio.run(body())
    assert state.trainings.depth() == 1
    assert state.trainings.waiting(("ml", "t"))


class Index(dict[Any, list[dict[str, Any]]]):
    """What kopf's index is for the cache: key -> the objects filed under it."""

    def file(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        for key in keys_of(meta["namespace"], meta["name"], meta.get("labels", {}), obj):
            self.setdefault(key, []).append(obj)


def obj(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": name, "labels": labels}}


def test_the_client_reads_children_from_the_watch_indexes_and_never_lists() -> None:
    jobs, pods, deployments = Index(), Index(), Index()
    jobs.file(obj("a-train", **{c.LABEL_TRAINING: "a", c.LABEL_RUN: "a"}))
    jobs.file(obj("b-train", **{c.LABEL_TRAINING: "b", c.LABEL_RUN: "b"}))
    pods.file(obj("a-0", **{c.LABEL_RUN: "a", c.LABEL_ATTEMPT: "0"}))
    pods.file(obj("a-1", **{c.LABEL_RUN: "a", c.LABEL_ATTEMPT: "1"}))
    deployments.file(obj("d-head", **{c.LABEL_DEPLOYMENT: "d"}))
    cache = WatchCache()
    cache.bind(
        {
            "training_jobs": jobs,
            "training_pods": pods,
            "serving_pods": Index(),
            "serving_deployments": deployments,
            "other": None,
        }
    )

    class NoApi:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the API was called: {name}")

    client = Client(api=NoApi(), cache=cache)  # type: ignore[arg-type]

    async def reads() -> tuple[Any, ...]:
        return (
            await client.list_jobs("ml", {c.LABEL_TRAINING: "a"}),
            await client.list_pods("ml", {c.LABEL_RUN: "a", c.LABEL_ATTEMPT: "1"}),
            await client.list_pods("ml", {c.LABEL_RUN: "c"}),
            await client.get_deployment("ml", "d-head"),
            await client.get_deployment("ml", "gone"),
            await client.list_jobs("other", {c.LABEL_TRAINING: "a"}),
        )

    a_jobs, a1_pods, none, head, gone, elsewhere = asyncio.run(reads())
    assert [j["metadata"]["name"] for j in a_jobs] == ["a-train"]
    assert [p["metadata"]["name"] for p in a1_pods] == ["a-1"]
    assert none == []
    assert gone is None
    assert elsewhere == []
    assert head is not None
    assert head["metadata"]["name"] == "d-head"
    assert (
        cache.select("jobs", "ml", {c.LABEL_COMPONENT: "training"}) is None
    )  # no owner: ask the API


def test_an_applied_job_is_read_back_until_the_watch_shows_it_or_something_newer() -> None:
    jobs = Index()
    cache = WatchCache()
    cache.bind({"training_jobs": jobs})

    class Api:
        async def apply(self, obj: Any, force: bool) -> Any:
            return obj

    client = Client(api=Api(), cache=cache)  # type: ignore[arg-type]
    labels = {c.LABEL_TRAINING: "a", c.LABEL_RUN: "a"}

    def job(version: str, suspend: bool = False) -> dict[str, Any]:
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "namespace": "ml",
                "name": "a-train",
                "labels": labels,
                "resourceVersion": version,
            },
            "spec": {"suspend": suspend, "template": {"spec": {"containers": []}}},
        }

    def seen() -> list[tuple[str, bool]]:
        found = asyncio.run(client.list_jobs("ml", {c.LABEL_TRAINING: "a"}))
        return [(j["metadata"]["resourceVersion"], j["spec"]["suspend"]) for j in found]

    asyncio.run(client.apply(job("5", suspend=True)))
    assert seen() == [("5", True)]  # the watch has not shown it yet: no second apply
    jobs.file(job("4"))  # a stale watch copy does not hide the write
    assert seen() == [("5", True)]
    jobs.clear()
    jobs.file(job("5", suspend=True))  # caught up: the copy leaves
    assert seen() == [("5", True)]
    assert cache.written == {}
    jobs.clear()
    jobs.file(job("9"))
    assert seen() == [("9", False)]


def test_a_training_that_ends_nudges_the_namespaces_deployments_that_are_not_ready(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def succeeded(*_: Any, **__: Any) -> str:
        return "Succeeded"

    monkeypatch.setattr(handlers, "reconcile_training", succeeded)

    async def body() -> None:
        waiting, ready, elsewhere = ("ml", "waits"), ("ml", "serves"), ("other", "waits")
        for key in (waiting, ready, elsewhere):
            state.poller.track(key)
        state.poller.deployments[ready].ready = True
        state.unfinished.add(KEY)
        await handlers.training_pass(KEY, frozenset())
        assert state.deployments.waiting(waiting)
        assert not state.deployments.waiting(ready)
        assert not state.deployments.waiting(elsewhere)

    asyncio.run(body())


def test_a_job_the_operator_deleted_is_hidden_until_the_watch_says_it_is_gone() -> None:
    jobs = Index()
    cache = WatchCache()
    cache.bind({"training_jobs": jobs})
    jobs.file(obj("a-train", **{c.LABEL_TRAINING: "a"}))
    cache.deleting("jobs", "ml", "a-train")
    assert cache.select("jobs", "ml", {c.LABEL_TRAINING: "a"}) == []  # not deleted twice
    jobs.clear()
    cache.gone("jobs", "ml", "a-train")
    assert cache.deleted == {}


def test_children_of_a_deleted_namesake_are_not_this_resources() -> None:
    mine = {"metadata": {"name": "a-train", "ownerReferences": [{"uid": "new"}]}}
    ghost = {"metadata": {"name": "a-train-1", "ownerReferences": [{"uid": "old"}]}}
    assert owned_by([mine, ghost], "new") == [mine]
    assert owned_by([mine, ghost], None) == [mine, ghost]
