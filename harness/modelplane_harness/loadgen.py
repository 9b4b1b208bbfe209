"""A closed-loop HTTP load generator: N clients, each sending its next request as soon as
the last one is answered. Used by the serving tests and benchmarks.

Closed loop means the offered load adapts to the server, so throughput at saturation and
latency at a fixed concurrency are both read off one run.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass
class LoadResult:
    """What the clients saw."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    """Seconds per successful request."""
    finished: list[float] = field(default_factory=list)
    """`time.monotonic()` at which each successful request was answered (as `latencies`)."""
    statuses: Counter[int] = field(default_factory=Counter)
    """HTTP status (0 for a connection error) -> count."""
    retry_after: set[str] = field(default_factory=set)
    """Retry-After values seen on 503s."""
    bare_503: int = 0
    """503s without a Retry-After (an ingress with no backend, not our app's backpressure)."""
    items: int = 0
    """Inputs answered (a request may carry several)."""

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != 200)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)


def between(result: LoadResult, start: float, end: float) -> list[float]:
    """Latencies of the requests answered in [start, end) (`time.monotonic()`)."""
    return [
        latency
        for finished, latency in zip(result.finished, result.latencies, strict=True)
        if start <= finished < end
    ]


def recovery_s(
    result: LoadResult,
    step: float,
    end: float,
    after: float,
    *,
    within: float = 1.25,
    window_s: float = 5.0,
    reference_s: float = 30.0,
) -> float | None:
    """Seconds from a load step to the end of the first `window_s` window, starting at or
    after `after` (capacity reached), whose p99 is within `within` of the p99 of the
    step's last `reference_s`; None if it never recovered before `end`."""
    reference = percentile(between(result, end - reference_s, end), 99)
    start = after
    while start + window_s <= end:
        window = between(result, start, start + window_s)
        if window and percentile(window, 99) <= within * reference:
            return start + window_s - step
        start += 1
    return None


Body = Callable[[int], tuple[bytes, int]]
"""Request number -> (JSON body, inputs it carries)."""


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    *,
    body: Body,
    deadline: float,
    result: LoadResult,
    counter: list[int],
    stop: threading.Event,
) -> None:
    while time.perf_counter() < deadline and not stop.is_set():
        counter[0] += 1
        data, items = body(counter[0])
        started = time.perf_counter()
        try:
            async with session.post(
                url, data=data, headers={"content-type": "application/json"}
            ) as response:
                await response.read()
                result.statuses[response.status] += 1
                if response.status == 200:
                    result.latencies.append(time.perf_counter() - started)
                    result.finished.append(time.monotonic())
                    result.items += items
                elif response.status == 503 and "Retry-After" in response.headers:
                    result.retry_after.add(response.headers["Retry-After"])
                    await asyncio.sleep(0.01)
                elif response.status == 503:
                    result.bare_503 += 1
                    await asyncio.sleep(0.01)
        except (aiohttp.ClientError, TimeoutError):
            result.statuses[0] += 1
            await asyncio.sleep(0.05)


async def run_load(
    url: str,
    body: Body,
    *,
    clients: int,
    seconds: float,
    timeout_s: float = 30.0,
    stop: threading.Event | None = None,
) -> LoadResult:
    """`clients` concurrent clients POST to `url` for `seconds` (or until `stop` is set)."""
    stop = stop or threading.Event()
    result = LoadResult(seconds=seconds)
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + seconds
        counter = [0]
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _client(
                    session,
                    url,
                    body=body,
                    deadline=deadline,
                    result=result,
                    counter=counter,
                    stop=stop,
                )
                for _ in range(clients)
            )
        )
        result.seconds = time.perf_counter() - started
    return result


def json_body(payload_for: Callable[[int], Any], items: int = 1) -> Body:
    """A Body from a function that builds the JSON payload of request n."""

    def body(n: int) -> tuple[bytes, int]:
        return json.dumps(payload_for(n)).encode(), items

    return body


def load(
    url: str, body: Body, *, clients: int, seconds: float, stop: threading.Event | None = None
) -> LoadResult:
    """Blocking `run_load`."""
    return asyncio.run(run_load(url, body, clients=clients, seconds=seconds, stop=stop))


CLONE_NEWNET = 0x40000000


def enter_netns(path: str) -> None:
    """Move the calling thread (only it: setns is per thread) into the network namespace
    at `path`, so the sockets it opens from now on live there. A real node's ClusterIPs
    and pod IPs route only inside its namespace; a load thread that enters it reaches
    them as a pod would, with no kubectl port-forward (one stream, one pod) in between."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class BackgroundLoad:
    """`load` in a thread for as long as a `with` block lasts; `result` afterwards.

    `seconds` is only a ceiling: leaving the block stops the clients. With `netns` (a
    path like /run/netns/NAME) the clients run inside that network namespace."""

    def __init__(
        self,
        url: str,
        body: Body,
        *,
        clients: int,
        seconds: float = 300,
        netns: str | None = None,
    ) -> None:
        self._stop = threading.Event()
        self._results: list[LoadResult] = []
        self._errors: list[BaseException] = []

        def run() -> None:
            try:
                if netns is not None:
                    enter_netns(netns)
                self._results.append(
                    load(url, body, clients=clients, seconds=seconds, stop=self._stop)
                )
            except BaseException as exc:  # re-raised by `result`
                self._errors.append(exc)

        self._thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def result(self) -> LoadResult:
        if self._errors:
            raise self._errors[0]
        (result,) = self._results
        return result
