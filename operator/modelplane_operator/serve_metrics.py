"""A Serve application's load, read from Ray's Prometheus metrics: `status.load`.

Where each figure comes from (Ray 2.60, HAProxy ingress):

- ongoing requests: the head's `ray_serve_autoscaling_total_requests{application,
  deployment}`, the requests Serve's autoscaler sees (queued and in the replicas). A
  fixed-size deployment (`replicas.min == max`) has no autoscaler and no such gauge; its
  replicas' own `ray_serve_replica_processing_queries` are summed instead.
- requests per second: each replica counts what it answered in
  `ray_serve_deployment_request_counter_total{application, deployment, replica, route}`
  on its node's metrics port (the worker pod's IP). The head cannot count them: behind
  HAProxy its HTTP counters only see health checks.
- a language model's tokens per second and sequences: its replicas' own metrics
  (`ray.serve.metrics`, which tags them with application, deployment and replica) on the
  same pages: the counter `ray_modelplane_generated_tokens_total`, a rate taken as the
  requests' is, and the gauges `ray_modelplane_sequences_running` and
  `ray_modelplane_sequences_waiting`, summed over the replicas. A classifier exports none.

Ray pushes a process's metrics to its node's exporter every 10 s (its default
`metrics_report_interval_ms`, which the pods keep), so a counter read every 5 s moves in
steps, and the delta between two reads is by turns nothing and twice the truth. The rate
is therefore taken between the reads at which each replica's counter moved, over about
three of Ray's pushes (a new replica counts from its first move: one push after its first
read); a counter that has not moved for two pushes is taken as idle from then on. A
counter that went down (a replica restarted under the same name) starts that replica's
series afresh and counts nothing for that interval.

Parsing and the rate are pure (the clock is injected); the fetch is the only I/O, and
a fetch that fails counts as no answer, never as an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from modelplane_operator.api.deployment import Load
from modelplane_operator.dashboard import TIMEOUT_S
from modelplane_operator.status.serving import ServeState
from modelplane_runtime.contract import SERVE_DEPLOYMENT

log = logging.getLogger("modelplane.serve_metrics")

ONGOING = "ray_serve_autoscaling_total_requests"
PROCESSING = "ray_serve_replica_processing_queries"
REQUESTS = "ray_serve_deployment_request_counter_total"
TOKENS = "ray_modelplane_generated_tokens_total"
RUNNING = "ray_modelplane_sequences_running"
WAITING = "ray_modelplane_sequences_waiting"
RAY_PUSH_S = 10.0
"""How often Ray pushes a process's metrics to its node's exporter (its default)."""
REFRESH_S = 5.0
"""At most one scrape of a deployment's head and workers this often: a busy deployment
is passed several times a second, and both the head's gauge and the replicas' counters change only
at Ray's pushes, so reading them each pass would cost four GETs in five for nothing."""
WINDOW_S = 3 * RAY_PUSH_S
"""The span a rate is measured over. A move is seen up to a refresh after its push, at
each end of the span: with reads every 5-6 s a steady load reads within a fifth of the
truth once the window is full (8% off on average, simulated), where deltas between
single reads swing from 0 to twice it."""
IDLE_S = 2 * RAY_PUSH_S
"""A counter that has not moved for this long has missed a push: no requests since."""
SCRAPE_CONCURRENCY = 8
"""Scrapes in flight at once, across deployments."""

Fetch = Callable[[str], Awaitable[str | None]]
"""URL -> the metrics page, or None when it did not answer."""
Key = tuple[str, str]
"""(namespace, name) of a ModelDeployment."""


def _samples(text: str, name: str, application: str) -> Iterator[Sample]:
    """The samples of metric `name` for the application's Serve deployment. Only the
    lines of that metric are parsed: a Ray node's page is ~600 kB of other metrics."""
    lines = "\n".join(line for line in text.splitlines() if line.startswith(name))
    try:
        families = list(text_string_to_metric_families(lines + "\n"))
    except ValueError as error:
        log.info("unreadable %s samples: %s", name, error)
        return
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == name
                and labels.get("application") == application
                and labels.get("deployment") == SERVE_DEPLOYMENT
            ):
                yield sample


def ongoing_requests(text: str, application: str) -> float | None:
    """The ongoing requests Serve's autoscaler sees for the application, from the head's
    metrics page; None when the head exports none (no autoscaler, or not yet). A
    controller that restarted may leave its predecessor's series: the larger wins."""
    values = [sample.value for sample in _samples(text, ONGOING, application)]
    return max(values) if values else None


