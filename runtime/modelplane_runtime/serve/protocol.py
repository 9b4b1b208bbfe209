"""Open Inference Protocol v2 (KServe/Triton's HTTP/REST protocol) and the plain `/predict`.

Requests become `RawData` here, or a `RequestError` that says what is wrong with them and
which status it deserves; responses are built here. No Ray, no torch: the tables of
bad requests are tested without starting anything.

Every failure the app answers has the same body on every route, OIP's error object plus a
stable, machine-readable `code` (one of `ErrorCode`):

    {"error": "<what is wrong and how to fix it>", "code": "<code>"}

| code | status | meaning |
|---|---|---|
| invalid_json | 400 | the body is empty or not JSON |
| invalid_request | 400 | not a request of this route (no `inputs`), or a bad Content-Length |
| wrong_inputs, unknown_input | 400 | not exactly the model's one input tensor |
| wrong_datatype, wrong_shape, shape_mismatch, not_finite, empty_batch | 400 | the tensor's data |
| not_found | 404 | no such endpoint |
| unknown_model, unknown_version | 404 | another model's name or version |
| method_not_allowed | 405 | the endpoint exists for another method |
| too_large | 413 | the body is over 16 MiB (refused before it is read) or holds too many inputs |
| unsupported_media_type | 415 | binary tensor data |
| internal | 500 | the model or the server failed; the replica logs the traceback |
| cancelled | 503 | the request's batch was cancelled under it (Retry-After: 1) |
| timeout | 504 | answering timed out inside the replica |

https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from modelplane_runtime.data.raw import RawData

# Tensor datatypes a float input may use (converted to float32); BYTES is text.
FLOAT_TYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}
INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
MAX_BODY_BYTES = 16 << 20


class ErrorCode(StrEnum):
    """The `code` of every error body; clients may branch on these, so they never change."""

    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    WRONG_INPUTS = "wrong_inputs"
    UNKNOWN_INPUT = "unknown_input"
    WRONG_DATATYPE = "wrong_datatype"
    WRONG_SHAPE = "wrong_shape"
    SHAPE_MISMATCH = "shape_mismatch"
    NOT_FINITE = "not_finite"
    EMPTY_BATCH = "empty_batch"
    NOT_FOUND = "not_found"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_VERSION = "unknown_version"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INTERNAL = "internal"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class RequestError(Exception):
    """A request the app cannot answer, with the status it deserves."""

    status: int
    code: ErrorCode
    message: str

    def body(self) -> dict[str, str]:
        # OIP's error object is {"error": "<message>"}; `code` is our addition.
        return {"error": self.message, "code": self.code.value}

    def headers(self) -> dict[str, str]:
        # 503s are worth retrying soon; say when, as Serve's own overload answer does.
        return {"Retry-After": "1"} if self.status == 503 else {}


def unexpected(error: BaseException) -> RequestError:
    """The answer to an exception nobody anticipated: its class and message, nothing more
    (no traceback, no locals), so the client learns what failed without the internals."""
    if isinstance(error, TimeoutError):
        return RequestError(
            504, ErrorCode.TIMEOUT, f"answering timed out: {type(error).__name__}: {error}"
        )
    return RequestError(
        500, ErrorCode.INTERNAL, f"the server failed: {type(error).__name__}: {error}"
    )


async def read_body(
    chunks: AsyncIterator[bytes], *, declared_length: str | None, limit: int = MAX_BODY_BYTES
) -> bytes:
    """The body, read chunk by chunk and refused (413) as soon as it is known to exceed
    `limit`: at once when Content-Length says so, else when the chunks read pass it. A
    client may declare a huge body; buffering it first would let it fill the replica's
    memory before it is refused."""
    if declared_length is not None:
        try:
            declared = int(declared_length)
        except ValueError:
            declared = -1
        if declared < 0:
            raise RequestError(
                400,
                ErrorCode.INVALID_REQUEST,
                f"Content-Length {declared_length!r} is not a byte count",
            )
        if declared > limit:
            raise RequestError(
                413, ErrorCode.TOO_LARGE, f"the body is {declared} bytes; at most {limit}"
            )
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413, ErrorCode.TOO_LARGE, f"the body is over {limit} bytes; at most {limit}"
            )
        parts.append(chunk)
    return b"".join(parts)


@dataclass(frozen=True)
class ModelSignature:
    """What the served model takes and returns, as OIP metadata describes it."""

    name: str
    version: str
    kind: str
    """text, image or tabular."""
    labels: list[str]
    input_shape: list[int] = field(default_factory=list)
    """One example's shape (image/tabular); empty for text."""
    max_items: int = 256

    @property
    def input_name(self) -> str:
        return "text" if self.kind == "text" else "input"

    @property
    def input_datatype(self) -> str:
        return "BYTES" if self.kind == "text" else "FP32"

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "pytorch",
            "inputs": [
                {
                    "name": self.input_name,
                    "datatype": self.input_datatype,
                    "shape": [-1, *self.input_shape],
                }
            ],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.labels)]},
            ],
            "parameters": {"labels": self.labels},
        }


