"""A closed-loop HTTP load generator: N clients, each sending its next request as soon as
the last one is answered. Used by the serving tests and benchmarks.

Closed loop means the offered load adapts to the server, so throughput at saturation and
latency at a fixed concurrency are both read off one run.
"""

from __future__ import annotations

import asyncio
import json
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


class BackgroundLoad:
    """`load` in a thread for as long as a `with` block lasts; `result` afterwards.

    `seconds` is only a ceiling: leaving the block stops the clients."""

    def __init__(self, url: str, body: Body, *, clients: int, seconds: float = 300) -> None:
        self._stop = threading.Event()
        self._results: list[LoadResult] = []
        self._thread = threading.Thread(
            target=lambda: self._results.append(
                load(url, body, clients=clients, seconds=seconds, stop=self._stop)
            )
        )

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def result(self) -> LoadResult:
        (result,) = self._results
        return result
