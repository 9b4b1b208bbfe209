"""The operator's client reads what rank 0's progress server serves."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from lightkube import AsyncClient

from modelplane_harness.cluster import free_port
from modelplane_operator.client import Client
from modelplane_runtime.train.progress import ProgressReporter


async def poll(port: int) -> dict[str, Any] | None:
    client = Client(api=cast(AsyncClient, SimpleNamespace()))
    try:
        return await client.progress("127.0.0.1", port)
    finally:
        if client._http is not None:
            await client._http.close()


def test_the_operator_reads_rank_0s_progress() -> None:
    reporter = ProgressReporter(port=free_port(), host="127.0.0.1")
    try:
        reporter.update(phase="training", epoch=2, step=30, total_steps=120, loss=0.4)
        progress = asyncio.run(poll(reporter.port))
    finally:
        reporter.close()
    assert progress is not None
    assert (progress["epoch"], progress["step"], progress["percent"]) == (2, 30, 25)


def test_a_silent_rank_0_is_no_progress_not_an_error() -> None:
    assert asyncio.run(poll(free_port())) is None


class _GoneClient:
    """The socket of a poller that gave up waiting and closed."""

    def write(self, data: bytes) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_poller_that_hung_up_costs_no_traceback_in_the_training_log() -> None:
    reporter = ProgressReporter(port=free_port(), host="127.0.0.1")
    try:
        handler_class = reporter._handler()
        handler = handler_class.__new__(handler_class)
        handler.path, handler.command = "/progress", "GET"
        handler.request_version, handler.requestline = "HTTP/1.1", "GET /progress HTTP/1.1"
        handler.client_address = ("127.0.0.1", 0)
        handler.wfile = _GoneClient()  # type: ignore[assignment]
        handler.do_GET()  # type: ignore[attr-defined]  # socketserver prints what it raises
    finally:
        reporter.close()
