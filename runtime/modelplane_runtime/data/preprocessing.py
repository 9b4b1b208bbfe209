"""Turn raw examples into model inputs — the one function training and serving share.

A `Preprocessing` is fitted on the training data, saved in the model card (and the
tokenizer beside it), and applied unchanged at serving time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from modelplane_runtime.data.raw import Kind, RawData
from modelplane_runtime.errors import ConfigError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # PAD is id 0, MASK id 4
PAD_ID, MASK_ID = 0, 4
CONTINUATION = "##"  # WordPiece's prefix of a token that continues a word
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: tuple[str, ...], *, vocab_size: int, max_length: int) -> Tokenizer:
    """A lower-casing WordPiece tokenizer trained on `texts`, padding to `max_length`.

    The same texts always give the same tokenizer. tokenizers' trainer alone does not
    (huggingface/tokenizers#1794): it numbers the `##c` continuation tokens in hash-map
    order and breaks ties between equally frequent merges by those numbers, so the
    built-in reviews gave 284 or 285 tokens and a model 0.78 or 0.89 accurate from one
    process to the next. Handing it every `##c` up front, in sorted order, fixes their
    numbers; the vocabulary is then rebuilt as a plain WordPiece model."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    continuations: set[str] = set()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            continuations.update(word[1:])
    seeded = [*SPECIAL_TOKENS, *(f"{CONTINUATION}{c}" for c in sorted(continuations))]
    trained = Tokenizer(models.WordPiece(unk_token=UNK))
    trained.normalizer = normalizer
    trained.pre_tokenizer = pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=max(vocab_size, len(seeded)),
        special_tokens=seeded,
        continuing_subword_prefix=CONTINUATION,
        show_progress=False,
    )
    trained.train_from_iterator(texts, trainer=trainer)
    tokenizer = Tokenizer(
        models.WordPiece(
            vocab=trained.get_vocab(), unk_token=UNK, continuing_subword_prefix=CONTINUATION
        )
    )
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return configure_tokenizer(tokenizer, max_length=max_length)


def configure_tokenizer(tokenizer: Tokenizer, *, max_length: int) -> Tokenizer:
    """`[CLS] text [SEP]`, truncated and padded to exactly `max_length` ids."""
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
    )
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token=PAD, length=max_length)
    return tokenizer


@dataclass
class Preprocessing:
    """How raw inputs become tensors; JSON in the model card."""

    kind: Kind
    labels: list[str]
    """Class names; a model output index is a position in this list."""
    max_length: int = 0
    """Token ids per text (text)."""
    input_shape: list[int] = field(default_factory=list)
    """Shape of one input: [C, H, W] (image) or [F] (tabular)."""
    mean: list[float] = field(default_factory=list)
    """Per channel (image) or per feature (tabular), subtracted."""
    std: list[float] = field(default_factory=list)
    """Per channel (image) or per feature (tabular), divided by."""
    feature_names: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(**data)

    def encode_inputs(self, raw: RawData, tokenizer: Tokenizer | None = None) -> torch.Tensor:
        """Token ids [N, L] (text) or normalised floats [N, C, H, W] / [N, F]."""
        if self.kind == "text":
            if tokenizer is None:
                raise ValueError("text preprocessing needs the tokenizer")
            ids = [e.ids for e in tokenizer.encode_batch(list(raw.texts))]
            return torch.tensor(ids, dtype=torch.long)
        array = raw.array
        if array is None:
            raise ValueError(f"{self.kind} data without an array")
        if list(array.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"inputs have shape {list(array.shape[1:])}, the model takes {self.input_shape}"
            )
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if self.kind == "image":
            mean, std = mean[:, None, None], std[:, None, None]
        return torch.from_numpy(((array - mean) / std).astype(np.float32))

    def encode_labels(self, raw: RawData, *, field: str) -> torch.Tensor:
        """Label names to class indices; an unknown label is a config error."""
        if raw.labels is None:
            raise ConfigError(f"{field}: the data has no labels")
        index = {name: i for i, name in enumerate(self.labels)}
        unknown = sorted(set(raw.labels) - index.keys())
        if unknown:
            raise ConfigError(
                f"{field}: labels {unknown[:5]} do not occur in the training data "
                f"(training labels: {self.labels[:20]})"
            )
        return torch.tensor([index[name] for name in raw.labels], dtype=torch.long)


def sorted_labels(labels: tuple[str, ...]) -> list[str]:
    """Distinct labels, numerically ordered when they are all integers."""
    distinct = set(labels)
    if all(label.lstrip("-").isdigit() for label in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def fit_preprocessing(raw: RawData, *, max_length: int, labelled: bool = True) -> Preprocessing:
    """Fit normalisation (and the label set) on the training data."""
    labels = sorted_labels(raw.labels) if labelled and raw.labels is not None else []
    if labelled and len(labels) < 2:
        raise ConfigError(f"classification needs at least 2 labels, the data has {labels}")
    if raw.kind == "text":
        return Preprocessing(kind="text", labels=labels, max_length=max_length)
    array = raw.array
    if array is None:
        raise ValueError("no array")
    axes = (0, 2, 3) if raw.kind == "image" else (0,)
    mean = array.mean(axis=axes)
    std = array.std(axis=axes)
    std = np.where(std < 1e-8, 1.0, std)
    return Preprocessing(
        kind=raw.kind,
        labels=labels,
        input_shape=list(array.shape[1:]),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        feature_names=list(raw.feature_names),
    )


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    tokenizer.save(str(directory / TOKENIZER_FILE))


def load_tokenizer(directory: Path, *, max_length: int) -> Tokenizer:
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"{directory} has no {TOKENIZER_FILE}")
    return configure_tokenizer(Tokenizer.from_file(str(path)), max_length=max_length)
