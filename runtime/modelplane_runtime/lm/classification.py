"""Sequence classification with a transformers model: architecture huggingface, task
text-classification (BERT, or any model whose config.json has a ...ForSequenceClassification
class in transformers).

It trains through the trainer's classifier path, as the built-in text classifiers do: the
same readers (`data.readers.read_source`, text and label columns, builtin://sentiment),
the same sorted labels, cross-entropy, metrics (evaluate.py's torchmetrics) and DDP. Only
the tokenizer (the folder's), the model (the folder's, with a head for the data's labels)
and the artifact (a Hugging Face folder plus the model card: lm.artifact) differ.

One tensor per example. The trainer, `evaluate` and the replica's predictor hand a model
one encoded tensor (TensorDataset rows picked by the sampler's indices, a serving batch),
while a transformers model needs the attention mask beside the ids. So an example is
encoded as ids and mask stacked, [2, L], and `SequenceClassifier` unpacks them. Rows are
right-padded to the longest row encoded together (a data split; in serving, one batch:
the app merges the batch's texts and the predictor encodes them in one call), and
`SequenceClassifier` cuts each forward pass to its longest mask row. Padded positions get
no attention, so padding never changes an example's logits, whatever else is in its batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from transformers import (
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    AutoConfig,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from modelplane_runtime.artifacts import LoadedModel
from modelplane_runtime.contract import RunConfig
from modelplane_runtime.data.prepare import Prepared, read_split
from modelplane_runtime.data.preprocessing import fit_preprocessing
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.lm.data import load_base_tokenizer, max_length_for
from modelplane_runtime.lm.models import num_embeddings, with_adapter

log = logging.getLogger("modelplane.train")

HEADS = ("classifier", "score")
"""The head's module name in transformers' sequence classifiers (BERT-like: classifier;
decoders: score); PEFT trains a module of these names whole under a LoRA adapter."""


class SequenceClassifier(nn.Module):
    """A transformers sequence classifier behind the built-in classifiers' interface:
    packed ids and mask [N, 2, L] in, logits [N, C] out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        """The PreTrainedModel, or a PeftModel around one."""

    def forward(self, packed: Tensor) -> Tensor:
        ids, mask = packed[:, 0], packed[:, 1]  # [N, L] each
        width = max(1, int(mask.sum(dim=1).max()))  # right-padded: the rest is padding
        logits: Tensor = self.model(
            input_ids=ids[:, :width], attention_mask=mask[:, :width]
        ).logits  # [N, C]
        return logits


def pack(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_length: int) -> Tensor:
    """Texts to ids and attention mask stacked, [N, 2, L] long: truncated to `max_length`
    tokens, right-padded to the longest."""
    if not texts:
        return torch.zeros((0, 2, 1), dtype=torch.long)
    tokenizer.padding_side = "right"  # SequenceClassifier cuts the padding off the right
    encoded = tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return torch.stack([encoded["input_ids"], encoded["attention_mask"]], dim=1).long()


@dataclass
class ClassificationData:
    prepared: Prepared
    """Packed inputs [N, 2, L] and label indices [N]; `preprocessing` holds the sorted
    labels and max_length (its `tokenizer` is None: the model's is `tokenizer`)."""
    tokenizer: PreTrainedTokenizerBase


def prepare_classification(config: RunConfig, *, base_dir: Path) -> ClassificationData:
    """Read and split the data as the built-in classifiers do (data.prepare), and encode
    it with the init folder's tokenizer."""
    check_classifier_folder(base_dir, source=config.init_uri)
    train_raw, val_raw = read_split(config)
    max_length = max_length_for(config, base_dir)
    preprocessing = fit_preprocessing(train_raw, max_length=max_length)
    tokenizer = load_base_tokenizer(base_dir, source=config.init_uri)
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            f"model.init.uri: {config.init_uri}'s tokenizer has no padding token (and no "
            "end-of-sequence token to pad with); set pad_token in its tokenizer_config.json"
        )

    def tensors(raw: RawData, field: str) -> TensorDataset:
        inputs = pack(tokenizer, raw.texts, max_length=max_length)
        return TensorDataset(inputs, preprocessing.encode_labels(raw, field=field))

    prepared = Prepared(
        train=tensors(train_raw, "data.train"),
        validation=tensors(val_raw, "data.validation"),
        preprocessing=preprocessing,
        tokenizer=None,
    )
    return ClassificationData(prepared=prepared, tokenizer=tokenizer)


