"""The work queue: events coalesce per key, one pass per key at a time, an event during a
pass is not lost, failures back off (doubling, capped) and successes clear them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from modelplane_operator.workqueue import Key, WorkQueue, backoff_seconds

A: Key = ("ml", "a")
B: Key = ("ml", "b")


class Recorder:
    """A pass that records (key, flags, when) and runs what the test asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Key, frozenset[str]]] = []
        self.times: list[float] = []
        self.running: set[Key] = set()
        self.overlaps = 0
        self.behaviour: Callable[[Key, int], Awaitable[None]] | None = None

    async def __call__(self, key: Key, flags: frozenset[str]) -> None:
        if key in self.running:
            self.overlaps += 1
        self.running.add(key)
        self.calls.append((key, flags))
        self.times.append(asyncio.get_running_loop().time())
        try:
            if self.behaviour is not None:
                await self.behaviour(key, len(self.calls))
            else:
                await asyncio.sleep(0)
        finally:
            self.running.discard(key)


def run(body: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(body())


async def settle(queue: WorkQueue, seconds: float = 0.05) -> None:
    """Long enough for every queued pass to run."""
    await asyncio.sleep(seconds)


def test_many_events_before_a_worker_takes_the_key_make_one_pass() -> None:
    work = Recorder()

    async def body() -> None:
        queue = WorkQueue("t", work, workers=2)
        for _ in range(100):
            queue.add(A)
        queue.add(B)
        queue.start()
        await settle(queue)
        await queue.stop()

    run(body)
    assert sorted(k for k, _ in work.calls) == [A, B]


def test_an_event_during_a_pass_runs_exactly_one_more_pass_after_it() -> None:
    work = Recorder()

    async def body() -> None:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow_first(key: Key, n: int) -> None:
            if n == 1:
                started.set()
                await release.wait()

        work.behaviour = slow_first
        queue = WorkQueue("t", work, workers=4)
        queue.start()
        queue.add(A)
        await started.wait()
        for _ in range(20):  # the world changes while the first pass runs
            queue.add(A, "progress")
        await asyncio.sleep(0.02)
        assert len(work.calls) == 1  # never two passes of one key at once
        release.set()
        await settle(queue)
        await queue.stop()

    run(body)
    assert work.calls == [(A, frozenset()), (A, frozenset({"progress"}))]
    assert work.overlaps == 0


def test_a_failing_pass_is_retried_with_doubling_backoff_and_a_success_clears_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    work = Recorder()

    async def fail_three_times(key: Key, n: int) -> None:
        if n <= 3:
            raise RuntimeError("the API server said no")

    work.behaviour = fail_three_times

    async def body() -> WorkQueue:
        queue = WorkQueue("t", work, workers=1, backoff_first=0.05, backoff_max=10)
        queue.start()
        queue.add(A, "progress")
        await asyncio.sleep(0.01)
        for _ in range(10):  # plain events during the backoff wait for it
            queue.add(A)
        await asyncio.sleep(0.6)
        await queue.stop()
        return queue

    with caplog.at_level(logging.ERROR, logger="modelplane.queue"):
        queue = run(body)
    assert len(work.calls) == 4
    gaps = [b - a for a, b in zip(work.times, work.times[1:], strict=False)]
    for gap, expected in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert expected <= gap < expected + 0.1
    assert all("progress" in flags for _, flags in work.calls)  # carried by the retries
    assert queue.failures(A) == 0
    assert len([r for r in caplog.records if "reconcile failed" in r.message]) == 3


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_seconds(n, first=1, cap=10) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_a_forced_add_cuts_a_backoff_short() -> None:
    work = Recorder()

    async def fail_first(key: Key, n: int) -> None:
        if n == 1:
            raise RuntimeError("no")

    work.behaviour = fail_first

    async def body() -> None:
        queue = WorkQueue("t", work, workers=1, backoff_first=30)
        queue.start()
        queue.add(A)
        await asyncio.sleep(0.02)
        queue.add(A)
        await asyncio.sleep(0.02)
        assert len(work.calls) == 1  # waiting out its 30 s
        queue.add(A, force=True)  # a new generation
        await asyncio.sleep(0.02)
        await queue.stop()

    run(body)
    assert len(work.calls) == 2


def test_a_timer_fires_once_and_an_event_before_it_neither_takes_its_flags_nor_moves_it() -> None:
    work = Recorder()

    async def body() -> None:
        queue = WorkQueue("t", work, workers=1)
        queue.start()
        queue.add(A, "progress", after=0.1)
        queue.add(B, "progress", after=0.05)
        queue.add(B, "progress", after=5)  # a later timer does not push the earlier one back
        await asyncio.sleep(0.02)
        assert work.calls == []
        queue.add(A)  # an event before A's timer: a pass now, without polling
        queue.add(B, "urgent", after=0.01)  # an earlier timer takes the place of B's
        await asyncio.sleep(0.2)
        await queue.stop()

    run(body)
    assert work.calls == [
        (A, frozenset()),
        (B, frozenset({"progress", "urgent"})),
        (A, frozenset({"progress"})),
    ]


def test_a_cancelled_error_from_inside_a_pass_is_a_failure_not_the_end_of_a_worker() -> None:
    work = Recorder()

    async def cancelled_once(key: Key, n: int) -> None:
        if n == 1:
            raise asyncio.CancelledError  # e.g. a shared future cancelled under the pass

    work.behaviour = cancelled_once

    async def body() -> None:
        queue = WorkQueue("t", work, workers=1, backoff_first=0.02)
        queue.start()
        queue.add(A)
        await asyncio.sleep(0.01)
        queue.add(B)
        await asyncio.sleep(0.1)
        await queue.stop()

    run(body)
    assert [k for k, _ in work.calls] == [A, B, A]  # the worker lives on; A is retried


def test_a_dropped_key_is_forgotten_and_its_pass_not_repeated() -> None:
    work = Recorder()
    forgotten: list[Key] = []

    async def body() -> WorkQueue:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(key: Key, n: int) -> None:
            started.set()
            await release.wait()
            raise RuntimeError("the resource is gone")

        work.behaviour = slow
        queue = WorkQueue("t", work, workers=1, backoff_first=0.01, on_drop=forgotten.append)
        queue.add(B, after=60)
        queue.drop(B)
        queue.start()
        queue.add(A)
        await started.wait()
        queue.add(A)
        queue.drop(A)
        release.set()
        await asyncio.sleep(0.1)
        await queue.stop()
        return queue

    queue = run(body)
    assert work.calls == [(A, frozenset())]
    assert queue.tracked() == 0
    assert forgotten == [A]  # told once its pass ended, to forget what that pass recorded


def test_keys_are_served_in_arrival_order_by_several_workers_without_overlap() -> None:
    work = Recorder()
    keys = [("ml", f"t{i}") for i in range(50)]

    async def body() -> None:
        async def brief(key: Key, n: int) -> None:
            await asyncio.sleep(0.001)

        work.behaviour = brief
        queue = WorkQueue("t", work, workers=4)
        queue.start()
        for _ in range(3):
            for key in keys:
                queue.add(key)
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        await queue.stop()

    run(body)
    seen = [k for k, _ in work.calls]
    assert set(seen) == set(keys)
    assert len(seen) <= 2 * len(keys)  # coalesced: at most the pass and one re-run
    assert seen[:4] == keys[:4]
    assert work.overlaps == 0
