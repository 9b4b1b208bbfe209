"""A classifier fine-tuned from masked-LM weights starts from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from modelplane_runtime.contract import DataConfig, OptimConfig
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.runtime.conftest import make_config

BERT = {"layers": 2, "hidden": 64, "heads": 4, "max_length": 32, "vocab_size": 1000}
DATA = DataConfig(train_uri="builtin://sentiment", validation_split=0.2)


def pretrain(tmp_path: Path) -> None:
    """One epoch of masked-LM pre-training, written to <tmp>/out/base."""
    config = make_config(
        tmp_path,
        name="base",
        architecture="bert",
        task="masked-lm",
        params=BERT,
        data=DATA,
        optim=OptimConfig(epochs=1, batch_size=32),
    )
    Trainer(config, env=DistEnv()).fit()


def test_fine_tuning_starts_from_the_pretrained_encoder_and_its_tokenizer(
    tmp_path: Path,
) -> None:
    pretrain(tmp_path)
    finetune = make_config(
        tmp_path,
        name="tuned",
        architecture="bert",
        task="text-classification",
        params=BERT,
        data=DATA,
        optim=OptimConfig(epochs=3, batch_size=32, learning_rate=2e-3, warmup_steps=20),
        init_uri=f"file://{tmp_path}/out/base",
    )
    trainer = Trainer(finetune, env=DistEnv())
    saved = load_file(str(tmp_path / "out" / "base" / "model.safetensors"))
    own = trainer.model.state_dict()
    assert torch.equal(own["encoder.tokens.weight"], saved["encoder.tokens.weight"])
    pretrained = Tokenizer.from_file(str(tmp_path / "out" / "base" / "tokenizer.json"))
    assert trainer.data.tokenizer is not None
    assert trainer.data.tokenizer.get_vocab() == pretrained.get_vocab()
    assert trainer.fit().metrics["accuracy"] > 0.75


def test_weights_of_another_size_are_refused(tmp_path: Path) -> None:
    pretrain(tmp_path)
    bigger = make_config(
        tmp_path,
        name="big",
        architecture="bert",
        task="text-classification",
        params={**BERT, "hidden": 128},
        data=DATA,
        init_uri=f"file://{tmp_path}/out/base",
    )
    with pytest.raises(ConfigError, match="does not fit this model"):
        Trainer(bigger, env=DistEnv())
