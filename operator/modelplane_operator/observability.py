"""The operator's own metrics and structured logs.

Metrics (prometheus-client, served on `--metrics-port`):

- `modelplane_reconcile_duration_seconds{kind}`: one reconcile pass, histogram;
- `modelplane_reconcile_errors_total{kind}`: passes that raised (retried on a doubling backoff);
- `modelplane_resources{kind,phase}`: resources by the phase their last pass derived;
- `modelplane_scale_decisions_total{direction}`: worker Deployment resizes, up or down.

Logs: with `--log-format json` every line is one JSON object; a line logged while a
resource is being reconciled carries its kind, namespace and name (a context variable set
around each pass, so log calls deep in the reconcile need not repeat them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
RECONCILE_SECONDS = Histogram(
    "modelplane_reconcile_duration_seconds",
    "Seconds one reconcile pass took.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "modelplane_reconcile_errors",
    "Reconcile passes that raised; the work queue retries them on a doubling backoff.",
    ["kind"],
    registry=REGISTRY,
)
SCALE_DECISIONS = Counter(
    "modelplane_scale_decisions",
    "Worker Deployment resizes made by the deployment passes.",
    ["direction"],
    registry=REGISTRY,
)

_resource: ContextVar[tuple[str, str, str] | None] = ContextVar("resource", default=None)


class _Phases(Collector):
    """`modelplane_resources{kind,phase}` from the last phase of every resource seen."""

    def __init__(self) -> None:
        self.phases: dict[tuple[str, str, str], str] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "modelplane_resources", "Resources by kind and phase.", labels=["kind", "phase"]
        )
        counts: dict[tuple[str, str], int] = {}
        for (kind, _, _), phase in list(self.phases.items()):
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for (kind, phase), count in sorted(counts.items()):
            family.add_metric([kind, phase], count)
        yield family


PHASES = _Phases()
REGISTRY.register(PHASES)


def record_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """The phase a pass derived; None forgets the resource (deleted)."""
    if phase is None:
        PHASES.phases.pop((kind, namespace, name), None)
    else:
        PHASES.phases[(kind, namespace, name)] = phase


@contextlib.contextmanager
def reconciling(kind: str, namespace: str, name: str) -> Iterator[None]:
    """Around one pass: its duration, and the resource on every log line. The caller
    counts a failed pass (`failed`), since it also decides what a failure means."""
    token = _resource.set((kind, namespace, name))
    started = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        _resource.reset(token)


def failed(kind: str) -> None:
    RECONCILE_ERRORS.labels(kind).inc()


def scaled(direction: str) -> None:
    SCALE_DECISIONS.labels(direction).inc()


def serve_metrics(port: int) -> None:
    """Serve /metrics on `port` from a daemon thread."""
    start_http_server(port, registry=REGISTRY)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the resource."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        resource = _resource.get()
        if resource is not None:
            line["kind"], line["namespace"], line["name"] = resource
        else:
            # kopf's per-object loggers name the object themselves.
            ref = getattr(record, "k8s_ref", None)
            if isinstance(ref, dict):
                line["kind"] = ref.get("kind")
                line["namespace"] = ref.get("namespace")
                line["name"] = ref.get("name")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


class TextFormatter(logging.Formatter):
    """Plain lines, prefixed with the resource being reconciled."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        resource = _resource.get()
        if resource is None:
            return text
        kind, namespace, name = resource
        return f"[{kind} {namespace}/{name}] {text}"


def configure_logging(log_format: str) -> None:
    """Give every root handler (kopf installs one) the chosen formatter."""
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter)
