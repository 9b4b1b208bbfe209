"""The Ray Serve application: one deployment, `model`, that answers OIP v2 and `/predict`.

`build_app` is the Serve config's `import_path` (`modelplane_runtime.serve.app:build_app`);
Serve validates the config's `args` into `ServeArgs` and the deployment's `user_config`
into `BatchingConfig`, which `reconfigure` applies live. Requests are parsed one by one
(a bad one gets its own 4xx and never reaches the model), then `@serve.batch` gathers
concurrent ones into one forward pass.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures'
# annotations at run time, and Serve's ingress wrapper loses the module globals that
# would resolve string annotations (a `request: Request` would become a query parameter).

import asyncio
import logging
import time
from typing import Any

import numpy as np
import ray
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException

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

api = FastAPI(title="modelplane model server", docs_url=None, redoc_url=None)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # Unknown paths and methods answer in the same {"error": ...} shape as bad requests.
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": f"{request.method} {request.url.path}: {exc.detail}", "code": code},
        status_code=exc.status_code,
    )


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(
        {
            "error": f"{request.method} {request.url.path}: {exc.errors()}",
            "code": "invalid_request",
        },
        status_code=400,
    )


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
@serve.ingress(api)
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

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[RawData]) -> list[Prediction]:
        self.waiting -= len(requests)
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

    async def _predict(self, raw: RawData) -> Prediction:
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        return await self._batched(raw)

    def _check_model(self, name: str) -> None:
        if name != self.signature.name:
            raise RequestError(
                404,
                "unknown_model",
                f"no model named {name!r}; this server serves {self.signature.name!r}",
            )

    async def _answer(self, request: Request, endpoint: str, name: str | None) -> JSONResponse:
        started = time.perf_counter()
        try:
            if name is not None:
                self._check_model(name)
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
                prediction = await self._predict(raw)
                body = infer_response(
                    signature=self.signature,
                    labels=prediction.labels,
                    probabilities=prediction.probabilities,
                    request_id=request_id,
                )
            else:
                prediction = await self._predict(parse_predict(payload, self.signature))
                body = predict_response(
                    signature=self.signature,
                    labels=prediction.labels,
                    probabilities=prediction.probabilities,
                )
            status = 200
        except RequestError as error:
            body, status = error.body(), error.status
        self.metrics.answered(endpoint=endpoint, code=status, seconds=time.perf_counter() - started)
        return JSONResponse(body, status_code=status)

    @api.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> dict[str, bool]:
        # A replica exists only after its model loaded and passed the start-up check.
        return {"ready": True}

    @api.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "modelplane", "version": "0.1.0", "extensions": []}

    @api.get("/v2/models/{name}")
    async def model_metadata(self, name: str) -> JSONResponse:
        try:
            self._check_model(name)
        except RequestError as error:
            return JSONResponse(error.body(), status_code=error.status)
        metadata = self.signature.metadata()
        metadata["parameters"]["batching"] = self.batching.model_dump()
        metadata["parameters"]["digest"] = self.predictor.digest
        return JSONResponse(metadata)

    @api.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str) -> JSONResponse:
        try:
            self._check_model(name)
        except RequestError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return JSONResponse({"name": name, "ready": True})

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> JSONResponse:
        return await self._answer(request, "infer", name)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: str, request: Request) -> JSONResponse:
        if version != self.signature.version:
            error = RequestError(
                404,
                "unknown_version",
                f"model {name!r} has version {self.signature.version!r}, not {version!r}",
            )
            return JSONResponse(error.body(), status_code=error.status)
        return await self._answer(request, "infer", name)

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        return await self._answer(request, "predict", None)


def build_app(args: dict[str, Any] | ServeArgs) -> Application:
    """The Serve config's import path. The config's `args` arrive as a dict and are
    validated here, so a bad config fails the deployment with pydantic's message."""
    return ModelServer.bind(ServeArgs.model_validate(args))  # type: ignore[attr-defined,no-any-return]
