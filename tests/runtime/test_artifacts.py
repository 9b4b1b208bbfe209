"""An artifact alone rebuilds the model that was trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelplane_runtime.artifacts import load_artifact, sha256_file
from modelplane_runtime.contract import DataConfig, OptimConfig
from modelplane_runtime.data.builtin import sentiment
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.runtime.conftest import make_config

TEXT = {"layers": 1, "hidden": 32, "heads": 2, "max_length": 32, "vocab_size": 500}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    tmp = tmp_path_factory.mktemp("artifact")
    config = make_config(
        tmp,
        name="text",
        architecture="transformer",
        task="text-classification",
        params=TEXT,
        optim=OptimConfig(epochs=1, batch_size=32, learning_rate=2e-3),
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.2),
    )
    trainer = Trainer(config, env=DistEnv())
    trainer.fit()
    return trainer, tmp / "out" / "text"


def test_the_loader_rebuilds_a_model_whose_predictions_equal_the_trained_one(
    trained: tuple[Trainer, Path],
) -> None:
    trainer, directory = trained
    loaded = load_artifact(directory)
    raw = sentiment(count=50, seed=99)
    inputs = loaded.encode(raw)
    trainer.model.eval()
    with torch.no_grad():
        expected = torch.softmax(trainer.model(inputs), dim=-1)
    assert torch.equal(loaded.probabilities(inputs), expected)
    assert loaded.labels == ["negative", "positive"]


def test_the_card_records_the_digest_of_the_weights_and_the_run(
    trained: tuple[Trainer, Path],
) -> None:
    trainer, directory = trained
    card = json.loads((directory / "model_card.json").read_text())
    assert card["digest"] == sha256_file(directory / "model.safetensors")
    assert card["run_config"] == trainer.config.model_dump(mode="json")
    assert card["preprocessing"]["kind"] == "text"
    assert (directory / "tokenizer.json").is_file()
    assert (directory / "curves.png").stat().st_size > 1000
    result = json.loads((directory / "result.json").read_text())
    assert result["digest"] == card["digest"]


def test_changed_weights_are_refused(trained: tuple[Trainer, Path], tmp_path: Path) -> None:
    _, directory = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in directory.iterdir():
        if file.is_file():
            (copy / file.name).write_bytes(file.read_bytes())
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ConfigError, match="digest"):
        load_artifact(copy)


def test_a_pinned_digest_that_differs_is_refused(trained: tuple[Trainer, Path]) -> None:
    _, directory = trained
    with pytest.raises(ConfigError, match="does not match"):
        load_artifact(directory, expected_digest="sha256:" + "0" * 64)
