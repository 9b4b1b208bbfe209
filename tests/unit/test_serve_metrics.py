"""`status.load` from Ray's Prometheus pages: the head's autoscaler gauge for ongoing
requests, the replicas' request counters for the rate, taken between the reads at which
Ray's 10-second pushes moved them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from modelplane_operator.api.deployment import Load
from modelplane_operator.builders.serving import names_for
from modelplane_operator.constants import METRICS_PORT
from modelplane_operator.dashboard import Dashboard
from modelplane_operator.reconcile.serving import reconcile_deployment
from modelplane_operator.serve_metrics import (
    IDLE_S,
    RAY_PUSH_S,
    REFRESH_S,
    RUNNING,
    WAITING,
    WINDOW_S,
    LoadSample,
    LoadTracker,
    ongoing_requests,
    replica_gauge,
    replica_processing,
    replica_requests,
    replica_tokens,
    replica_url,
    with_load,
)
from modelplane_operator.settings import Settings
from modelplane_operator.status.serving import ServeState
from modelplane_runtime.contract import GENERATION_ENGINE
from tests.factories import make_deployment
from tests.unit.fake_client import FakeClient

APP = "bench"
HEAD_URL = "http://bench-ray-head.ml.svc:8080/metrics"


def series(name: str, value: float, worker: str = "c4bd861a46adf8212a22", **labels: str) -> str:
    """One sample line as Ray 2.60's exporter writes it (OpenTelemetry recorder)."""
    tags = {
        "Component": "core_worker",
        "NodeAddress": "10.244.1.7",
        "SessionName": "session_2026-11-30_06-30-30_274089_24463",
        "Version": "2.60.0",
        "WorkerId": worker,
        **labels,
        "otel_scope_name": "ray._private.telemetry.open_telemetry_metric_recorder",
        "otel_scope_schema_url": "",
        "otel_scope_version": "",
    }
    rendered = ",".join(f'{key}="{tag}"' for key, tag in tags.items())
    return f"{name}{{{rendered}}} {value}"


def head_page(ongoing: float | None = 6.27) -> str:
    """The head node's page: the Serve controller's gauges, HAProxy's health checks on
    the HTTP counter, a histogram, and another application's gauge."""
    lines = [
        "# HELP ray_serve_num_http_requests_total The number of HTTP requests processed.",
        "# TYPE ray_serve_num_http_requests_total counter",
        series(
            "ray_serve_num_http_requests_total",
            913.0,
            application=APP,
            method="GET",
            route="/-/healthz",
            status_code="200",
        ),
        "# HELP ray_serve_long_poll_latency_ms The time for a long poll to be answered.",
        "# TYPE ray_serve_long_poll_latency_ms histogram",
        series("ray_serve_long_poll_latency_ms_bucket", 3.0, le="1.0"),
        series("ray_serve_long_poll_latency_ms_bucket", 12.0, le="+Inf"),
        series("ray_serve_long_poll_latency_ms_count", 12.0),
        series("ray_serve_long_poll_latency_ms_sum", 4.5),
        "# HELP ray_serve_autoscaling_total_requests Total number of requests as seen by "
        "the autoscaler. This is the input to the autoscaling decision.",
        "# TYPE ray_serve_autoscaling_total_requests gauge",
        series(
            "ray_serve_autoscaling_total_requests", 1.5, application="other", deployment="model"
        ),
    ]
    if ongoing is not None:
        lines.append(
            series(
                "ray_serve_autoscaling_total_requests",
                ongoing,
                application=APP,
                deployment="model",
            )
        )
    return "\n".join(lines) + "\n"


