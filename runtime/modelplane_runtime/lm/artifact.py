"""A transformers model's artifact: a Hugging Face folder plus modelplane's model card.

A causal language model (text-generation) loads with `AutoModelForCausalLM`, a sequence
classifier (huggingface text-classification: lm.classification) with
`AutoModelForSequenceClassification`; the classifier's config.json names its labels
(id2label), and its card too (`labels`, in index order, and `max_length`).

A full model (trained from scratch, fine-tuned, or a LoRA adapter merged into its
base) is what `save_pretrained` writes: config.json, one `model.safetensors`,
generation_config.json (language models) and the tokenizer files; `from_pretrained`
loads it as it is. An unmerged LoRA adapter is PEFT's folder (adapter_config.json,
adapter_model.safetensors) and the tokenizer; `PeftModel.from_pretrained(base, folder)`
loads it (a classifier's base with its labels: `num_labels`, `id2label`, `label2id`,
`ignore_mismatched_sizes=True`; the adapter holds the head and every module the base
had no weights for), and the card's `base` names the base model's URI and the digest of
its weights, so a reader refuses a base that changed. Either way `model_card.json` is
written last and its `digest` is the sha256 of the weights file it names, as for every
artifact (artifacts.verify_artifact, artifacts.publish).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from modelplane_runtime.artifacts import (
    CARD,
    CARD_FORMAT,
    CURVES,
    plot_curves,
    sha256_file,
    verify_artifact,
)
from modelplane_runtime.contract import RunConfig
from modelplane_runtime.data.preprocessing import Preprocessing
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.lm.classification import (
    LoadedClassifier,
    SequenceClassifier,
    build_classifier,
    load_classifier_model,
)
from modelplane_runtime.lm.data import max_length_for
from modelplane_runtime.lm.models import (
    WEIGHT_FILES,
    build_lm,
    llama_params,
    peft_quiet,
    resolve_model_uri,
    unwrap_peft,
)

FULL_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ONE_SHARD = "10000GB"
"""save_pretrained's max_shard_size: every model in one file, the one the card names."""
STALE = (
    FULL_WEIGHTS,
    "model.safetensors.index.json",
    "config.json",
    ADAPTER_WEIGHTS,
    ADAPTER_CONFIG,
)
"""Files an earlier save may have left that would change what the folder loads as (a
stray adapter_config.json makes transformers load the folder as an adapter)."""


AUTO_CLASSES: dict[str, Any] = {
    "text-generation": AutoModelForCausalLM,
    "text-classification": AutoModelForSequenceClassification,
}
"""The transformers class that loads an artifact, by task."""


@dataclass
class LoadedLm:
    model: Any
    """A PreTrainedModel, or a PeftModel for an unmerged adapter; in eval mode."""
    tokenizer: PreTrainedTokenizerBase
    card: dict[str, Any]


def base_digest(base_dir: Path) -> str:
    """The sha256 of a base model folder's weights (the index file when sharded)."""
    for name in WEIGHT_FILES:
        if (base_dir / name).is_file():
            return sha256_file(base_dir / name)
    raise ConfigError(f"model.init.uri: {base_dir} has no safetensors weights")