def replica_requests(text: str, application: str) -> dict[str, float]:
    """Each replica's count of answered requests (all routes), from a node's page."""
    totals: dict[str, float] = {}
    for sample in _samples(text, REQUESTS, application):
        replica = sample.labels.get("replica", "")
        totals[replica] = totals.get(replica, 0.0) + sample.value
    return totals


def replica_gauge(text: str, name: str, application: str) -> dict[str, float]:
    """Each replica's value of gauge `name` (requests in progress, sequences running or
    waiting), from a node's page."""
    return {
        sample.labels.get("replica", ""): sample.value
        for sample in _samples(text, name, application)
    }


def replica_processing(text: str, application: str) -> dict[str, float]:
    """Each replica's requests in progress, from a node's page."""
    return replica_gauge(text, PROCESSING, application)


def replica_tokens(text: str, application: str) -> dict[str, float]:
    """Each replica's count of generated tokens, from a node's page."""
    totals: dict[str, float] = {}
    for sample in _samples(text, TOKENS, application):
        replica = sample.labels.get("replica", "")
        totals[replica] = totals.get(replica, 0.0) + sample.value
    return totals


@dataclass(frozen=True)
class LoadSample:
    """The load one refresh measured; None where it is not known (yet)."""

    ongoing_requests: float | None = None
    requests_per_second: float | None = None
    tokens_per_second: float | None = None
    running_sequences: int | None = None
    waiting_sequences: int | None = None


@dataclass
class _Counter:
    """One replica's request counter. A read that differs from the one before saw a push
    made since that read: its time is known to within a refresh. When the first read's
    value was pushed is not known; but reads come more often than pushes, so the first
    move is the very next push, `RAY_PUSH_S` later."""

    first: tuple[float, float] | None
    """(time, value) of the first read; None once the counter went down."""
    value: float
    seen: float
    moves: list[tuple[float, float]] = field(default_factory=list)
    """(read time, value) of the reads at which it moved, oldest first, after the first
    read's value placed one push before the first move."""

    def read(self, now: float, value: float) -> None:
        if value < self.value:
            # A reset: the interval before it counts nothing.
            self.first, self.moves = None, [(now, value)]
        elif value > self.value:
            if not self.moves and self.first is not None:
                # The first read's value, as of the push before this one.
                self.moves.append((min(self.first[0], now - RAY_PUSH_S), self.first[1]))
            self.moves.append((now, value))
        self.value, self.seen = value, now
        # Keep what the window may still use, and one move before it (the baseline).
        while len(self.moves) > 2 and self.moves[1][0] < now - WINDOW_S - IDLE_S:
            self.moves.pop(0)

    def rate(self, now: float) -> float | None:
        """Requests per second over the window; None while it cannot tell yet (not moved
        since the first read, which may have been a push ago), 0 right after a reset."""
        if not self.moves:
            idle = self.first is not None and now - self.first[0] >= IDLE_S
            return 0.0 if idle else None
        end = self.moves[-1]
        if now - IDLE_S > end[0]:
            # No push has moved it for two pushes: it has been idle since then.
            end = (now - IDLE_S, end[1])
        earlier = [move for move in self.moves if move[0] < end[0]]
        if not earlier:
            return 0.0  # it went down at this read: the interval counts nothing
        inside = [move for move in earlier if move[0] >= end[0] - WINDOW_S]
        start = inside[0] if inside else earlier[-1]
        return (end[1] - start[1]) / (end[0] - start[0])


class _Counters:
    """One counter (requests, tokens) of every replica of a deployment."""

    def __init__(self) -> None:
        self.replicas: dict[str, _Counter] = {}

    def rate(self, now: float, values: dict[str, float], *, answered: bool) -> float | None:
        """Take one scrape's values (by replica) at `now`; the rate summed over the
        replicas, None while one of them cannot tell its own yet or no page answered
        (`answered`: some page did, or there were none to ask)."""
        for replica, value in values.items():
            if replica in self.replicas:
                self.replicas[replica].read(now, value)
            else:
                self.replicas[replica] = _Counter(first=(now, value), value=value, seen=now)
        # A replica gone (or on a node that did not answer) for a window is forgotten.
        for replica in [r for r, n in self.replicas.items() if n.seen < now - WINDOW_S]:
            del self.replicas[replica]
        rates = [self.replicas[replica].rate(now) for replica in values]
        if not answered or None in rates:
            return None
        return round(sum(r for r in rates if r is not None), 2)


@dataclass
class _Deployment:
    refreshed: float
    """The clock when it was last scraped."""
    requests: _Counters = field(default_factory=_Counters)
    tokens: _Counters = field(default_factory=_Counters)
    load: LoadSample = LoadSample()