def node_page(requests: dict[str, float], processing: dict[str, float] | None = None) -> str:
    """A worker node's page: each replica's request counter (split over two routes, as
    `/predict` and `/v2/.../infer` count apart), its processing gauge, and a replica of
    another application on the same node."""
    lines = [
        "# HELP ray_serve_deployment_request_counter_total The number of queries that "
        "have been processed in this replica.",
        "# TYPE ray_serve_deployment_request_counter_total counter",
    ]
    common = {"application": APP, "deployment": "model"}
    for replica, total in requests.items():
        worker = f"7d9d4c42{replica}"
        lines.append(
            series(
                "ray_serve_deployment_request_counter_total",
                total - 5,
                worker,
                replica=replica,
                route="/predict",
                **common,
            )
        )
        lines.append(
            series(
                "ray_serve_deployment_request_counter_total",
                5.0,
                worker,
                replica=replica,
                route="/v2/models/bench/infer",
                **common,
            )
        )
    lines.append(
        series(
            "ray_serve_deployment_request_counter_total",
            99999.0,
            application="other",
            deployment="model",
            replica="zzz",
            route="/predict",
        )
    )
    lines += [
        "# HELP ray_serve_replica_processing_queries The current number of queries being "
        "processed.",
        "# TYPE ray_serve_replica_processing_queries gauge",
    ]
    for replica, value in (processing or {}).items():
        lines.append(
            series("ray_serve_replica_processing_queries", value, replica=replica, **common)
        )
    return "\n".join(lines) + "\n"


def llm_page(tokens: dict[str, float], running: dict[str, float], waiting: dict[str, float]) -> str:
    """A worker node's page with a language model's replicas' own metrics, as
    `ray.serve.metrics` tags them (application, deployment, replica, and the app's model
    tag), and another application's replica on the same node."""
    lines = [
        "# HELP ray_modelplane_generated_tokens_total Tokens generated.",
        "# TYPE ray_modelplane_generated_tokens_total counter",
    ]
    common = {"application": APP, "deployment": "model", "model": APP}
    for replica, total in tokens.items():
        lines.append(
            series("ray_modelplane_generated_tokens_total", total, replica=replica, **common)
        )
    lines.append(
        series(
            "ray_modelplane_generated_tokens_total",
            5e6,
            application="other",
            deployment="model",
            model="other",
            replica="zzz",
        )
    )
    for name, values in (
        ("ray_modelplane_sequences_running", running),
        ("ray_modelplane_sequences_waiting", waiting),
    ):
        lines += [f"# HELP {name} Sequences.", f"# TYPE {name} gauge"]
        for replica, value in values.items():
            lines.append(series(name, value, replica=replica, **common))
        lines.append(series(name, 99.0, application="other", deployment="model", replica="zzz"))
    return "\n".join(lines) + "\n"


# The pure readings of one page


def test_ongoing_requests_is_the_applications_autoscaler_gauge_on_the_head() -> None:
    assert ongoing_requests(head_page(6.27), APP) == 6.27
    assert ongoing_requests(head_page(6.27), "other") == 1.5


@pytest.mark.parametrize(
    "page",
    [head_page(None), "", "ray_serve_autoscaling_total_requests{application=\n"],
    ids=[
        "a fixed-size deployment has no autoscaler gauge",
        "an empty page",
        "an unreadable page",
    ],
)
def test_no_gauge_is_no_figure(page: str) -> None:
    assert ongoing_requests(page, APP) is None


def test_a_restarted_controllers_two_series_give_the_larger() -> None:
    page = head_page(2.0) + series(
        "ray_serve_autoscaling_total_requests",
        7.0,
        "another-controller",
        application=APP,
        deployment="model",
    )
    assert ongoing_requests(page, APP) == 7.0


def test_a_replicas_counter_is_summed_over_its_routes_and_other_apps_are_left_out() -> None:
    assert replica_requests(node_page({"nkjngqvh": 1050.0, "ld3ctry9": 40.0}), APP) == {
        "nkjngqvh": 1050.0,
        "ld3ctry9": 40.0,
    }
    assert replica_requests(head_page(), APP) == {}


def test_a_replicas_processing_gauge_is_read_per_replica() -> None:
    page = node_page({"nkjngqvh": 10.0}, processing={"nkjngqvh": 3.0})
    assert replica_processing(page, APP) == {"nkjngqvh": 3.0}


def test_a_language_models_tokens_and_sequences_are_read_per_replica() -> None:
    page = llm_page({"a": 1200.0, "b": 30.0}, running={"a": 16.0, "b": 2.0}, waiting={"a": 5.0})
    assert replica_tokens(page, APP) == {"a": 1200.0, "b": 30.0}
    assert replica_gauge(page, RUNNING, APP) == {"a": 16.0, "b": 2.0}
    assert replica_gauge(page, WAITING, APP) == {"a": 5.0}
    assert replica_tokens(node_page({"a": 10.0}), APP) == {}