def check_classifier_folder(base_dir: Path, *, source: str | None) -> None:
    """A ConfigError naming model.init.uri unless transformers has a sequence-classification
    class for the folder's model type (a causal LM such as CodeGen has none)."""
    model_config = AutoConfig.from_pretrained(base_dir)
    if type(model_config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ConfigError(
            f"model.init.uri: {source or base_dir} is a {model_config.model_type} model, "
            "which transformers cannot build as a sequence classifier (no "
            "AutoModelForSequenceClassification class for it); start from a model that has "
            "one (BERT, RoBERTa, Llama...) or train it for text-generation"
        )


def build_classifier(
    config: RunConfig,
    base_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str],
) -> SequenceClassifier:
    """The folder's model with a head for `labels` (index i = labels[i]), in fp32 on the
    CPU, seeded by optim.seed (a new head is the same on every rank). A head of another
    size than the folder's, or none, is initialised afresh and said in the log. With
    config.adapter, a LoRA adapter whose head (and every other module the folder had no
    weights for) is trained whole and saved with it, so the adapter alone rebuilds the
    trained model."""
    check_classifier_folder(base_dir, source=config.init_uri)
    torch.manual_seed(config.optim.seed)
    model, fresh = load_classifier_model(
        base_dir, labels=labels, pad_token_id=tokenizer.pad_token_id
    )
    if fresh:
        log.info(
            "model.init.uri: %s initialised afresh for %d labels (%s): the folder %s",
            ", ".join(fresh),
            len(labels),
            ", ".join(labels),
            "has weights of another shape or none for them",
        )
    embedded = num_embeddings(model)
    if len(tokenizer) > embedded:
        raise ConfigError(
            f"model.init.uri: the tokenizer has {len(tokenizer)} tokens but the model "
            f"embeds only {embedded}"
        )
    if config.adapter is None:
        return SequenceClassifier(model)
    heads = tuple(name for name in HEADS if hasattr(model, name))
    whole = tuple(dict.fromkeys((*fresh, *heads)))
    return SequenceClassifier(
        with_adapter(model, config, task_type="SEQ_CLS", modules_to_save=whole)
    )


def load_classifier_model(
    folder: Path, *, labels: list[str], pad_token_id: int | None = None
) -> tuple[PreTrainedModel, list[str]]:
    """`AutoModelForSequenceClassification` from `folder` with a head for `labels`, and
    the modules it initialised afresh (no weights, or weights of another shape, in the
    folder), sorted."""
    extra: dict[str, Any] = {}
    if pad_token_id is not None and AutoConfig.from_pretrained(folder).pad_token_id is None:
        extra["pad_token_id"] = pad_token_id  # a decoder's head reads the last real token
    model, info = AutoModelForSequenceClassification.from_pretrained(
        folder,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
        output_loading_info=True,
        dtype=torch.float32,
        **extra,
    )
    keys = [*info["missing_keys"], *(key for key, *_ in info["mismatched_keys"])]
    return model, sorted({key.rsplit(".", 1)[0] for key in keys})


@dataclass
class LoadedClassifier(LoadedModel):
    """A huggingface text-classification artifact ready to predict: `model` is its
    SequenceClassifier, and inputs are encoded with the folder's tokenizer."""

    text_tokenizer: Any = None
    """The artifact's PreTrainedTokenizerBase (LoadedModel.tokenizer is the built-in
    classifiers' `tokenizers.Tokenizer`, None here)."""

    def encode(self, raw: RawData) -> Tensor:
        """Raw texts to packed ids and mask [N, 2, L], as in training."""
        return pack(self.text_tokenizer, raw.texts, max_length=self.preprocessing.max_length)

    def vocabulary(self) -> list[str]:
        return list(self.text_tokenizer.get_vocab())
