"""Rank 0's live progress: `/progress` (JSON) and `/metrics` (Prometheus) over HTTP.

The operator polls `/progress` into `status.progress`; local mode draws its progress bar
from it; Prometheus scrapes `/metrics`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


@dataclass
class Snapshot:
    phase: str = "starting"
    """starting, training, evaluating, saving or done."""
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    """A language model's tokens read per second, all processes (padding excluded)."""
    eta_seconds: int | None = None
    percent: int = 0
    metrics: dict[str, float] | None = None
    """The latest validation metrics."""
    metrics_step: int | None = None
    """The step the latest metrics were computed at (an epoch's end): trials compared at
    the same step line up on it."""


class ProgressReporter:
    """Holds the latest snapshot; serves it when given a port (0 serves nothing)."""

    def __init__(self, *, port: int, host: str = "0.0.0.0") -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._started = time.monotonic()
        self._registry = CollectorRegistry()
        self._gauges = {
            name: Gauge(f"modelplane_training_{name}", doc, registry=self._registry)
            for name, doc in (
                ("epoch", "Current epoch"),
                ("step", "Optimizer steps done"),
                ("total_steps", "Optimizer steps in the run"),
                ("loss", "Recent training loss"),
                ("samples_per_second", "Training throughput, all processes"),
                ("tokens_per_second", "Language-model tokens per second, all processes"),
            )
        }
        self._server: ThreadingHTTPServer | None = None
        if port:
            self._server = ThreadingHTTPServer((host, port), self._handler())
            threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def update(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(self._snapshot, key, value)
            snap = self._snapshot
            if snap.total_steps:
                snap.percent = min(100, int(100 * snap.step / snap.total_steps))
                elapsed = time.monotonic() - self._started
                if snap.step:
                    snap.eta_seconds = int(elapsed / snap.step * (snap.total_steps - snap.step))
            for name, gauge in self._gauges.items():
                value = getattr(snap, name)
                if value is not None:
                    gauge.set(value)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._snapshot)

    def close(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/progress":
                    body = json.dumps(reporter.snapshot()).encode()
                    content_type = "application/json"
                elif self.path == "/metrics":
                    body = generate_latest(reporter._registry)
                    content_type = CONTENT_TYPE_LATEST
                else:
                    self.send_error(404)
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # The poller gave up waiting (a busy node); it asks again next pass.
                    # Left alone, socketserver prints a traceback into the training log.
                    return

            def log_message(self, format: str, *args: Any) -> None:
                return  # polled every few seconds: keep the training log readable

        return Handler
