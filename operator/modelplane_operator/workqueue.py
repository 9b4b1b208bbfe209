"""A work queue per kind, as controller-runtime's: events mark a key dirty, workers reconcile.

kopf calls a handler for every watch event and serialises them per object, but a
training's Job and Pod events are other objects: without a queue each of them would run
its own pass of the same training. Here an event only marks the owner's key dirty:

- a key is queued at most once, however many events arrive before a worker takes it;
- one pass per key at a time: a key marked dirty while its pass runs is queued once
  more when the pass ends (the pass may have read the world before the event), never
  once per event;
- a pass that raises is retried after a backoff that doubles per failure in a row, up
  to a cap; a plain `add` during that wait does not cut it short (a resource whose API
  calls fail is not retried at event rate), a forced one does (the user changed the
  spec); a pass that succeeds clears the count;
- `add(after=...)` asks for a pass no later than then (a timer: the training's progress
  poll); an earlier timer for the key stands, and a plain `add` before it fires runs a
  pass without the timer's flags and leaves the timer be (an event's pass does not poll,
  so events cannot raise the polling rate);
- `drop` forgets a key (its resource is gone): its timers, flags and failure count; a
  pass in flight for it ends, and `on_drop` runs after it, so what the pass recorded
  about the key is forgotten too.

Flags travel with a key and merge while it waits: the pass learns why it runs (the
trainings' "progress" flag asks it to poll rank 0; child events do not). Nothing here
knows about Kubernetes; keys are (namespace, name).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("modelplane.queue")
Key = tuple[str, str]
Work = Callable[[Key, frozenset[str]], Awaitable[None]]
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 300.0


def backoff_seconds(
    failures: int, *, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S
) -> float:
    """Seconds before the retry after `failures` failed passes in a row (1, 2, ...)."""
    return float(min(first * 2.0 ** max(failures - 1, 0), cap))


@dataclass
class _Timer:
    when: float
    """loop.time() at which the key is queued."""
    flags: set[str]
    hold: bool
    """A backoff: plain adds merge their flags and wait for it."""
    handle: asyncio.TimerHandle | None = field(default=None, repr=False)


class WorkQueue:
    def __init__(
        self,
        name: str,
        work: Work,
        *,
        workers: int,
        backoff_first: float = BACKOFF_FIRST_S,
        backoff_max: float = BACKOFF_MAX_S,
        on_drop: Callable[[Key], None] = lambda _: None,
    ) -> None:
        self.name = name
        self._on_drop = on_drop
        self._work = work
        self._workers = workers
        self._backoff_first = backoff_first
        self._backoff_max = backoff_max
        self._ready: deque[Key] = deque()
        self._queued: dict[Key, set[str]] = {}
        """Keys in `_ready`, with their flags."""
        self._processing: set[Key] = set()
        self._dirty: dict[Key, set[str]] = {}
        """Keys added while their pass runs: queued again when it ends."""
        self._timers: dict[Key, _Timer] = {}
        self._failures: dict[Key, int] = {}
        self._gone: set[Key] = set()
        """Keys dropped while their pass ran: no retry, no second pass."""
        self._available = asyncio.Semaphore(0)
        self._tasks: list[asyncio.Task[None]] = []

    # -- adding ---------------------------------------------------------------------------

    def add(self, key: Key, *flags: str, after: float = 0.0, force: bool = False) -> None:
        """Ask for a pass of `key`: now, or no later than `after` seconds from now.
        `force`: also cut short a backoff (the resource's spec changed)."""
        loop = asyncio.get_running_loop()
        timer = self._timers.get(key)
        if timer is not None and timer.hold and not force:
            timer.flags.update(flags)  # the retry carries them
            return
        if after > 0:
            when = loop.time() + after
            if timer is not None and timer.when <= when:
                timer.flags.update(flags)
                return
            self._schedule(key, when, set(flags) | (timer.flags if timer else set()), hold=False)
            return
        if timer is not None and timer.hold:  # forced: the retry happens now
            self._cancel_timer(key)
            flags = (*flags, *timer.flags)
        self._make_ready(key, set(flags))

    def cancel_timer(self, key: Key) -> None:
        """Call off `key`'s timer (not a backoff's retry): its resource needs no more
        passes on a clock (a training that finished needs no progress polls)."""
        timer = self._timers.get(key)
        if timer is not None and not timer.hold:
            self._cancel_timer(key)

    def drop(self, key: Key) -> None:
        """Forget `key`: its resource is gone. A pass in flight ends and is not repeated."""
        self._cancel_timer(key)
        self._queued.pop(key, None)  # its entry in _ready is skipped when reached
        self._dirty.pop(key, None)
        self._failures.pop(key, None)
        if key in self._processing:
            self._gone.add(key)

    def _schedule(self, key: Key, when: float, flags: set[str], *, hold: bool) -> None:
        self._cancel_timer(key)
        loop = asyncio.get_running_loop()
        timer = _Timer(when=when, flags=flags, hold=hold)
        timer.handle = loop.call_at(when, self._fire, key, timer)
        self._timers[key] = timer

    def _cancel_timer(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None and timer.handle is not None:
            timer.handle.cancel()

    def _fire(self, key: Key, timer: _Timer) -> None:
        if self._timers.get(key) is timer:
            del self._timers[key]
            self._make_ready(key, timer.flags)

    def _make_ready(self, key: Key, flags: set[str]) -> None:
        if key in self._processing:
            self._dirty.setdefault(key, set()).update(flags)
        elif key in self._queued:
            self._queued[key].update(flags)
        else:
            self._queued[key] = flags
            self._ready.append(key)
            self._available.release()

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for key in list(self._timers):
            self._cancel_timer(key)

    async def _worker(self) -> None:
        while True:
            await self._available.acquire()
            while self._ready:
                key = self._ready.popleft()
                flags = self._queued.pop(key, None)
                if flags is not None:  # None: dropped while it waited
                    await self._run(key, frozenset(flags))
                    break

    async def _run(self, key: Key, flags: frozenset[str]) -> None:
        self._processing.add(key)
        failed = False
        try:
            await self._work(key, flags)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker is being stopped
            failed = True  # a CancelledError from inside the pass: a failure, not a stop
            self._failed(key)
        except Exception:
            failed = True
            self._failed(key)
        finally:
            self._processing.discard(key)
        self._after(key, flags, failed=failed)

    def _failed(self, key: Key) -> None:
        """Count a failed pass and log it with its traceback (called inside `except`)."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        log.exception(
            "%s %s/%s: reconcile failed (%d in a row); retrying in %.0f s",
            self.name,
            *key,
            failures,
            self._backoff(failures),
        )

    def _backoff(self, failures: int) -> float:
        return backoff_seconds(failures, first=self._backoff_first, cap=self._backoff_max)

    def _after(self, key: Key, flags: frozenset[str], *, failed: bool) -> None:
        """After a pass: forget a dropped key, retry a failure, run a dirty key again."""
        dirty = self._dirty.pop(key, None)
        if key in self._gone:
            self._gone.discard(key)
            self._failures.pop(key, None)
            self._on_drop(key)
            if dirty is not None:  # added again after the drop: a new resource
                self._make_ready(key, dirty)
            return
        if failed:
            timer = self._timers.get(key)
            carried = set(flags) | (dirty or set()) | (timer.flags if timer else set())
            when = asyncio.get_running_loop().time() + self._backoff(self._failures[key])
            self._schedule(key, when, carried, hold=True)
            return
        self._failures.pop(key, None)
        if dirty is not None:
            self._make_ready(key, dirty)

    # -- reading --------------------------------------------------------------------------

    def failures(self, key: Key) -> int:
        return self._failures.get(key, 0)

    def waiting(self, key: Key) -> bool:
        """Whether `key` is queued, on a timer or marked dirty."""
        return key in self._queued or key in self._timers or key in self._dirty

    def depth(self) -> int:
        """Keys queued now (not those on a timer)."""
        return len(self._queued)

    def tracked(self) -> int:
        """Every key the queue holds anything for: what must shrink as resources go."""
        return len(self._queued | self._timers.keys() | self._dirty.keys() | self._failures.keys())