# The rate between reads


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pushed(rate: float, phase: float, t: float, start: float = 0.0) -> float:
    """What a replica's exporter shows at `t`: the counter as of Ray's last push."""
    last_push = phase + RAY_PUSH_S * ((t - phase) // RAY_PUSH_S)
    return rate * max(last_push - start, 0.0)


def run_reads(
    tracker: LoadTracker,
    clock: Clock,
    *,
    until: float,
    requests: Callable[[float], dict[str, float]],
    jitter: float = 0.0,
) -> dict[float, LoadSample]:
    """Record a scrape from clock.now (t = 0) until t = `until`, one every REFRESH_S plus
    up to `jitter` s (a pass comes each second and takes its time; seeded, so the same
    every run); `requests(t)` gives the replicas' counters on the page at t."""
    steps = random.Random(7)
    samples = {}
    while (t := round(clock.now - 1000.0, 2)) < until:
        page = node_page(requests(t))
        samples[t] = tracker.record(("ml", APP), application=APP, head=None, replicas=[page])
        clock.now += REFRESH_S + steps.uniform(0, jitter)
    return samples


async def never(url: str) -> str | None:
    return None


@pytest.mark.parametrize(
    ("phases", "rate"),
    [((3.0,), 100.0), ((0.0,), 100.0), ((4.9,), 37.5), ((1.0, 6.5), 60.0)],
    ids=[
        "one replica pushing between reads",
        "one replica pushing exactly at the reads",
        "one replica pushing just before a read, at a low rate",
        "two replicas pushing out of step",
    ],
)
def test_a_steady_load_reads_steady_despite_rays_ten_second_pushes(
    phases: tuple[float, ...], rate: float
) -> None:
    """Deltas between 5-second reads of counters pushed every 10 s would swing between 0
    and twice the truth; the rate between the counters' moves stays within a fifth."""
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)
    samples = run_reads(
        tracker,
        clock,
        until=300,
        requests=lambda t: {f"r{i}": pushed(rate, phase, t) for i, phase in enumerate(phases)},
        jitter=1.0,
    )
    total = rate * len(phases)
    settled = [s.requests_per_second for t, s in samples.items() if t >= WINDOW_S + RAY_PUSH_S]
    assert len(settled) > 40
    for measured in settled:
        assert measured is not None
        assert abs(measured - total) <= total / 5, settled


def test_a_counters_rate_is_known_from_its_first_move_one_push_after_its_first_read() -> None:
    """A restarted operator, or a new replica: its first read's push time is unknown, but
    reads come more often than pushes, so its first move is the very next push."""
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)
    samples = run_reads(
        tracker, clock, until=12, requests=lambda t: {"r": pushed(50, 3, t, start=-100)}
    )
    assert [s.requests_per_second for s in samples.values()] == [None, 50, 50]


def test_a_replica_added_under_load_is_never_left_out_of_the_sum() -> None:
    """Serve scaled up: until the new replica's rate is known the total is unknown (the
    status keeps its figure), not the old replica's alone."""
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)

    def counters(t: float) -> dict[str, float]:
        shown = {"a": pushed(100, 3, t, start=-100)}
        if (new := pushed(100, 8, t, start=60)) > 0:
            shown["b"] = new
        return shown

    samples = run_reads(tracker, clock, until=150, requests=counters, jitter=1.0)
    after = {t: s.requests_per_second for t, s in samples.items() if t >= 60 + RAY_PUSH_S}
    known = [rate for rate in after.values() if rate is not None]
    assert len(known) >= len(after) - 2, after
    for measured in known:
        assert abs(measured - 200) <= 200 / 5, after


def test_a_counter_that_went_down_counts_nothing_and_never_goes_negative() -> None:
    """A replica restarted under the same name: its counter starts again from zero."""
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)

    def counters(t: float) -> dict[str, float]:
        before = pushed(100, 3, t)
        after = pushed(100, 3, t, start=50)
        return {"r": before if t < 55 else after, "steady": pushed(20, 7, t)}

    samples = run_reads(tracker, clock, until=120, requests=counters)
    rates = {t: s.requests_per_second for t, s in samples.items()}
    assert all(rate is None or rate >= 0 for rate in rates.values()), rates
    # Right after the reset only the other replica counts.
    assert rates[55] is not None
    assert abs(rates[55] - 20) <= 20 / 6
    # Once the restarted counter has moved twice, both count again.
    late = rates[115]
    assert late is not None
    assert abs(late - 120) <= 120 / 6