def parse_json(body: bytes) -> Any:
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(
            413, ErrorCode.TOO_LARGE, f"the body is {len(body)} bytes; at most {MAX_BODY_BYTES}"
        )
    if not body.strip():
        raise RequestError(400, ErrorCode.INVALID_JSON, "the body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, ErrorCode.INVALID_JSON, f"the body is not JSON: {exc}") from exc


def _check_count(count: int, signature: ModelSignature) -> None:
    if count == 0:
        raise RequestError(
            400, ErrorCode.EMPTY_BATCH, "the request holds no inputs; send at least one"
        )
    if count > signature.max_items:
        raise RequestError(
            413,
            ErrorCode.TOO_LARGE,
            f"the request holds {count} inputs; at most {signature.max_items} per request",
        )


def _texts(values: list[Any], where: str) -> tuple[str, ...]:
    bad = next((v for v in values if not isinstance(v, str)), None)
    if bad is not None:
        raise RequestError(
            400,
            ErrorCode.WRONG_DATATYPE,
            f"{where}: text inputs must be strings, got {type(bad).__name__} {bad!r:.40}",
        )
    return tuple(values)


def _floats(values: Any, shape: list[int], where: str, dtype: Any) -> np.ndarray[Any, Any]:
    try:
        array = np.asarray(values, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise RequestError(
            400, ErrorCode.WRONG_DATATYPE, f"{where}: data must be numbers ({exc})"
        ) from exc
    if array.size != math.prod(shape):
        raise RequestError(
            400,
            ErrorCode.SHAPE_MISMATCH,
            f"{where}: shape {shape} holds {math.prod(shape)} values, data has {array.size}",
        )
    if not np.isfinite(array).all():
        raise RequestError(400, ErrorCode.NOT_FINITE, f"{where}: data holds NaN or infinity")
    return array.reshape(shape).astype(np.float32)


def _example_shape(shape: list[int], signature: ModelSignature, where: str) -> None:
    if list(shape[1:]) != signature.input_shape:
        raise RequestError(
            400,
            ErrorCode.WRONG_SHAPE,
            f"{where}: shape {shape}; this model takes [N, "
            + ", ".join(map(str, signature.input_shape))
            + "]",
        )


def parse_infer(payload: Any, signature: ModelSignature) -> tuple[RawData, str | None]:
    """An OIP v2 inference request -> (inputs, request id)."""
    if not isinstance(payload, dict):
        raise RequestError(400, ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list):
        raise RequestError(
            400, ErrorCode.INVALID_REQUEST, 'the body needs "inputs": a list of tensors'
        )
    if len(inputs) != 1:
        raise RequestError(
            400,
            ErrorCode.WRONG_INPUTS,
            f"this model takes exactly one input tensor, {signature.input_name!r}; "
            f"got {len(inputs)}",
        )
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise RequestError(400, ErrorCode.INVALID_REQUEST, "each input must be an object")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise RequestError(400, ErrorCode.INVALID_REQUEST, f"the input tensor lacks {missing}")
    name, shape, datatype, data = (tensor[k] for k in ("name", "shape", "datatype", "data"))
    where = f"input {name!r}"
    if name != signature.input_name:
        raise RequestError(
            400,
            ErrorCode.UNKNOWN_INPUT,
            f"unknown input {name!r}; this model's input is {signature.input_name!r}",
        )
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and d >= 0 for d in shape)
    ):
        raise RequestError(
            400,
            ErrorCode.WRONG_SHAPE,
            f"{where}: shape must be a non-empty list of sizes, got {shape}",
        )
    _check_count(shape[0], signature)
    request_id = payload.get("id")
    request_id = str(request_id) if request_id is not None else None
    if signature.kind == "text":
        return _text_tensor(shape, datatype, data, where), request_id
    if datatype not in FLOAT_TYPES:
        kind = "integer" if datatype in INT_TYPES else repr(datatype)
        raise RequestError(
            400,
            ErrorCode.WRONG_DATATYPE,
            f"{where}: datatype {datatype!r} ({kind}); this model takes FP32 (or FP64/FP16)",
        )
    _example_shape(shape, signature, where)
    array = _floats(data, shape, where, FLOAT_TYPES[datatype])
    return RawData(kind=signature.kind, array=array), request_id  # type: ignore[arg-type]


