"""The Serve app's replica class called directly, without Ray: every failure is a JSON
error with a stable code, an oversized body is refused before it is read, and the queue
depth returns to 0 when clients leave mid-flight. The model is a stand-in whose forward
pass the test controls (slow, failing), so these run in a second."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from starlette.requests import Request
from starlette.responses import Response

from modelplane_runtime.contract import ServeArgs
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.serve.predictor import Prediction
from modelplane_runtime.serve.protocol import MAX_BODY_BYTES

# Replicas import Ray Serve in Ray's workers, where its pydantic-v1-style Fields only
# warn; in this process the suite's filterwarnings=error would turn that into a failure.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from ray.serve import batching

    from modelplane_runtime.serve import app as app_module

# `serve.deployment` makes a Deployment of the class; mypy sees the class itself.
ModelServer: Any = app_module.ModelServer.func_or_class  # type: ignore[attr-defined]

Forward = Callable[[RawData], Prediction]


def positive(raw: RawData) -> Prediction:
    count = len(raw)
    return Prediction(labels=["pos"] * count, probabilities=np.tile([0.2, 0.8], (count, 1)))


class FakePredictor:
    """What the app reads of a Predictor; `forward` is the model's forward pass."""

    forward: Forward = staticmethod(positive)

    def __init__(self, args: ServeArgs) -> None:
        self.digest = "sha256:" + "ab" * 32
        self.kind = "text"
        self.labels = ["neg", "pos"]
        self.input_shape: list[int] = []
        self.card = {"architecture": "stand-in"}
        self.device = torch.device("cpu")

    def predict(self, raw: RawData) -> Prediction:
        return type(self).forward(raw)

    def healthy(self) -> None:
        pass


@dataclass
class FakeMetrics:
    """Records what the app publishes instead of exporting it."""

    model: str
    queue_depth_values: list[float] = field(default_factory=list)
    answered_codes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue_depth = self

    def set(self, value: float) -> None:
        self.queue_depth_values.append(value)

    def answered(self, *, endpoint: str, code: int, seconds: float) -> None:
        self.answered_codes.append(code)

    def batch(self, *, requests: int, items: int) -> None:
        pass


def _nothing(*args: object) -> None:
    pass


@pytest.fixture
def make_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """`make_server(forward=..., max_batch_size=..., batch_wait_timeout_s=...)`: a replica
    serving `sentiment` with a stand-in model; call it inside the test's event loop."""
    monkeypatch.setattr(app_module, "Predictor", FakePredictor)
    monkeypatch.setattr(app_module, "ServeMetrics", FakeMetrics)
    # The batcher compares its size with the replica's max_ongoing_requests, which only
    # exists inside a Serve replica; the comparison only ever logs a warning.
    monkeypatch.setattr(
        batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", _nothing
    )
    # Serve's batcher keeps one queue per decorated method (a replica process holds one
    # instance) and binds it to the event loop it first ran in; each test runs its own
    # loop, so each starts with no queue.
    batcher = ModelServer._batched.set_max_batch_size.__self__
    monkeypatch.setattr(batcher, "_queue", None)
    threads = torch.get_num_threads()

    def make(forward: Forward = positive, **batching: Any) -> Any:
        monkeypatch.setattr(FakePredictor, "forward", staticmethod(forward))
        args = ServeArgs(model_name="sentiment", model_uri="file:///unused", threads=threads)
        server = ModelServer(args)
        server.reconfigure(batching)
        return server

    yield make
    torch.set_num_threads(threads)
    if batcher._queue is not None:
        # Its loop is closed; without this, the queue's __del__ would open a new event
        # loop to cancel a task that no longer runs, and leave that loop's sockets open.
        batcher._queue._handle_batch_task = None


@dataclass
class Body:
    """A request body as the ASGI server hands it over, counting the chunks read."""

    chunks: Iterator[bytes]
    read: int = 0

    async def receive(self) -> dict[str, Any]:
        chunk = next(self.chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}