def test_a_load_that_stops_reads_zero_within_a_minute() -> None:
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)

    def counters(t: float) -> dict[str, float]:
        return {"r": pushed(100, 3, min(t, 40.0))}

    samples = run_reads(tracker, clock, until=130, requests=counters)
    rates = {t: s.requests_per_second for t, s in samples.items()}
    assert rates[40] is not None
    assert rates[40] > 80
    zero_from = 40 + RAY_PUSH_S + IDLE_S + WINDOW_S
    assert all(rate == 0 for t, rate in rates.items() if t >= zero_from), rates
    assert all(rate is not None and rate >= 0 for t, rate in rates.items() if t >= 20)


def test_a_replica_idle_since_the_operator_started_reads_zero_not_unknown() -> None:
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)
    samples = run_reads(tracker, clock, until=30, requests=lambda t: {"r": 1234.0})
    rates = [s.requests_per_second for t, s in samples.items() if t >= IDLE_S]
    assert rates == [0, 0]


def test_a_replica_gone_from_the_pages_stops_counting_at_once() -> None:
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)

    def counters(t: float) -> dict[str, float]:
        shown = {"a": pushed(40, 3, t), "b": pushed(40, 6, t)}
        return shown if t < 60 else {"a": shown["a"]}

    rates = run_reads(tracker, clock, until=70, requests=counters)
    assert rates[55].requests_per_second is not None
    assert abs(rates[55].requests_per_second - 80) <= 80 / 6
    assert rates[60].requests_per_second is not None
    assert abs(rates[60].requests_per_second - 40) <= 40 / 6


def test_tokens_per_second_are_a_rate_like_requests_and_sequences_a_sum() -> None:
    """Ray pushes the replicas' own counters every 10 s too: the tokens' rate is taken
    between the counters' moves, over both replicas; the gauges are summed as read."""
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)
    steps = random.Random(3)
    rates: list[float | None] = []
    last = LoadSample()
    while (t := clock.now - 1000.0) < 200:
        page = llm_page(
            {"a": pushed(120.0, 2.0, t, start=-50), "b": pushed(60.0, 7.0, t, start=-50)},
            running={"a": 16.0, "b": 9.0},
            waiting={"a": 3.0},
        )
        last = tracker.record(("ml", APP), application=APP, head=None, replicas=[page])
        if t >= WINDOW_S + RAY_PUSH_S:
            rates.append(last.tokens_per_second)
        clock.now += REFRESH_S + steps.uniform(0, 1.0)
    assert len(rates) > 20
    for rate in rates:
        assert rate is not None
        assert abs(rate - 180.0) <= 180.0 / 5, rates
    assert (last.running_sequences, last.waiting_sequences) == (25, 3)
    assert last.requests_per_second == 0.0  # no request counter on this page: none answered


@pytest.mark.parametrize(
    ("pages", "tokens", "sequences"),
    [
        ([node_page({"a": 10.0}, processing={"a": 2.0})], 0.0, 0),
        ([], 0.0, 0),
        ([None], None, None),
    ],
    ids=[
        "a classifier's replicas generate nothing",
        "no replica running generates nothing",
        "a node that does not answer tells nothing",
    ],
)
def test_what_a_page_without_a_language_model_tells(
    pages: list[str | None], tokens: float | None, sequences: int | None
) -> None:
    sample = LoadTracker(never, clock=Clock()).record(
        ("ml", APP), application=APP, head=head_page(), replicas=pages
    )
    assert sample.tokens_per_second == tokens
    assert (sample.running_sequences, sample.waiting_sequences) == (sequences, sequences)


# Ongoing requests, scrapes and their failures


