"""Requests in the Open Inference Protocol v2 and /predict become inputs or a 4xx that
names the problem; no Ray, no torch."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelplane_runtime.serve import protocol
from modelplane_runtime.serve.protocol import (
    MAX_BODY_BYTES,
    ErrorCode,
    ModelSignature,
    RequestError,
    infer_response,
    parse_infer,
    parse_json,
    parse_predict,
    read_body,
    unexpected,
)

TEXT = ModelSignature(
    name="sentiment", version="abc", kind="text", labels=["neg", "pos"], max_items=4
)
TABLE = ModelSignature(
    name="cancer", version="abc", kind="tabular", labels=["a", "b"], input_shape=[3], max_items=4
)
IMAGE = ModelSignature(
    name="digits", version="abc", kind="image", labels=["0", "1"], input_shape=[1, 2, 2]
)


def text_request(**tensor: Any) -> dict[str, Any]:
    base = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good", "bad"]}
    return {"inputs": [{**base, **tensor}]}


def table_request(**tensor: Any) -> dict[str, Any]:
    base = {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}
    return {"inputs": [{**base, **tensor}]}


def test_text_tensors_become_texts_and_keep_the_request_id() -> None:
    raw, request_id = parse_infer({**text_request(), "id": "r1"}, TEXT)
    assert raw.texts == ("good", "bad")
    assert request_id == "r1"


def test_float_tensors_are_reshaped_to_examples() -> None:
    raw, _ = parse_infer(table_request(shape=[2, 3], data=[[1, 2, 3], [4, 5, 6]]), TABLE)
    assert raw.array is not None
    assert raw.array.shape == (2, 3)
    assert raw.array.dtype == np.float32
    image, _ = parse_infer(
        table_request(shape=[1, 1, 2, 2], data=[0.1, 0.2, 0.3, 0.4], datatype="FP64"), IMAGE
    )
    assert image.array is not None
    assert image.array.shape == (1, 1, 2, 2)


def test_predict_takes_a_plain_list() -> None:
    assert parse_predict({"inputs": ["fine"]}, TEXT).texts == ("fine",)
    raw = parse_predict({"inputs": [[1, 2, 3]]}, TABLE)
    assert raw.array is not None
    assert raw.array.tolist() == [[1.0, 2.0, 3.0]]


BAD_INFER = [
    ("a list instead of an object", TEXT, [], 400, "invalid_request"),
    ("no inputs", TEXT, {"id": "x"}, 400, "invalid_request"),
    ("two input tensors", TEXT, {"inputs": [text_request()["inputs"][0]] * 2}, 400, "wrong_inputs"),
    (
        "a tensor without data",
        TEXT,
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]},
        400,
        "invalid_request",
    ),
    ("an unknown input name", TEXT, text_request(name="sentence"), 400, "unknown_input"),
    (
        "numbers for a text model",
        TEXT,
        text_request(datatype="FP32", data=[1.0, 2.0]),
        400,
        "wrong_datatype",
    ),
    ("a number among texts", TEXT, text_request(data=["good", 3]), 400, "wrong_datatype"),
    ("a shape that disagrees with the data", TEXT, text_request(shape=[3]), 400, "shape_mismatch"),
    ("a two-dimensional text shape", TEXT, text_request(shape=[2, 1]), 400, "wrong_shape"),
    ("a negative shape", TEXT, text_request(shape=[-2]), 400, "wrong_shape"),
    ("an empty batch", TEXT, text_request(shape=[0], data=[]), 400, "empty_batch"),
    ("more inputs than allowed", TEXT, text_request(shape=[5], data=["a"] * 5), 413, "too_large"),
    (
        "text for a table model",
        TABLE,
        table_request(datatype="BYTES", data=["a", "b", "c"]),
        400,
        "wrong_datatype",
    ),
    ("integers for a table model", TABLE, table_request(datatype="INT64"), 400, "wrong_datatype"),
    (
        "a row of the wrong width",
        TABLE,
        table_request(shape=[1, 4], data=[1, 2, 3, 4]),
        400,
        "wrong_shape",
    ),
    ("fewer values than the shape", TABLE, table_request(shape=[2, 3]), 400, "shape_mismatch"),
    (
        "strings inside a float tensor",
        TABLE,
        table_request(data=[1, "x", 3]),
        400,
        "wrong_datatype",
    ),
    ("a NaN", TABLE, table_request(data=[1.0, float("nan"), 3.0]), 400, "not_finite"),
]


@pytest.mark.parametrize(
    ("signature", "payload", "status", "code"),
    [case[1:] for case in BAD_INFER],
    ids=[case[0] for case in BAD_INFER],
)
def test_a_bad_inference_request_gets_a_4xx_that_names_the_problem(
    signature: ModelSignature, payload: Any, status: int, code: str
) -> None:
    with pytest.raises(RequestError) as caught:
        parse_infer(payload, signature)
    assert (caught.value.status, caught.value.code) == (status, code)
    body = caught.value.body()
    assert set(body) == {"error", "code"}
    assert len(body["error"]) > 15


BAD_PREDICT = [
    ("no inputs key", TEXT, {"text": ["a"]}, "invalid_request"),
    ("inputs that are not a list", TEXT, {"inputs": "a"}, "invalid_request"),
    ("an empty list", TEXT, {"inputs": []}, "empty_batch"),
    ("rows of the wrong width", TABLE, {"inputs": [[1, 2]]}, "wrong_shape"),
    ("ragged rows", TABLE, {"inputs": [[1, 2, 3], [1]]}, "wrong_shape"),
]


@pytest.mark.parametrize(
    ("signature", "payload", "code"),
    [case[1:] for case in BAD_PREDICT],
    ids=[case[0] for case in BAD_PREDICT],
)
def test_a_bad_predict_request_gets_a_400(
    signature: ModelSignature, payload: Any, code: str
) -> None:
    with pytest.raises(RequestError) as caught:
        parse_predict(payload, signature)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"", "invalid_json"), (b"{not json", "invalid_json"), (b"\xff\xfe", "invalid_json")],
    ids=["an empty body", "broken JSON", "bytes that are not text"],
)
def test_a_body_that_is_not_json_is_refused(body: bytes, code: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_json(body)
    assert (caught.value.status, caught.value.code) == (400, code)


def test_an_oversized_body_is_refused_before_parsing() -> None:
    with pytest.raises(RequestError) as caught:
        parse_json(b" " * (MAX_BODY_BYTES + 1))
    assert caught.value.status == 413


def test_the_response_carries_labels_and_flat_probabilities() -> None:
    response = infer_response(
        signature=TEXT,
        labels=["pos"],
        probabilities=np.array([[0.25, 0.75]], dtype=np.float32),
        request_id="r1",
    )
    outputs = {o["name"]: o for o in response["outputs"]}
    assert outputs["label"] == {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["pos"]}
    assert outputs["probabilities"]["shape"] == [1, 2]
    assert outputs["probabilities"]["data"] == [0.25, 0.75]
    assert response["id"] == "r1"
    json.dumps(response)


def test_metadata_describes_the_input_and_both_outputs() -> None:
    metadata = TABLE.metadata()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]
    assert metadata["outputs"][1]["shape"] == [-1, 2]


class Chunks:
    """An ASGI body as `request.stream()` yields it, counting the chunks taken."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.taken += 1
            yield chunk


