"""A huggingface text classifier (a tiny BERT folder fine-tuned here) served by the
replica's own code, in this process and without Ray: the predictor answers with the
artifact's probabilities, a batch of requests of different lengths answers each as if it
were alone (the attention mask travels with the ids), and /predict and the Open Inference
Protocol answer exactly as they do for a built-in text classifier."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from starlette.responses import Response

from modelplane_runtime.artifacts import load_artifact
from modelplane_runtime.contract import ServeArgs
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.serve.predictor import TOLERANCE, Predictor
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.runtime.test_hf_classification import hf_config, make_tiny_bert
from tests.serving.conftest import Artifact
from tests.serving.test_app_errors import FakeMetrics, _nothing, answer, request

with warnings.catch_warnings():  # as in test_app_errors: Ray Serve's pydantic-v1 Fields
    warnings.simplefilter("ignore", DeprecationWarning)
    from ray.serve import batching

    from modelplane_runtime.serve import app as app_module

ModelServer: Any = app_module.ModelServer.func_or_class  # type: ignore[attr-defined]

REVIEWS = [
    "what a wonderful film",
    "i would not call the plot good and the music was never exciting either",
    "the acting was dull",
]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    root = tmp_path_factory.mktemp("hf-classifier")
    bert = make_tiny_bert(root / "tiny-bert")
    result = Trainer(hf_config(root, bert, name="sentiment-bert"), env=DistEnv()).fit()
    return Artifact(
        path=root / "out" / "sentiment-bert", digest=result.digest, metrics=result.metrics
    )


def serve_args(model: Artifact, **changes: object) -> ServeArgs:
    return ServeArgs.model_validate(
        {"model_name": "sentiment", "model_uri": model.uri, "expected_digest": model.digest}
        | changes
    )


def alone(model: Artifact, texts: list[str]) -> np.ndarray[Any, Any]:
    """Each text's probabilities from the loaded artifact, one text per forward pass."""
    loaded = load_artifact(model.path)
    rows = [
        loaded.probabilities(loaded.encode(RawData(kind="text", texts=(text,))))[0]
        for text in texts
    ]
    return torch.stack(rows).numpy()


def test_the_predictor_answers_with_the_artifacts_probabilities(hf_model: Artifact) -> None:
    predictor = Predictor(serve_args(hf_model))
    assert predictor.labels == ["negative", "positive"]
    assert predictor.kind == "text"
    prediction = predictor.predict(RawData(kind="text", texts=tuple(REVIEWS)))
    expected = alone(hf_model, REVIEWS)
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-6)
    assert prediction.labels == [predictor.labels[i] for i in expected.argmax(-1)]
    assert prediction.labels[0] == "positive"  # the model learnt: measured p = 0.9+


@pytest.mark.parametrize(
    "optimization",
    [{"dtype": "bf16"}, {"quantization": "int8"}],
    ids=["bf16", "dynamic int8"],
)
def test_an_optimisation_stays_within_its_tolerance(
    hf_model: Artifact, optimization: dict[str, object]
) -> None:
    predictor = Predictor(serve_args(hf_model, **optimization))
    key = "int8" if "quantization" in optimization else "bf16"
    assert predictor.check.max_abs_difference <= TOLERANCE[key]
    assert predictor.check.agreement > 0.9


@pytest.fixture
def make_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Artifact], Any]]:
    """`make_server(model)`: a replica of `model` (the real predictor), batching up to 8
    requests for up to 0.2 s; call it inside the test's event loop."""
    monkeypatch.setattr(app_module, "ServeMetrics", FakeMetrics)
    monkeypatch.setattr(
        batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", _nothing
    )
    batcher = ModelServer._batched.set_max_batch_size.__self__
    monkeypatch.setattr(batcher, "_queue", None)
    threads = torch.get_num_threads()

    def make(model: Artifact) -> Any:
        batcher._queue = None  # one queue per event loop (see test_app_errors)
        server = ModelServer(serve_args(model, threads=threads))
        server.reconfigure({"max_batch_size": 8, "batch_wait_timeout_s": 0.2})
        return server

    yield make
    torch.set_num_threads(threads)
    if batcher._queue is not None:
        batcher._queue._handle_batch_task = None