def test_ongoing_is_the_heads_gauge_and_falls_back_to_the_replicas_own() -> None:
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)
    key = ("ml", APP)
    page = node_page({"a": 10.0, "b": 10.0}, processing={"a": 2.0, "b": 1.5})
    with_gauge = tracker.record(key, application=APP, head=head_page(6.274), replicas=[page])
    assert with_gauge.ongoing_requests == 6.27  # two decimals: noise rewrites no status
    fixed_size = tracker.record(key, application=APP, head=head_page(None), replicas=[page])
    assert fixed_size.ongoing_requests == 3.5
    head_down = tracker.record(key, application=APP, head=None, replicas=[page])
    assert head_down.ongoing_requests == 3.5
    nothing = tracker.record(key, application=APP, head=None, replicas=[None])
    assert nothing == LoadSample(ongoing_requests=None, requests_per_second=None)


@pytest.mark.parametrize(
    ("pages", "rate"),
    [
        ([], 0.0),
        ([node_page({})], 0.0),
        ([None], None),
        ([node_page({"a": 10.0}), None], None),
    ],
    ids=[
        "no replica running counts zero",
        "a replica that has answered nothing exports no counter and counts zero",
        "a node that does not answer tells nothing",
        "a replica just seen makes the total unknown, not low",
    ],
)
def test_what_a_first_scrape_tells_of_the_rate(pages: list[str | None], rate: float | None) -> None:
    tracker = LoadTracker(never, clock=Clock())
    sample = tracker.record(("ml", APP), application=APP, head=head_page(), replicas=pages)
    assert sample.requests_per_second == rate


class Pages:
    """A fetch that serves canned pages, counts calls and the most at once."""

    def __init__(self, pages: dict[str, str | None]) -> None:
        self.pages = pages
        self.calls: list[str] = []
        self.in_flight = 0
        self.most = 0

    async def __call__(self, url: str) -> str | None:
        self.calls.append(url)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return self.pages.get(url)


def test_a_deployment_is_scraped_at_most_every_five_seconds() -> None:
    clock = Clock()
    replica = "http://10.244.1.7:8080/metrics"
    pages = Pages({HEAD_URL: head_page(4.0), replica: node_page({"a": 10.0})})
    tracker = LoadTracker(pages, clock=clock)

    async def passes() -> list[LoadSample]:
        out = []
        for offset in (0.0, 1.0, 2.0, 4.9, 5.0, 6.0):
            clock.now = 1000.0 + offset
            out.append(
                await tracker.measure(
                    ("ml", APP), application=APP, head_url=HEAD_URL, replica_urls=[replica]
                )
            )
        return out

    samples = asyncio.run(passes())
    assert pages.calls == [HEAD_URL, replica, HEAD_URL, replica]
    assert {s.ongoing_requests for s in samples} == {4.0}


def test_scrapes_in_flight_are_capped_and_a_node_is_read_once() -> None:
    urls = [f"http://10.244.1.{i}:8080/metrics" for i in range(20)]
    pages = Pages({url: node_page({f"r{i}": 1.0}) for i, url in enumerate(urls)})
    tracker = LoadTracker(pages, concurrency=3)
    asyncio.run(
        tracker.measure(("ml", APP), application=APP, head_url=HEAD_URL, replica_urls=urls * 2)
    )
    assert len(pages.calls) == 21
    assert pages.most == 3


def test_a_deleted_deployment_is_forgotten() -> None:
    clock = Clock()
    tracker = LoadTracker(never, clock=clock)
    tracker.record(("ml", APP), application=APP, head=head_page(), replicas=[])
    tracker.forget(("ml", APP))
    tracker.forget(("ml", "never-seen"))
    assert tracker.deployments == {}


def test_an_unknown_figure_keeps_the_status_previous_one() -> None:
    serve = ServeState(status="RUNNING", running_replicas=1)
    previous = Load(ongoing_requests=3.0, requests_per_second=42.0)
    kept = with_load(serve, LoadSample(ongoing_requests=5.0), previous)
    assert (kept.ongoing_requests, kept.requests_per_second) == (5.0, 42.0)
    fresh = with_load(serve, LoadSample(), None)
    assert (fresh.ongoing_requests, fresh.requests_per_second) == (0.0, 0.0)
    before = Load(tokens_per_second=150.0, running_sequences=12, waiting_sequences=4)
    unknown = with_load(serve, LoadSample(running_sequences=3), before)
    assert (unknown.tokens_per_second, unknown.running_sequences, unknown.waiting_sequences) == (
        150.0,
        3,
        4,
    )
    first = with_load(serve, LoadSample(), Load())  # a classifier's status has none
    assert (first.tokens_per_second, first.running_sequences, first.waiting_sequences) == (
        0.0,
        0,
        0,
    )