class LoadTracker:
    """The load of every ModelDeployment, kept in memory between passes (the handlers
    hold one; a restarted operator measures afresh). A deployment is scraped at most
    every `refresh_s`; between scrapes its last measurement is returned."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float = REFRESH_S,
        concurrency: int = SCRAPE_CONCURRENCY,
    ) -> None:
        self.fetch = fetch
        self.clock = clock
        self.refresh_s = refresh_s
        self.limit = asyncio.Semaphore(concurrency)
        self.deployments: dict[Key, _Deployment] = {}

    async def measure(
        self, key: Key, *, application: str, head_url: str, replica_urls: Sequence[str]
    ) -> LoadSample:
        """The deployment's load, scraping its head and the replicas' nodes when due."""
        state = self.deployments.get(key)
        if state is not None and self.clock() - state.refreshed < self.refresh_s:
            return state.load
        urls = list(dict.fromkeys(replica_urls))
        head, *replicas = await asyncio.gather(*(self._get(url) for url in [head_url, *urls]))
        return self.record(key, application=application, head=head, replicas=replicas)

    async def _get(self, url: str) -> str | None:
        async with self.limit:
            return await self.fetch(url)

    def record(
        self,
        key: Key,
        *,
        application: str,
        head: str | None,
        replicas: Iterable[str | None],
    ) -> LoadSample:
        """Take one scrape's pages (None: no answer) at the clock's time; the load.

        The rate sums the replicas on the pages that answered (a node that does not
        answer counts nothing); it is unknown, rather than low, while one of them cannot
        tell its own yet (it just appeared), and when no page answered. A replica that
        has answered nothing yet exports no counter and counts zero."""
        pages = list(replicas)
        now = self.clock()
        state = self.deployments.setdefault(key, _Deployment(refreshed=now))
        state.refreshed = now
        answered = [page for page in pages if page is not None]
        requests: dict[str, float] = {}
        tokens: dict[str, float] = {}
        processing: dict[str, float] = {}
        running: dict[str, float] = {}
        waiting: dict[str, float] = {}
        for page in answered:
            requests.update(replica_requests(page, application))
            tokens.update(replica_tokens(page, application))
            processing.update(replica_processing(page, application))
            running.update(replica_gauge(page, RUNNING, application))
            waiting.update(replica_gauge(page, WAITING, application))
        heard = bool(answered) or not pages
        ongoing = ongoing_requests(head, application) if head is not None else None
        if ongoing is None and answered:
            ongoing = sum(processing.values())
        state.load = LoadSample(
            ongoing_requests=None if ongoing is None else round(ongoing, 2),
            requests_per_second=state.requests.rate(now, requests, answered=heard),
            tokens_per_second=state.tokens.rate(now, tokens, answered=heard),
            running_sequences=round(sum(running.values())) if heard else None,
            waiting_sequences=round(sum(waiting.values())) if heard else None,
        )
        return state.load

    def forget(self, key: Key) -> None:
        """Drop a deleted deployment's series."""
        self.deployments.pop(key, None)


def replica_url(template: str, ip: str) -> str:
    """A replica node's metrics page from `Settings.replica_metrics_url` and its IP."""
    host = f"[{ip}]" if ":" in ip else ip  # an IPv6 pod IP
    return f"{template.format(ip=host).rstrip('/')}/metrics"


async def fetch_metrics(session: aiohttp.ClientSession, url: str) -> str | None:
    """A Prometheus text page; None when it does not answer (yet)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as response:
            if response.status != 200:
                log.info("%s answered %s", url, response.status)
                return None
            return await response.text()
    except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError, ValueError):
        return None


def with_load(serve: ServeState, sample: LoadSample, previous: Load | None) -> ServeState:
    """Serve's state carrying the measured load. A figure not known yet keeps the status'
    previous one, so a restarted operator does not write zero until its rate is back."""
    before = previous or Load()
    ongoing, rate, tokens = (
        sample.ongoing_requests,
        sample.requests_per_second,
        sample.tokens_per_second,
    )
    running, waiting = sample.running_sequences, sample.waiting_sequences
    return replace(
        serve,
        ongoing_requests=before.ongoing_requests if ongoing is None else ongoing,
        requests_per_second=before.requests_per_second if rate is None else rate,
        tokens_per_second=(before.tokens_per_second or 0.0) if tokens is None else tokens,
        running_sequences=(before.running_sequences or 0) if running is None else running,
        waiting_sequences=(before.waiting_sequences or 0) if waiting is None else waiting,
    )
