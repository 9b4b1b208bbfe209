"""The Ray Serve application: one deployment, `model`, that answers OIP v2 and `/predict`.

`build_app` is the Serve config's `import_path` (`modelplane_runtime.serve.app:build_app`);
the config's `args` are validated into `ServeArgs` and the deployment's `user_config` into
`BatchingConfig`, which `reconfigure` applies live. Requests are parsed one by one (a bad
one gets its own 4xx and never reaches the model), then `@serve.batch` gathers concurrent
ones into one forward pass.

Every failure, anticipated or not, is answered with the JSON error body and stable code of
`protocol.ErrorCode` (the table is in protocol.py's docstring); an unexpected exception is
logged with its traceback once, here, and the client sees only its class and message. A
request whose client went away (its task cancelled) gets no answer, since nobody reads it,
but still leaves the queue-depth count.

HTTP goes straight to the deployment's `__call__` with a small router instead of through a
FastAPI ingress: on 2 cores FastAPI's middleware, routing and dependency solving cost
about as much CPU per request as the rest of the replica's work (measured with py-spy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from modelplane_runtime.contract import SERVE_DEPLOYMENT, BatchingConfig, ServeArgs
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.serve.metrics import ServeMetrics
from modelplane_runtime.serve.model_cache import is_language_model
from modelplane_runtime.serve.predictor import Prediction, Predictor, pick_device
from modelplane_runtime.serve.protocol import (
    ErrorCode,
    ModelSignature,
    RequestError,
    infer_response,
    parse_infer,
    parse_json,
    parse_predict,
    predict_response,
    read_body,
    unexpected,
)

BINARY_HEADER = "inference-header-content-length"
# nginx's status for a client that closed the connection before its answer: what the
# requests metric records for a cancelled request (no response is sent).
CLIENT_CLOSED = 499
log = logging.getLogger("modelplane.serve")

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json"
    )


def _error(error: RequestError) -> Response:
    response = _json(error.body(), error.status)
    response.headers.update(error.headers())
    return response


def _cancelled_here() -> bool:
    """Whether the running task itself is being cancelled (its client left, or Serve gave
    up on it), as opposed to a CancelledError raised out of something it awaited."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass
class _Waiting:
    """One request's inputs on their way into a batch. `queued` is true while the request
    is counted in `ModelServer.waiting`; whoever takes it out first (the batch that starts
    it, or the request leaving early) clears it, so the count is decremented exactly once."""

    raw: RawData
    queued: bool = True


def _merge(requests: list[RawData]) -> RawData:
    if requests[0].kind == "text":
        return RawData(kind="text", texts=tuple(t for r in requests for t in r.texts))
    arrays = [r.array for r in requests if r.array is not None]
    return RawData(kind=requests[0].kind, array=np.concatenate(arrays))


def _replica_threads(args: ServeArgs) -> int:
    if args.threads:
        return args.threads
    try:
        resources = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
        cpus = resources.get("CPU", 1.0)
    except RuntimeError:  # outside Ray (tests calling the class directly)
        cpus = 1.0
    return max(1, int(cpus))


