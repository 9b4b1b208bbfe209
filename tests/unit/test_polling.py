"""How often a deployment's Serve state is read: fast while it moves, is not Ready or
works; doubling to the slow period at rest; a pass queued on a change or when its load
measurement is due; never more reads in flight than the cap."""

from __future__ import annotations

import asyncio

from modelplane_operator.polling import (
    ACTIVE_S,
    FAST_S,
    LOAD_ACTIVE_S,
    LOAD_IDLE_S,
    REST_READS_PER_S,
    SLOW_FLOOR_S,
    Polled,
    Poller,
)
from modelplane_operator.status.serving import ServeState

ONE = ServeState(status="RUNNING", target_replicas=1, running_replicas=1, listed_replicas=1)
TWO = ServeState(status="RUNNING", target_replicas=2, running_replicas=1, listed_replicas=2)


def at_rest(now: float = 1000.0) -> Polled:
    polled = Polled(seen=ONE)
    polled.after_pass(ready=True, busy=False, now=now)
    return polled


def test_a_ready_idle_deployment_slows_down_to_the_slow_period() -> None:
    polled = at_rest()
    now = 1000.0
    intervals = []
    for _ in range(6):
        now = polled.due
        polled.after_read(ONE, now, slow=5.0)
        intervals.append(polled.interval)
    assert intervals == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_the_period_at_rest_stretches_so_many_deployments_stay_within_a_read_budget() -> None:
    async def read(key: tuple[str, str], polled: Polled) -> ServeState | None:
        return None

    poller = Poller(read, lambda _: None)
    for i in range(10):
        poller.track(("ml", f"d{i}"))
    assert poller.slow_s() == SLOW_FLOOR_S  # a few deployments: read at rest every second
    for i in range(10, 200):
        poller.track(("ml", f"d{i}"))
    assert poller.slow_s() == 200 / REST_READS_PER_S  # 200 at rest: 40 reads a second


def test_a_change_is_queued_and_read_fast_for_a_while() -> None:
    polled = at_rest()
    for _ in range(5):
        polled.after_read(ONE, polled.due)
    now = polled.due
    assert polled.after_read(TWO, now)  # the target moved: a pass
    assert polled.interval == FAST_S
    polled.after_pass(ready=True, busy=False, now=now + 0.1)
    assert not polled.after_read(TWO, now + 1)  # no change, load not due yet
    assert polled.interval == FAST_S  # still inside the active window
    polled.after_read(TWO, now + ACTIVE_S + 1)
    assert polled.interval == 2 * FAST_S


def test_a_busy_or_unready_deployment_is_read_fast_and_its_load_every_few_seconds() -> None:
    busy = Polled(seen=ONE)
    busy.after_pass(ready=True, busy=True, now=0.0)
    unready = Polled(seen=ONE)
    unready.after_pass(ready=False, busy=False, now=0.0)
    for polled in (busy, unready):
        wanted = [polled.after_read(ONE, t) for t in (100.0, 100.5, 101.0)]
        assert polled.interval == FAST_S
        assert wanted == [True, True, True]  # load due: no pass since t=0
        polled.after_pass(ready=polled.ready, busy=polled.busy, now=101.0)
        assert not polled.after_read(ONE, 101.0 + LOAD_ACTIVE_S - 0.1)
        assert polled.after_read(ONE, 101.0 + LOAD_ACTIVE_S)


def test_an_idle_deployments_load_is_measured_rarely() -> None:
    polled = at_rest(now=0.0)
    assert not polled.after_read(ONE, LOAD_IDLE_S - 1)
    assert polled.after_read(ONE, LOAD_IDLE_S)


def test_reads_in_flight_never_exceed_the_cap_and_a_forgotten_deployment_is_not_read() -> None:
    in_flight = 0
    peak = 0
    queued: list[tuple[str, str]] = []

    async def read(key: tuple[str, str], polled: Polled) -> ServeState | None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return ONE

    async def body() -> Poller:
        poller = Poller(read, queued.append, concurrency=4)
        for i in range(40):
            poller.track(("ml", f"d{i}"))
        poller.forget(("ml", "d0"))
        poller.tick()
        await asyncio.sleep(0.4)
        return poller

    poller = asyncio.run(body())
    assert peak == 4
    assert poller.reads == 39
    assert sorted(queued) == sorted(("ml", f"d{i}") for i in range(1, 40))  # first read: changed