def save_lm_artifact(
    directory: Path,
    *,
    model: Any,
    state_dict: dict[str, Tensor] | None,
    tokenizer: PreTrainedTokenizerBase,
    config: RunConfig,
    metrics: dict[str, float],
    history: dict[str, Any],
    base_dir: Path | None,
    labels: list[str] | None = None,
) -> str:
    """Write the artifact; return its digest ("sha256:<hex>").

    `model` is the trained model, unwrapped (a PreTrainedModel or PeftModel; a
    SequenceClassifier is unwrapped here); when the trainer sharded it, `state_dict` is
    the full gathered state and the model is rebuilt on the CPU (`build_lm`,
    `build_classifier`) to hold it. A classifier's `labels` are its classes in index
    order. The trainer's model is never changed: merging works on a copy."""
    classifier = config.task == "text-classification"
    if classifier and (labels is None or base_dir is None):
        raise ValueError("a sequence classifier's artifact needs its labels and base folder")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CARD).unlink(missing_ok=True)
    for name in STALE:
        (directory / name).unlink(missing_ok=True)
    if state_dict is not None:
        if classifier and labels is not None and base_dir is not None:
            model = build_classifier(config, base_dir, tokenizer, labels)
        else:
            model = build_lm(config, base_dir, tokenizer)
        model.load_state_dict(state_dict)
    if isinstance(model, SequenceClassifier):
        model = model.model
    adapter = config.adapter if isinstance(model, PeftModel) else None
    card_extra: dict[str, Any] = {}
    if classifier:
        card_extra["labels"] = labels
        card_extra["max_length"] = max_length_for(config, base_dir)
    if adapter is not None and adapter.merge:
        model = copy.deepcopy(model).merge_and_unload()
        card_extra["adapter"] = adapter.model_dump(mode="json")
    if adapter is not None and not adapter.merge:
        if base_dir is None:
            raise ValueError("an adapter needs the base model's folder")
        model.peft_config["default"].base_model_name_or_path = str(base_dir)
        model.save_pretrained(directory)
        weights = ADAPTER_WEIGHTS
        card_extra["adapter"] = adapter.model_dump(mode="json")
        card_extra["base"] = {"uri": config.init_uri, "digest": base_digest(base_dir)}
    else:
        model.save_pretrained(directory, max_shard_size=ONE_SHARD)
        weights = FULL_WEIGHTS
    tokenizer.save_pretrained(directory)
    plot_curves(history, directory / CURVES)
    digest = sha256_file(directory / weights)
    inner = unwrap_peft(model)
    card = {
        "format": CARD_FORMAT,
        "name": config.name,
        "architecture": config.architecture,
        "task": config.task,
        "params": llama_params(config) if config.architecture == "llama" else config.params,
        "metrics": metrics,
        "digest": digest,
        "weights": weights,
        "tokenizer": "tokenizer.json",
        "huggingface": {
            "class": type(inner).__name__,
            "auto_class": AUTO_CLASSES[config.task].__name__,
        },
        **card_extra,
        "run_config": config.model_dump(mode="json"),
        "history": history,
    }
    temporary = directory / f".{CARD}.tmp"
    temporary.write_text(json.dumps(card, indent=2))
    os.replace(temporary, directory / CARD)
    return digest


def load_lm_artifact(
    directory: Path,
    *,
    expected_digest: str | None = None,
    device: str = "cpu",
    card: dict[str, Any] | None = None,
) -> LoadedLm:
    """The model, tokenizer and card of the artifact in `directory`, refusing weights
    (or, for an adapter, a base) whose digest differs from the card's. A `card` the
    caller already verified (artifacts.verify_artifact) is not checked again."""
    if card is None:
        card = verify_artifact(directory, expected_digest=expected_digest)
    labels: list[str] | None = card.get("labels")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    base = card.get("base")
    model: Any
    if base is not None:
        base_dir = resolve_model_uri(base["uri"], field="model.uri (the adapter's base)")
        found = base_digest(base_dir)
        if found != base["digest"]:
            raise ConfigError(
                f"model.uri: {directory} is an adapter of {base['uri']} with weights "
                f"{base['digest']}, but that base now has {found}; the adapter would not "
                "mean what it was trained to"
            )
        if labels is not None:
            # the head (and whatever else the base lacked) comes from the adapter
            base_model, _ = load_classifier_model(
                base_dir, labels=labels, pad_token_id=tokenizer.pad_token_id
            )
        else:
            base_model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        with peft_quiet():
            model = PeftModel.from_pretrained(base_model, directory)
    else:
        auto = AUTO_CLASSES.get(card["task"], AutoModelForCausalLM)
        model = auto.from_pretrained(directory, dtype=torch.float32)
    model.to(device).eval()
    return LoadedLm(model=model, tokenizer=tokenizer, card=card)


def load_classifier(
    directory: Path, *, card: dict[str, Any], device: str = "cpu"
) -> LoadedClassifier:
    """A huggingface text-classification artifact behind the built-in classifiers'
    interface (artifacts.LoadedModel), for the replica's predictor; `card` verified."""
    loaded = load_lm_artifact(directory, card=card, device=device)
    preprocessing = Preprocessing(
        kind="text", labels=list(card["labels"]), max_length=int(card["max_length"])
    )
    return LoadedClassifier(
        model=SequenceClassifier(loaded.model).eval(),
        card=card,
        preprocessing=preprocessing,
        tokenizer=None,
        text_tokenizer=loaded.tokenizer,
    )