def read(chunks: Chunks, declared: str | None, limit: int = 10) -> bytes:
    return asyncio.run(read_body(aiter(chunks), declared_length=declared, limit=limit))


def test_a_body_within_the_limit_is_read_whole() -> None:
    assert read(Chunks(b"12345", b"67890"), "10") == b"1234567890"
    assert read(Chunks(b"12345", b"67890"), None) == b"1234567890"


READ_REFUSALS = [
    ("a declared length over the limit, before any chunk", Chunks(b"{}"), "11", 413, 0),
    ("a declared length of a gibibyte", Chunks(b"{}"), str(1 << 30), 413, 0),
    ("a Content-Length that is not a number", Chunks(b"{}"), "ten", 400, 0),
    ("a negative Content-Length", Chunks(b"{}"), "-1", 400, 0),
    ("chunks without a length, at the chunk that passes it", Chunks(*[b"1234"] * 9), None, 413, 3),
    ("chunks beyond a length that understated them", Chunks(*[b"1234"] * 9), "4", 413, 3),
]


@pytest.mark.parametrize(
    ("chunks", "declared", "status", "taken"),
    [case[1:] for case in READ_REFUSALS],
    ids=[case[0] for case in READ_REFUSALS],
)
def test_a_body_is_refused_as_soon_as_it_is_known_to_be_bad(
    chunks: Chunks, declared: str | None, status: int, taken: int
) -> None:
    with pytest.raises(RequestError) as caught:
        read(chunks, declared)
    assert caught.value.status == status
    assert caught.value.code == ("too_large" if status == 413 else "invalid_request")
    assert chunks.taken == taken


@pytest.mark.parametrize(
    ("error", "status", "code", "message"),
    [
        (ValueError("NaN weights"), 500, "internal", "ValueError: NaN weights"),
        (KeyError("label"), 500, "internal", "KeyError: 'label'"),
        (TimeoutError("no answer"), 504, "timeout", "TimeoutError: no answer"),
    ],
    ids=["a model error", "a bug", "a timeout"],
)
def test_an_unexpected_exception_shows_only_its_class_and_message(
    error: Exception, status: int, code: str, message: str
) -> None:
    refusal = unexpected(error)
    assert (refusal.status, refusal.code) == (status, code)
    assert refusal.body() == {"error": refusal.message, "code": code}
    assert refusal.message.endswith(message)


def test_only_a_503_asks_to_retry_after_a_second() -> None:
    assert RequestError(503, ErrorCode.CANCELLED, "retry").headers() == {"Retry-After": "1"}
    assert RequestError(500, ErrorCode.INTERNAL, "failed").headers() == {}


DOCS = Path(__file__).parents[2] / "docs" / "operations.md"


@pytest.mark.parametrize("code", list(ErrorCode), ids=[c.value for c in ErrorCode])
def test_every_error_code_is_documented_for_clients_and_operators(code: ErrorCode) -> None:
    assert re.search(rf"\b{code.value}\b", protocol.__doc__ or "")
    section = DOCS.read_text().split("## Serving errors")[1].split("\n## ")[0]
    assert f"`{code.value}`" in section
