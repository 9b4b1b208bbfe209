"""The Ray Serve application: one deployment, `model`, that answers OIP v2 and `/predict`.

`build_app` is the Serve config's `import_path` (`modelplane_runtime.serve.app:build_app`);
the config's `args` are validated into `ServeArgs` and the deployment's `user_config` into
`BatchingConfig`, which `reconfigure` applies live. Requests are parsed one by one (a bad
one gets its own 4xx and never reaches the model), then `@serve.batch` gathers concurrent
ones into one forward pass.

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
from modelplane_runtime.serve.metrics import ServeMetrics
from modelplane_runtime.serve.predictor import Prediction, Predictor
from modelplane_runtime.serve.protocol import (
    ModelSignature,
    RequestError,
    infer_response,
    parse_infer,
    parse_json,
    parse_predict,
    predict_response,
)

BINARY_HEADER = "inference-header-content-length"
log = logging.getLogger("modelplane.serve")

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json"
    )


def _error(error: RequestError) -> Response:
    return _json(error.body(), error.status)


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
        await asyncio.to_thread(self.predictor.healthy)

    async def __call__(self, request: Request) -> Response:
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
            return _error(
                RequestError(
                    405,
                    "method_not_allowed",
                    f"{request.method} {path}: use {' or '.join(sorted(set(allowed)))}",
                )
            )
        return _error(
            RequestError(
                404,
                "not_found",
                f"{request.method} {path}: no such endpoint; this server answers "
                "/v2/models/{name}/infer (Open Inference Protocol v2) and /predict",
            )
        )

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[RawData]) -> list[Prediction]:
        self.waiting -= len(requests)
        # Published once per batch, not per request: a Ray metric update costs about as
        # much as parsing a request.
        self.metrics.queue_depth.set(self.waiting)
        merged = _merge(requests)
        self.metrics.batch(requests=len(requests), items=len(merged))
        # The forward pass runs off the event loop, so requests keep arriving (and the
        # next batch keeps filling) while torch computes.
        prediction = await asyncio.to_thread(self.predictor.predict, merged)
        answers, start = [], 0
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

    def _check_model(self, params: dict[str, str]) -> None:
        name = params.get("name")
        if name is not None and name != self.signature.name:
            raise RequestError(
                404,
                "unknown_model",
                f"no model named {name!r}; this server serves {self.signature.name!r}",
            )
        version = params.get("version")
        if version is not None and version != self.signature.version:
            raise RequestError(
                404,
                "unknown_version",
                f"model {name!r} has version {self.signature.version!r}, not {version!r}",
            )

    async def _answer(self, request: Request, params: dict[str, str], endpoint: str) -> Response:
        started = time.perf_counter()
        try:
            self._check_model(params)
            if BINARY_HEADER in request.headers:
                raise RequestError(
                    415,
                    "unsupported_media_type",
                    "binary tensor data is not supported; send JSON tensors "
                    "(binary_data=False in Triton's client)",
                )
            payload = parse_json(await request.body())
            if endpoint == "infer":
                raw, request_id = parse_infer(payload, self.signature)
                self.waiting += 1
                prediction = await self._batched(raw)
                body = infer_response(
                    signature=self.signature,
                    labels=prediction.labels,
                    probabilities=prediction.probabilities,
                    request_id=request_id,
                )
            else:
                raw = parse_predict(payload, self.signature)
                self.waiting += 1
                prediction = await self._batched(raw)
                body = predict_response(
                    signature=self.signature,
                    labels=prediction.labels,
                    probabilities=prediction.probabilities,
                )
            status = 200
        except RequestError as error:
            body, status = error.body(), error.status
        self.metrics.answered(endpoint=endpoint, code=status, seconds=time.perf_counter() - started)
        return _json(body, status)

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
        try:
            self._check_model(params)
        except RequestError as error:
            return _error(error)
        metadata = self.signature.metadata()
        metadata["parameters"]["batching"] = self.batching.model_dump()
        metadata["parameters"]["digest"] = self.predictor.digest
        return _json(metadata)

    async def model_ready(self, request: Request, params: dict[str, str]) -> Response:
        try:
            self._check_model(params)
        except RequestError as error:
            return _error(error)
        return _json({"name": params["name"], "ready": True})


def build_app(args: dict[str, Any] | ServeArgs) -> Application:
    """The Serve config's import path. The config's `args` arrive as a dict and are
    validated here, so a bad config fails the deployment with pydantic's message."""
    return ModelServer.bind(ServeArgs.model_validate(args))  # type: ignore[attr-defined,no-any-return]