def request(
    method: str,
    path: str,
    body: bytes | Body = b"",
    *,
    headers: dict[str, str] | None = None,
) -> Request:
    if isinstance(body, bytes):
        headers = {"content-length": str(len(body)), **(headers or {})}
        body = Body(iter([body] if body else []))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "scheme": "http",
        "server": ("replica", 8000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    return Request(scope, body.receive)


def predict(*texts: str) -> Request:
    return request("POST", "/predict", json.dumps({"inputs": list(texts)}).encode())


def answer(response: Response) -> tuple[int, Any]:
    return response.status_code, json.loads(bytes(response.body))


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(main())


def fails(error: BaseException) -> Forward:
    def forward(raw: RawData) -> Prediction:
        raise error

    return forward


FAILURES = [
    (
        "the model raising in its forward pass is an internal error with its class and message",
        fails(ValueError("weights went NaN")),
        lambda: predict("fine"),
        500,
        "internal",
        "ValueError: weights went NaN",
    ),
    (
        "the model timing out is a timeout",
        fails(TimeoutError("the GPU did not answer")),
        lambda: predict("fine"),
        504,
        "timeout",
        "TimeoutError: the GPU did not answer",
    ),
    (
        "an unknown route is a 404",
        positive,
        lambda: request("GET", "/v3/models"),
        404,
        "not_found",
        "no such endpoint",
    ),
    (
        "a GET on an inference route is a 405 naming POST",
        positive,
        lambda: request("GET", "/v2/models/sentiment/infer"),
        405,
        "method_not_allowed",
        "use POST",
    ),
    (
        "malformed JSON is a 400",
        positive,
        lambda: request("POST", "/v2/models/sentiment/infer", b"{oops"),
        400,
        "invalid_json",
        "not JSON",
    ),
    (
        "a body over the limit is a 413",
        positive,
        lambda: request("POST", "/predict", b" " * (MAX_BODY_BYTES + 1)),
        413,
        "too_large",
        f"at most {MAX_BODY_BYTES}",
    ),
    (
        "a Content-Length that is not a number is a 400",
        positive,
        lambda: request("POST", "/predict", Body(iter([])), headers={"content-length": "lots"}),
        400,
        "invalid_request",
        "Content-Length",
    ),
]


@pytest.mark.parametrize(
    ("forward", "make_request", "status", "code", "says"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
def test_every_failure_is_a_json_error_with_a_stable_code(
    make_server: Callable[..., Any],
    forward: Forward,
    make_request: Callable[[], Request],
    status: int,
    code: str,
    says: str,
) -> None:
    async def main() -> Response:
        server = make_server(forward)
        response: Response = await server(make_request())
        return response

    response = run(main)
    assert response.media_type == "application/json"
    got, body = answer(response)
    assert (got, body["code"]) == (status, code), body
    assert says in body["error"]
    assert "Traceback" not in body["error"]


def test_a_failure_outside_the_model_is_an_internal_error_too(
    make_server: Callable[..., Any],
) -> None:
    async def main() -> Response:
        server = make_server()
        server.batching = None  # metadata now fails in a way no handler anticipates
        response: Response = await server(request("GET", "/v2/models/sentiment"))
        return response

    got, body = answer(run(main))
    assert (got, body["code"]) == (500, "internal")
    assert body["error"].startswith("the server failed: AttributeError:")


def test_a_batch_cancelled_under_a_waiting_request_is_a_503_to_retry(
    make_server: Callable[..., Any],
) -> None:
    async def main() -> Response:
        server = make_server()

        async def cancelled_batch(waiting: Any) -> Prediction:
            raise asyncio.CancelledError  # as when Serve cancels the batch's future

        server._batched = cancelled_batch
        response: Response = await server(predict("fine"))
        assert server.waiting == 0
        return response

    response = run(main)
    assert answer(response) == (
        503,
        {
            "code": "cancelled",
            "error": "the batch this request was in was cancelled (the replica may be "
            "stopping); retry",
        },
    )
    assert response.headers["retry-after"] == "1"


def test_a_failed_batch_answers_each_request_and_logs_one_traceback(
    make_server: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> list[Response]:
        server = make_server(
            fails(RuntimeError("CUDA error")), max_batch_size=3, batch_wait_timeout_s=1.0
        )
        responses: list[Response] = await asyncio.gather(
            *(server(predict(f"text {n}")) for n in range(3))
        )
        return responses

    with caplog.at_level(logging.INFO):
        responses = run(main)
    assert [answer(r)[0] for r in responses] == [500, 500, 500]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in tracebacks] == ["the forward pass over 3 requests failed"]


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
    make_server: Callable[..., Any],
) -> None:
    body = Body(iter([b'{"inputs": ["fine"]}']))
    huge = request("POST", "/predict", body, headers={"content-length": str(1 << 30)})

    async def main() -> Response:
        response: Response = await make_server()(huge)
        return response

    got, error = answer(run(main))
    assert (got, error["code"]) == (413, "too_large")
    assert f"{1 << 30} bytes" in error["error"]
    assert body.read == 0


def test_a_chunked_body_stops_being_read_once_it_passes_the_limit(
    make_server: Callable[..., Any],
) -> None:
    megabyte = b" " * (1 << 20)
    body = Body(iter([megabyte] * 64))  # no Content-Length; 4 times the limit in all

    async def main() -> Response:
        response: Response = await make_server()(request("POST", "/predict", body))
        return response

    got, error = answer(run(main))
    assert (got, error["code"]) == (413, "too_large")
    assert body.read == MAX_BODY_BYTES // (1 << 20) + 1


def test_cancelled_requests_leave_the_queue_depth_at_zero(
    make_server: Callable[..., Any],
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(raw: RawData) -> Prediction:
        started.set()
        release.wait(timeout=30)
        return positive(raw)

    async def main() -> tuple[Any, list[int]]:
        # One request per batch: the first is in the forward pass, the rest wait for it.
        server = make_server(slow, max_batch_size=1, batch_wait_timeout_s=0.0)
        tasks = [asyncio.create_task(server(predict("fine"))) for _ in range(5)]
        try:
            await asyncio.to_thread(started.wait, 10)
            await _until(lambda: server.waiting == 4)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            release.set()
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        return server, server.metrics.answered_codes

    server, codes = run(main)
    assert server.waiting == 0
    assert server.metrics.queue_depth_values[-1] == 0
    assert codes == [499] * 5


def test_an_answered_request_leaves_the_queue_depth_at_zero(
    make_server: Callable[..., Any],
) -> None:
    async def main() -> tuple[Any, Response]:
        server = make_server()
        response = await server(predict("fine", "great"))
        return server, response

    server, response = run(main)
    status, body = answer(response)
    assert status == 200, body
    assert [p["label"] for p in body["predictions"]] == ["pos", "pos"]
    assert server.waiting == 0
    assert server.metrics.answered_codes == [200]


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