def _predict(*texts: str) -> Any:
    return request("POST", "/predict", json.dumps({"inputs": list(texts)}).encode())


def _infer(*texts: str) -> Any:
    body = {
        "id": "q1",
        "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}],
    }
    return request("POST", "/v2/models/sentiment/infer", json.dumps(body).encode())


def _serve(server_for: Callable[[], Any], *requests: Any) -> list[tuple[int, Any]]:
    async def main() -> list[Response]:
        server = server_for()
        responses: list[Response] = await asyncio.gather(*(server(r) for r in requests))
        return responses

    return [answer(response) for response in asyncio.run(main())]


def test_requests_batched_together_answer_as_if_each_were_alone(
    hf_model: Artifact, make_server: Callable[[Artifact], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    forward_passes: list[int] = []
    predict = Predictor.predict

    def counted(self: Predictor, raw: RawData) -> Any:
        forward_passes.append(len(raw))
        return predict(self, raw)

    monkeypatch.setattr(Predictor, "predict", counted)
    answers = _serve(lambda: make_server(hf_model), *(_predict(text) for text in REVIEWS))
    assert forward_passes[-1] == len(REVIEWS)  # after the warm-up's: one pass for all three
    assert [status for status, _ in answers] == [200] * len(REVIEWS)
    got = np.array([[*body["predictions"][0]["probabilities"].values()] for _, body in answers])
    np.testing.assert_allclose(got, alone(hf_model, REVIEWS), atol=1e-6)


def _form(body: dict[str, Any]) -> dict[str, Any]:
    """What a client reads of an answer, without the values a model decides: /predict's
    keys, labels and each prediction's fields; OIP's id and each output's name, datatype
    and shape."""
    if "predictions" in body:
        return {
            "keys": sorted(body),
            "labels": body["labels"],
            "predictions": [
                (sorted(p), list(p["probabilities"]), p["label"] in body["labels"])
                for p in body["predictions"]
            ],
        }
    return {
        "keys": sorted(body),
        "id": body["id"],
        "outputs": [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]],
    }


def test_predict_and_oip_answer_as_for_a_built_in_text_classifier(
    hf_model: Artifact, text_model: Artifact, make_server: Callable[[Artifact], Any]
) -> None:
    hf = _serve(lambda: make_server(hf_model), _predict(*REVIEWS), _infer(*REVIEWS))
    builtin = _serve(lambda: make_server(text_model), _predict(*REVIEWS), _infer(*REVIEWS))
    for (status, body), (builtin_status, builtin_body) in zip(hf, builtin, strict=True):
        assert status == builtin_status == 200, body
        assert _form(body) == _form(builtin_body)
    (_, predicted), (_, inferred) = hf
    expected = alone(hf_model, REVIEWS)
    outputs = {o["name"]: o for o in inferred["outputs"]}
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(3, 2), expected, atol=1e-6
    )
    labels = [predicted["labels"][i] for i in expected.argmax(-1)]
    assert outputs["label"]["data"] == [p["label"] for p in predicted["predictions"]] == labels


def test_the_model_metadata_is_a_text_classifiers(
    hf_model: Artifact, text_model: Artifact, make_server: Callable[[Artifact], Any]
) -> None:
    metadata = request("GET", "/v2/models/sentiment")
    ((_, hf),) = _serve(lambda: make_server(hf_model), metadata)
    ((_, builtin),) = _serve(
        lambda: make_server(text_model), request("GET", "/v2/models/sentiment")
    )
    assert hf["inputs"] == builtin["inputs"]
    assert hf["outputs"] == builtin["outputs"]
    assert hf["parameters"]["labels"] == ["negative", "positive"]
    assert hf["parameters"]["digest"] == hf_model.digest