@pytest.mark.parametrize(
    ("ip", "url"),
    [
        ("10.244.1.7", "http://10.244.1.7:8080/metrics"),
        ("fd00:10:244::7", "http://[fd00:10:244::7]:8080/metrics"),
    ],
    ids=["an IPv4 pod", "an IPv6 pod is bracketed"],
)
def test_a_replicas_node_is_reached_on_its_pod_ip(ip: str, url: str) -> None:
    assert replica_url(Settings().replica_metrics_url, ip) == url


def test_the_metrics_urls_use_the_port_the_ray_pods_export_on() -> None:
    settings = Settings()
    head = settings.metrics_url.format(head="x-ray-head", namespace="ml")
    assert head == f"http://x-ray-head.ml.svc:{METRICS_PORT}"
    assert replica_url(settings.replica_metrics_url, "10.0.0.1").endswith(
        f":{METRICS_PORT}/metrics"
    )


# Through the reconcile


class RunningHead(Dashboard):
    def __init__(self) -> None:
        pass

    async def application(self, name: str, *, timeout: float = 3.0) -> ServeState | None:
        return ServeState(
            status="RUNNING",
            target_replicas=1,
            running_replicas=1,
            replica_ips=frozenset({"10.244.1.7"}),
        )

    async def deploy(self, config: dict[str, Any]) -> bool:
        return True


def test_the_reconcile_writes_the_measured_load_into_the_status() -> None:
    names = names_for(APP)
    obj = make_deployment({"spec.model": {"uri": "pvc://models/bench/bench"}}, name=APP)
    obj["metadata"].update({"namespace": "ml", "uid": "u", "generation": 1})
    client = FakeClient()
    settings = Settings(runtime_image="registry.example/runtime:1")
    pages = Pages(
        {
            HEAD_URL: head_page(6.274),
            "http://10.244.1.7:8080/metrics": node_page({"a": 10.0}),
        }
    )
    tracker = LoadTracker(pages)

    def one_pass() -> None:
        asyncio.run(
            reconcile_deployment(
                client,
                obj,
                settings=settings,
                now=datetime(2026, 11, 30, tzinfo=UTC),
                dashboard_for=lambda url, token: RunningHead(),
                load=tracker,
            )
        )

    one_pass()  # creates the cluster: no head to ask yet
    assert pages.calls == []
    assert ("Deployment", names.head) in client.objects
    one_pass()
    assert pages.calls == [HEAD_URL, "http://10.244.1.7:8080/metrics"]
    load = client.status_patches[-1]["load"]
    assert load == {"ongoingRequests": 6.27, "requestsPerSecond": 0.0}
    assert client.status_patches[-1]["engine"] == "torch-dynamic-batching"


def test_the_reconcile_writes_a_language_models_tokens_and_sequences() -> None:
    obj = make_deployment({"spec.model": {"uri": "builtin://smollm2-135m-instruct"}}, name=APP)
    obj["metadata"].update({"namespace": "ml", "uid": "u", "generation": 1})
    client = FakeClient()
    node = node_page({"a": 10.0}) + llm_page({"a": 500.0}, running={"a": 7.0}, waiting={})
    pages = Pages({HEAD_URL: head_page(7.0), "http://10.244.1.7:8080/metrics": node})
    tracker = LoadTracker(pages)
    for _ in range(2):  # the first pass creates the cluster
        asyncio.run(
            reconcile_deployment(
                client,
                obj,
                settings=Settings(runtime_image="registry.example/runtime:1"),
                now=datetime(2026, 11, 30, tzinfo=UTC),
                dashboard_for=lambda url, token: RunningHead(),
                load=tracker,
            )
        )
    status = client.status_patches[-1]
    assert status["engine"] == GENERATION_ENGINE
    # A first read cannot tell a rate yet, and there is no earlier figure to keep: 0.
    assert status["load"] == {
        "ongoingRequests": 7.0,
        "requestsPerSecond": 0.0,
        "tokensPerSecond": 0.0,
        "runningSequences": 7,
        "waitingSequences": 0,
    }
