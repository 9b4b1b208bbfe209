"""The predictor behind each replica: the trained model's answers, and optimisations that
keep them within a stated tolerance or refuse to start."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from modelplane_runtime.artifacts import load_artifact
from modelplane_runtime.contract import DataConfig, OptimConfig, ServeArgs
from modelplane_runtime.data.builtin import breast_cancer, sentiment
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.serve import predictor as predictor_module
from modelplane_runtime.serve.predictor import TOLERANCE, Predictor
from tests.serving.conftest import TEXT_PARAMS, Artifact, _train


def inputs_for(model: Artifact) -> RawData:
    """Real inputs of the model's kind: the first 300 reviews or all 569 table rows."""
    if "sentiment" in model.path.name:
        return sentiment(count=300, seed=99)
    return breast_cancer()


def serve_args(model: Artifact, **changes: object) -> ServeArgs:
    return ServeArgs.model_validate(
        {"model_name": "m", "model_uri": model.uri, "expected_digest": model.digest, **changes}
    )


@pytest.fixture(params=["text", "table"])
def model(request: pytest.FixtureRequest) -> Artifact:
    return request.getfixturevalue(f"{request.param}_model")  # type: ignore[no-any-return]


def test_fp32_answers_equal_the_loaded_model(model: Artifact) -> None:
    raw = inputs_for(model)
    loaded = load_artifact(model.path)
    expected = loaded.probabilities(loaded.encode(raw)).numpy()
    prediction = Predictor(serve_args(model)).predict(raw)
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-6)
    assert prediction.labels == [loaded.labels[i] for i in expected.argmax(-1)]


@pytest.mark.parametrize(
    "optimization",
    [{"dtype": "bf16"}, {"quantization": "int8"}, {"compile": True}],
    ids=["bf16", "dynamic int8", "torch.compile"],
)
def test_an_optimisation_keeps_answers_within_its_tolerance(
    model: Artifact, optimization: dict[str, object]
) -> None:
    raw = inputs_for(model)
    reference = Predictor(serve_args(model)).predict(raw)
    started = time.perf_counter()
    optimised = Predictor(serve_args(model, **optimization))
    took = time.perf_counter() - started
    got = optimised.predict(raw)
    key = "int8" if optimization.get("quantization") else str(optimization.get("dtype", "fp32"))
    tolerance = max(TOLERANCE[key], TOLERANCE["fp32"] * 10)
    difference = float(np.abs(got.probabilities - reference.probabilities).max())
    agreement = float(np.mean(np.array(got.labels) == np.array(reference.labels)))
    print(
        f"{optimization}: max |dp| {difference:.5f}, same label {agreement:.3f}, start {took:.1f}s"
    )
    assert difference <= tolerance
    assert agreement >= 0.98
    assert optimised.check.max_abs_difference <= optimised.check.tolerance


def test_an_optimisation_that_moves_answers_too_far_is_refused(
    text_model: Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(predictor_module.TOLERANCE, "bf16", 1e-9)
    with pytest.raises(ConfigError, match="moves probabilities by up to"):
        Predictor(serve_args(text_model, dtype="bf16"))


def test_fp16_needs_a_gpu(text_model: Artifact) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, where fp16 is allowed")
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        Predictor(serve_args(text_model, dtype="fp16"))


def test_weights_other_than_the_pinned_digest_are_refused(text_model: Artifact) -> None:
    with pytest.raises(ConfigError, match="does not match"):
        Predictor(serve_args(text_model, expected_digest="sha256:" + "0" * 64))


def test_a_masked_lm_artifact_is_not_served(tmp_path_factory: pytest.TempPathFactory) -> None:
    pretrained = _train(
        tmp_path_factory.mktemp("mlm"),
        "mlm",
        architecture="bert",
        task="masked-lm",
        params=TEXT_PARAMS,
        optim=OptimConfig(epochs=1, batch_size=64, learning_rate=1e-3),
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.1),
    )
    with pytest.raises(ConfigError, match="fine-tuned"):
        Predictor(serve_args(pretrained))


def test_the_health_check_fails_when_the_model_answers_nonsense(text_model: Artifact) -> None:
    predictor = Predictor(serve_args(text_model))
    predictor.healthy()
    with torch.no_grad():
        for parameter in predictor.model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        predictor.healthy()
