"""From a run config to training and validation tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import TensorDataset

from modelplane_runtime.contract import DATA_KIND_BY_TASK, RunConfig
from modelplane_runtime.data.preprocessing import (
    TOKENIZER_FILE,
    Preprocessing,
    configure_tokenizer,
    fit_preprocessing,
    load_tokenizer,
    train_tokenizer,
)
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.data.readers import read_source
from modelplane_runtime.errors import ConfigError

DEFAULT_VALIDATION_SPLIT = 0.1
DEFAULT_MAX_LENGTH = 64
DEFAULT_VOCAB_SIZE = 2000


@dataclass
class Prepared:
    """Tensors ready for a DataLoader, and what serving needs to repeat the encoding."""

    train: TensorDataset
    validation: TensorDataset
    preprocessing: Preprocessing
    tokenizer: Tokenizer | None

    @property
    def num_classes(self) -> int:
        return len(self.preprocessing.labels)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size() if self.tokenizer else 0


def split(raw: RawData, fraction: float, seed: int) -> tuple[RawData, RawData]:
    """A deterministic hold-out split: the same seed gives the same split everywhere."""
    order = np.random.default_rng(seed).permutation(len(raw))
    held_out = max(1, round(len(raw) * fraction))
    if held_out >= len(raw):
        raise ConfigError(f"data.validationSplit {fraction} leaves no training examples")
    return raw.subset(order[held_out:]), raw.subset(order[:held_out])


def _from_here(make: Callable[[], str]) -> str:
    return make()


def _run_tokenizer(
    texts: tuple[str, ...],
    *,
    vocab_size: int,
    max_length: int,
    store: Path | None,
    from_main: Callable[[Callable[[], str]], str],
) -> Tokenizer:
    """The run's tokenizer: the same on every rank and after every restart.

    tokenizers' WordPiece trainer is not deterministic between processes (ties between
    equal pair counts are broken in hash order: the built-in reviews give 284 or 285
    tokens from one run to the next), so one tokenizer per rank or per restart would
    give embeddings that mean different words. Rank 0 trains it once, keeps it in
    `store` (beside the checkpoints, so a resumed run reads it back) and sends it to the
    other ranks."""
    saved = store / TOKENIZER_FILE if store is not None else None

    def on_rank_0() -> str:
        if saved is not None and saved.is_file():
            return saved.read_text()
        text = train_tokenizer(texts, vocab_size=vocab_size, max_length=max_length).to_str()
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            partial = saved.with_suffix(".partial")
            partial.write_text(text)
            partial.replace(saved)
        return text

    return configure_tokenizer(Tokenizer.from_str(from_main(on_rank_0)), max_length=max_length)


def read_split(config: RunConfig, *, labelled: bool = True) -> tuple[RawData, RawData]:
    """(training, validation) examples as read: data.validation when given, else the
    deterministic hold-out `split` of data.train."""
    kind = DATA_KIND_BY_TASK[config.task]
    data = config.data
    columns = {"text_column": data.text_column, "label_column": data.label_column}
    train_raw = read_source(
        data.train_uri, kind=kind, field="data.train", labelled=labelled, **columns
    )
    if data.validation_uri:
        val_raw = read_source(
            data.validation_uri, kind=kind, field="data.validation", labelled=labelled, **columns
        )
        return train_raw, val_raw
    return split(train_raw, data.validation_split or DEFAULT_VALIDATION_SPLIT, config.optim.seed)


def prepare(
    config: RunConfig,
    *,
    init_dir: Path | None = None,
    tokenizer_store: Path | None = None,
    from_main: Callable[[Callable[[], str]], str] = _from_here,
) -> Prepared:
    """Read, split, fit preprocessing on the training part, and encode both parts.

    With `init_dir` (an artifact to start from), a text model keeps that artifact's
    tokenizer: its embeddings only mean something with the same vocabulary. Otherwise
    the tokenizer is trained once per run (`_run_tokenizer`): kept in `tokenizer_store`
    and shared from rank 0 through `from_main`.
    """
    kind = DATA_KIND_BY_TASK[config.task]
    labelled = config.task != "masked-lm"
    train_raw, val_raw = read_split(config, labelled=labelled)
    max_length = int(config.params.get("max_length", DEFAULT_MAX_LENGTH))
    preprocessing = fit_preprocessing(train_raw, max_length=max_length, labelled=labelled)
    tokenizer = None
    if kind == "text":
        if init_dir is not None:
            tokenizer = load_tokenizer(init_dir, max_length=max_length)
        else:
            vocab_size = int(config.params.get("vocab_size", DEFAULT_VOCAB_SIZE))
            tokenizer = _run_tokenizer(
                train_raw.texts,
                vocab_size=vocab_size,
                max_length=max_length,
                store=tokenizer_store,
                from_main=from_main,
            )
    train_x = preprocessing.encode_inputs(train_raw, tokenizer)
    val_x = preprocessing.encode_inputs(val_raw, tokenizer)
    if labelled:
        train_y = preprocessing.encode_labels(train_raw, field="data.train")
        val_y = preprocessing.encode_labels(val_raw, field="data.validation")
    else:
        train_y = torch.zeros(len(train_x), dtype=torch.long)
        val_y = torch.zeros(len(val_x), dtype=torch.long)
    return Prepared(
        train=TensorDataset(train_x, train_y),
        validation=TensorDataset(val_x, val_y),
        preprocessing=preprocessing,
        tokenizer=tokenizer,
    )
