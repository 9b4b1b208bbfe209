"""Every architecture learns its built-in data set on a CPU, clearly beyond a trivial model."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from modelplane_runtime.contract import DataConfig, OptimConfig
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.runtime.conftest import make_config

CASES = [
    # (architecture, task, data, params, optim, margin over the majority class)
    (
        "transformer",
        "text-classification",
        "builtin://sentiment",
        {"layers": 2, "hidden": 64, "heads": 4, "max_length": 32, "vocab_size": 1000},
        OptimConfig(epochs=3, batch_size=32, learning_rate=2e-3, warmup_steps=20),
        0.25,
    ),
    (
        "bert",
        "text-classification",
        "builtin://sentiment",
        {"layers": 2, "hidden": 64, "heads": 4, "max_length": 32, "vocab_size": 1000},
        OptimConfig(epochs=3, batch_size=32, learning_rate=2e-3, warmup_steps=20),
        0.25,
    ),
    (
        "resnet",
        "image-classification",
        "builtin://digits",
        {"layers": 1, "hidden": 8},
        OptimConfig(epochs=3, batch_size=64, learning_rate=3e-3),
        0.6,
    ),
    (
        "mlp",
        "image-classification",
        "builtin://digits",
        {},
        OptimConfig(epochs=5, batch_size=64, learning_rate=3e-3),
        0.6,
    ),
    (
        "mlp",
        "tabular-classification",
        "builtin://breast-cancer",
        {},
        OptimConfig(epochs=10, batch_size=32, learning_rate=1e-3),
        0.25,
    ),
]


def majority_accuracy(trainer: Trainer) -> float:
    labels = trainer.data.validation.tensors[1].tolist()
    return Counter(labels).most_common(1)[0][1] / len(labels)


@pytest.mark.parametrize(
    ("architecture", "task", "uri", "params", "optim", "margin"),
    CASES,
    ids=[f"{c[0]} learns {c[2].removeprefix('builtin://')}" for c in CASES],
)
def test_architecture_beats_the_majority_class(
    tmp_path: Path,
    architecture: str,
    task: str,
    uri: str,
    params: dict[str, Any],
    optim: OptimConfig,
    margin: float,
) -> None:
    config = make_config(
        tmp_path,
        architecture=architecture,
        task=task,
        params=params,
        optim=optim,
        data=DataConfig(train_uri=uri, validation_split=0.2),
    )
    trainer = Trainer(config, env=DistEnv())
    result = trainer.fit()
    baseline = majority_accuracy(trainer)
    assert result.metrics["accuracy"] >= baseline + margin, (result.metrics, baseline)
    assert result.steps == trainer.total_steps


def test_masked_lm_predicts_tokens_far_better_than_their_frequencies(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        architecture="bert",
        task="masked-lm",
        params={"layers": 2, "hidden": 64, "heads": 4, "max_length": 32, "vocab_size": 1000},
        optim=OptimConfig(epochs=4, batch_size=32, learning_rate=2e-3, warmup_steps=20),
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.2),
    )
    trainer = Trainer(config, env=DistEnv())
    result = trainer.fit()
    # The trivial model: always predict the unigram distribution of training tokens.
    train_ids = trainer.data.train.tensors[0]
    real = train_ids[train_ids >= 5]
    counts = torch.bincount(real, minlength=trainer.shape.vocab_size).float()
    probs = counts[counts > 0] / counts.sum()
    unigram_perplexity = math.exp(float(-(probs * probs.log()).sum()))
    assert result.metrics["perplexity"] < 0.5 * unigram_perplexity, (
        result.metrics,
        unigram_perplexity,
    )


def test_bf16_autocast_trains_on_the_cpu(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        optim=OptimConfig(epochs=5, batch_size=32, learning_rate=1e-3, precision="bf16"),
    )
    trainer = Trainer(config, env=DistEnv())
    assert trainer.autocast_dtype is torch.bfloat16
    result = trainer.fit()
    assert result.metrics["accuracy"] >= majority_accuracy(trainer) + 0.2