def _text_tensor(shape: list[int], datatype: Any, data: Any, where: str) -> RawData:
    if datatype != "BYTES":
        raise RequestError(
            400, ErrorCode.WRONG_DATATYPE, f"{where}: datatype {datatype!r}; text inputs are BYTES"
        )
    if len(shape) != 1:
        raise RequestError(
            400, ErrorCode.WRONG_SHAPE, f"{where}: shape {shape}; text inputs are [N]"
        )
    if not isinstance(data, list):
        raise RequestError(400, ErrorCode.WRONG_DATATYPE, f"{where}: data must be a list")
    if len(data) != shape[0]:
        raise RequestError(
            400,
            ErrorCode.SHAPE_MISMATCH,
            f"{where}: shape {shape} holds {shape[0]} values, data has {len(data)}",
        )
    return RawData(kind="text", texts=_texts(data, where))


def parse_predict(payload: Any, signature: ModelSignature) -> RawData:
    """`{"inputs": [...]}`: strings for text models, nested number lists otherwise."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(
            400,
            ErrorCode.INVALID_REQUEST,
            'the body must be {"inputs": [...]}, one entry per input',
        )
    values = payload["inputs"]
    if not isinstance(values, list):
        raise RequestError(400, ErrorCode.INVALID_REQUEST, '"inputs" must be a list')
    _check_count(len(values), signature)
    if signature.kind == "text":
        return RawData(kind="text", texts=_texts(values, "inputs"))
    shape = [len(values), *signature.input_shape]
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise RequestError(
            400,
            ErrorCode.WRONG_SHAPE,
            f"inputs: each entry must be numbers shaped {signature.input_shape} ({exc})",
        ) from exc
    _example_shape(list(array.shape), signature, "inputs")
    return RawData(kind=signature.kind, array=_floats(array, shape, "inputs", np.float32))  # type: ignore[arg-type]


def infer_response(
    *,
    signature: ModelSignature,
    labels: list[str],
    probabilities: np.ndarray[Any, Any],
    request_id: str | None,
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "model_name": signature.name,
        "model_version": signature.version,
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels},
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": list(probabilities.shape),
                "data": probabilities.reshape(-1).tolist(),
            },
        ],
    }
    if request_id is not None:
        response["id"] = request_id
    return response


def predict_response(
    *, signature: ModelSignature, labels: list[str], probabilities: np.ndarray[Any, Any]
) -> dict[str, Any]:
    return {
        "model": signature.name,
        "labels": signature.labels,
        "predictions": [
            {
                "label": label,
                "probabilities": dict(zip(signature.labels, row.tolist(), strict=True)),
            }
            for label, row in zip(labels, probabilities, strict=True)
        ],
    }