@serve.deployment(name=SERVE_DEPLOYMENT, health_check_period_s=10, health_check_timeout_s=30)
class ModelServer:
    """One replica: the predictor, its batcher and its HTTP routes."""

    def __init__(self, args: ServeArgs) -> None:
        torch.set_num_threads(_replica_threads(args))
        started = time.perf_counter()
        self.language: Any = None  # lm_server.LanguageServer
        if is_language_model(args):
            # A text-generation model answers the OpenAI API instead. transformers takes
            # seconds to import: only these replicas pay it.
            from modelplane_runtime.serve.lm_server import LanguageServer  # noqa: PLC0415

            self.language = LanguageServer(
                args, device=pick_device(args), metrics=ServeMetrics(model=args.model_name)
            )
            return
        if args.generation is not None:
            raise ConfigError(
                f"spec.generation: {args.model_uri} is a classifier; generation settings "
                "are for text-generation models"
            )
        self.predictor = Predictor(args)
        self.signature = ModelSignature(
            name=args.model_name,
            version=self.predictor.digest.removeprefix("sha256:")[:12],
            kind=self.predictor.kind,
            labels=self.predictor.labels,
            input_shape=self.predictor.input_shape if self.predictor.kind != "text" else [],
            max_items=args.max_items_per_request,
        )
        self.metrics = ServeMetrics(model=args.model_name)
        self.waiting = 0
        self.batching = BatchingConfig()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/v2/health/live"), self.live),
            ("GET", re.compile(r"/v2/health/ready"), self.ready),
            ("GET", re.compile(r"/v2"), self.server_metadata),
            ("GET", re.compile(r"/v2/models/(?P<name>[^/]+)"), self.model_metadata),
            ("GET", re.compile(r"/v2/models/(?P<name>[^/]+)/ready"), self.model_ready),
            ("POST", re.compile(r"/v2/models/(?P<name>[^/]+)/infer"), self.infer),
            (
                "POST",
                re.compile(r"/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/infer"),
                self.infer,
            ),
            ("POST", re.compile(r"/predict"), self.predict),
        ]
        log.info(
            "serving %s (%s, digest %s) on %s with %d threads; ready in %.1fs",
            args.model_name,
            self.predictor.card["architecture"],
            self.predictor.digest,
            self.predictor.device,
            torch.get_num_threads(),
            time.perf_counter() - started,
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        if self.language is not None:
            return  # a language model batches by tokens (spec.generation), not requests
        batching = BatchingConfig.model_validate(config)
        self.batching = batching
        batcher: Any = self._batched  # serve.batch's wrapper; its setters are untyped
        batcher.set_max_batch_size(batching.max_batch_size)
        batcher.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        log.info(
            "batching: up to %d requests, waiting up to %.1f ms",
            batching.max_batch_size,
            batching.batch_wait_timeout_s * 1000,
        )

    async def check_health(self) -> None:
        if self.language is not None:
            self.language.generator.healthy()
            return
        await asyncio.to_thread(self.predictor.healthy)

    async def __call__(self, request: Request) -> Response:
        if self.language is not None:
            response: Response = await self.language(request)
            return response
        try:
            return await self._route(request)
        except RequestError as error:
            return _error(error)
        except Exception as error:
            # Without this, Starlette would answer a bare, plain-text 500.
            log.exception("%s %s failed", request.method, request.url.path)
            return _error(unexpected(error))

    async def _route(self, request: Request) -> Response:
        path = request.url.path.removeprefix(request.scope.get("root_path", "")) or "/"
        allowed = []
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(path.rstrip("/") or "/")
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            return await handler(request, match.groupdict())
        if allowed:
            raise RequestError(
                405,
                ErrorCode.METHOD_NOT_ALLOWED,
                f"{request.method} {path}: use {' or '.join(sorted(set(allowed)))}",
            )
        raise RequestError(
            404,
            ErrorCode.NOT_FOUND,
            f"{request.method} {path}: no such endpoint; this server answers "
            "/v2/models/{name}/infer (Open Inference Protocol v2) and /predict",
        )

    def _dequeue(self, waiting: _Waiting) -> None:
        if waiting.queued:
            waiting.queued = False
            self.waiting -= 1

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, waiting: list[_Waiting]) -> list[Prediction | RequestError]:
        """One forward pass for the batch. A failure comes back as every request's answer
        rather than raised: Serve's batcher would log its own traceback for each raise,
        and this way the batch's failure is logged once."""
        for each in waiting:
            self._dequeue(each)
        # Published once per batch, not per request: a Ray metric update costs about as
        # much as parsing a request.
        self.metrics.queue_depth.set(self.waiting)
        requests = [each.raw for each in waiting]
        merged = _merge(requests)
        self.metrics.batch(requests=len(requests), items=len(merged))
        try:
            # The forward pass runs off the event loop, so requests keep arriving (and the
            # next batch keeps filling) while torch computes.
            prediction = await asyncio.to_thread(self.predictor.predict, merged)
        except Exception as error:
            log.exception("the forward pass over %d requests failed", len(requests))
            failed = unexpected(error)
            return [failed] * len(requests)
        answers: list[Prediction | RequestError] = []
        start = 0
        for request in requests:
            end = start + len(request)
            answers.append(
                Prediction(
                    labels=prediction.labels[start:end],
                    probabilities=prediction.probabilities[start:end],
                )
            )
            start = end
        return answers

    async def _predict(self, raw: RawData) -> Prediction:
        """`raw` answered in a batch; counted in `waiting` until its batch starts, and
        taken out of the count on every other way out (a cancelled client included)."""
        waiting = _Waiting(raw)
        self.waiting += 1
        try:
            answer = await self._batched(waiting)
        except asyncio.CancelledError:
            if _cancelled_here():
                raise  # the client left (or Serve gave up on it): nobody reads an answer
            # The batch's future was cancelled under a request that is still waiting.
            raise RequestError(
                503,
                ErrorCode.CANCELLED,
                "the batch this request was in was cancelled (the replica may be stopping); retry",
            ) from None
        finally:
            if waiting.queued:
                self._dequeue(waiting)
                self.metrics.queue_depth.set(self.waiting)
        if isinstance(answer, RequestError):
            raise answer
        return answer

    def _check_model(self, params: dict[str, str]) -> None:
        name = params.get("name")
        if name is not None and name != self.signature.name:
            raise RequestError(
                404,
                ErrorCode.UNKNOWN_MODEL,
                f"no model named {name!r}; this server serves {self.signature.name!r}",
            )
        version = params.get("version")
        if version is not None and version != self.signature.version:
            raise RequestError(
                404,
                ErrorCode.UNKNOWN_VERSION,
                f"model {name!r} has version {self.signature.version!r}, not {version!r}",
            )

    async def _answer(self, request: Request, params: dict[str, str], endpoint: str) -> Response:
        started = time.perf_counter()
        status = CLIENT_CLOSED  # what the metric records if the client leaves first
        try:
            try:
                response = await self._respond(request, params, endpoint)
            except RequestError as error:
                response = _error(error)
            except Exception as error:
                log.exception("%s %s failed", request.method, request.url.path)
                response = _error(unexpected(error))
            status = response.status_code
            return response
        finally:
            self.metrics.answered(
                endpoint=endpoint, code=status, seconds=time.perf_counter() - started
            )

    async def _respond(self, request: Request, params: dict[str, str], endpoint: str) -> Response:
        self._check_model(params)
        if BINARY_HEADER in request.headers:
            raise RequestError(
                415,
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                "binary tensor data is not supported; send JSON tensors "
                "(binary_data=False in Triton's client)",
            )
        body = await read_body(
            request.stream(), declared_length=request.headers.get("content-length")
        )
        payload = parse_json(body)
        if endpoint == "infer":
            raw, request_id = parse_infer(payload, self.signature)
            prediction = await self._predict(raw)
            return _json(
                infer_response(
                    signature=self.signature,
                    labels=prediction.labels,
                    probabilities=prediction.probabilities,
                    request_id=request_id,
                )
            )
        raw = parse_predict(payload, self.signature)
        prediction = await self._predict(raw)
        return _json(
            predict_response(
                signature=self.signature,
                labels=prediction.labels,
                probabilities=prediction.probabilities,
            )
        )

    async def infer(self, request: Request, params: dict[str, str]) -> Response:
        return await self._answer(request, params, "infer")

    async def predict(self, request: Request, params: dict[str, str]) -> Response:
        return await self._answer(request, params, "predict")

    async def live(self, request: Request, params: dict[str, str]) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request, params: dict[str, str]) -> Response:
        # A replica exists only after its model loaded and passed the start-up check.
        return _json({"ready": True})

    async def server_metadata(self, request: Request, params: dict[str, str]) -> Response:
        return _json({"name": "modelplane", "version": "0.1.0", "extensions": []})

    async def model_metadata(self, request: Request, params: dict[str, str]) -> Response:
        self._check_model(params)
        metadata = self.signature.metadata()
        metadata["parameters"]["batching"] = self.batching.model_dump()
        metadata["parameters"]["digest"] = self.predictor.digest
        return _json(metadata)

    async def model_ready(self, request: Request, params: dict[str, str]) -> Response:
        self._check_model(params)
        return _json({"name": params["name"], "ready": True})


def build_app(args: dict[str, Any] | ServeArgs) -> Application:
    """The Serve config's import path. The config's `args` arrive as a dict and are
    validated here, so a bad config fails the deployment with pydantic's message."""
    return ModelServer.bind(ServeArgs.model_validate(args))  # type: ignore[attr-defined,no-any-return]
