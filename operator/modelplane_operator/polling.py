"""How often each ModelDeployment's Serve state is read: fast while it moves, slow at rest.

Serve's autoscaler moves its replica target on the head; nothing tells the operator, so
the operator reads it from the head's dashboard (one GET) and resizes the workers when
it changed. A fixed period costs one GET per deployment per period whether anything
happens or not (200 deployments at 1 s: 200 requests a second at rest). Here each
deployment has its own period:

- `FAST_S` while it is active: its Serve state changed in the last `ACTIVE_S`, its last
  pass did not find it Ready, or its replicas were busy at the last load measurement
  (requests in flight or answered, sequences generating). A target change of a busy
  deployment is therefore seen within `FAST_S`.
- at rest it doubles after each read that saw no change, up to the slow period: 1 s
  (`SLOW_FLOOR_S`), or longer when there are many deployments, so that those at rest
  make at most `REST_READS_PER_S` reads a second together (200 deployments: 5 s).

A read that sees a change queues a full reconcile pass (which reads the dashboard again
and acts); so does a deployment whose load measurement is due (`LOAD_ACTIVE_S` while
active, `LOAD_IDLE_S` at rest: the head's and replicas' metrics pages are the larger
reads). At most `CONCURRENCY` reads are in flight at once across all deployments. The
reads need the cluster's token: read once from its Secret, again after the head refused it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from modelplane_operator.status.serving import ServeState

log = logging.getLogger("modelplane.polling")
Key = tuple[str, str]
FAST_S = 0.5
SLOW_FLOOR_S = 1.0
REST_READS_PER_S = 40.0
ACTIVE_S = 10.0
LOAD_ACTIVE_S = 5.0
LOAD_IDLE_S = 30.0
CONCURRENCY = 16
READ_TIMEOUT_S = 1.0
"""A read that takes longer counts as unanswered: a few heads that do not answer must not
hold the places that busy deployments' fast reads need (16 places, 1 s each)."""
TICK_S = 0.05
"""How often the loop looks for reads that are due."""
Read = Callable[[Key, "Polled"], Awaitable[ServeState | None]]
"""(deployment, its poll state) -> Serve's state; None when the head did not answer."""


@dataclass
class Polled:
    """One deployment's poll state (dropped with the deployment)."""

    due: float = 0.0
    """time.monotonic() of the next read."""
    interval: float = FAST_S
    seen: ServeState | None = None
    """What the last read returned."""
    changed_at: float = float("-inf")
    passed_at: float = float("-inf")
    """When a full pass last ran (and measured the load, if it was due)."""
    ready: bool = False
    """The last pass found the deployment Ready."""
    busy: bool = False
    """The last load measurement saw work in flight or done."""
    token: str | None = None
    token_read_at: float = float("-inf")
    reading: bool = False

    def active(self, now: float) -> bool:
        return (not self.ready) or self.busy or now - self.changed_at < ACTIVE_S

    def after_read(
        self, serve: ServeState | None, now: float, *, slow: float = SLOW_FLOOR_S
    ) -> bool:
        """Take a read's result (`slow`: the period at rest); whether a full pass is wanted."""
        changed = serve != self.seen
        self.seen = serve
        if changed:
            self.changed_at = now
        active = self.active(now)
        self.interval = FAST_S if active else min(self.interval * 2, slow)
        self.due = now + self.interval
        load_due = now - self.passed_at >= (LOAD_ACTIVE_S if active else LOAD_IDLE_S)
        return changed or load_due

    def after_pass(self, *, ready: bool, busy: bool, now: float) -> None:
        """A full pass ran: it read Serve itself, so the next read can wait an interval."""
        self.ready = ready
        self.busy = busy
        self.passed_at = now
        if self.active(now):
            self.interval = FAST_S
        self.due = now + self.interval


class Poller:
    """Reads every deployment's Serve state when due; queues a pass when it changed."""

    def __init__(
        self,
        read: Read,
        enqueue: Callable[[Key], None],
        *,
        concurrency: int = CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read = read
        self.enqueue = enqueue
        self.clock = clock
        self.limit = asyncio.Semaphore(concurrency)
        self.deployments: dict[Key, Polled] = {}
        self.reads = 0
        """Reads made so far (the tests read it)."""
        self.tasks: set[asyncio.Task[None]] = set()
        """Reads in flight, cancelled by `stop`."""

    def track(self, key: Key) -> Polled:
        return self.deployments.setdefault(key, Polled(due=self.clock()))

    def forget(self, key: Key) -> None:
        self.deployments.pop(key, None)

    def slow_s(self) -> float:
        """The period at rest: the floor, stretched so that deployments at rest make at
        most REST_READS_PER_S reads a second together."""
        return max(SLOW_FLOOR_S, len(self.deployments) / REST_READS_PER_S)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()

    def tick(self) -> None:
        """Start the reads that are due (each waits for a place under the cap)."""
        now = self.clock()
        for key, polled in list(self.deployments.items()):
            if polled.due <= now and not polled.reading:
                polled.reading = True
                task = asyncio.get_running_loop().create_task(self._read(key, polled))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _read(self, key: Key, polled: Polled) -> None:
        try:
            async with self.limit:
                self.reads += 1
                serve = await self.read(key, polled)
            now = self.clock()
            if self.deployments.get(key) is polled and polled.after_read(
                serve, now, slow=self.slow_s()
            ):
                self.enqueue(key)
        except Exception:
            log.exception("%s/%s: reading Serve's state failed", *key)
            polled.due = self.clock() + self.slow_s()
        finally:
            polled.reading = False
