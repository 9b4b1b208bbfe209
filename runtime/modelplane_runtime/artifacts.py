"""A trained model on disk, and the loader that rebuilds it from the files alone.

`<output>/<run>/` holds:
- `model.safetensors` — the weights;
- `model_card.json` — architecture, resolved params, data shape, preprocessing, metrics,
  the sha256 digest of the weights, the run config and the training history;
- `tokenizer.json` — text models only;
- `curves.png` — training loss and validation metrics;
- `result.json` — the TrainingResult, also the pod's termination message.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from modelplane_runtime.contract import RESULT_FILE, RunConfig, TrainingResult
from modelplane_runtime.data.preprocessing import Preprocessing, load_tokenizer, save_tokenizer
from modelplane_runtime.data.raw import RawData
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.models.registry import DataShape, build_model

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
CURVES = "curves.png"
RESULT = RESULT_FILE
CARD_FORMAT = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def save_artifact(
    directory: Path,
    *,
    model: nn.Module,
    config: RunConfig,
    params: dict[str, Any],
    shape: DataShape,
    preprocessing: Preprocessing,
    tokenizer: Tokenizer | None,
    metrics: dict[str, float],
    history: dict[str, Any],
) -> str:
    """Write the artifact; return the weights' digest. The card is written last, so a
    folder with a card is a complete artifact."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS
    temporary = directory / f".{WEIGHTS}.tmp"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(temporary))
    os.replace(temporary, weights)
    digest = sha256_file(weights)
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    plot_curves(history, directory / CURVES)
    card = {
        "format": CARD_FORMAT,
        "name": config.name,
        "architecture": config.architecture,
        "task": config.task,
        "params": params,
        "data_shape": {
            "num_classes": shape.num_classes,
            "input_shape": list(shape.input_shape),
            "vocab_size": shape.vocab_size,
        },
        "preprocessing": preprocessing.to_json(),
        "metrics": metrics,
        "digest": digest,
        "weights": WEIGHTS,
        "tokenizer": "tokenizer.json" if tokenizer is not None else None,
        "run_config": config.model_dump(mode="json"),
        "history": history,
    }
    _write_atomically(directory / CARD, json.dumps(card, indent=2).encode())
    return digest


def write_result(directory: Path, result: TrainingResult) -> None:
    _write_atomically(directory / RESULT, result.model_dump_json(indent=2).encode())


def plot_curves(history: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps = history.get("steps", [])
    left.plot([s["step"] for s in steps], [s["loss"] for s in steps])
    left.set(title="training loss", xlabel="step", ylabel="loss")
    epochs = history.get("epochs", {})
    names = sorted({name for metrics in epochs.values() for name in metrics})
    for name in names:
        xs = sorted(int(e) for e in epochs if name in epochs[e])
        right.plot(xs, [epochs[str(x)][name] for x in xs], marker="o", label=name)
    right.set(title="validation", xlabel="epoch")
    if names:
        right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


@dataclass
class LoadedModel:
    """A model rebuilt from its artifact, ready to predict."""

    model: nn.Module
    card: dict[str, Any]
    preprocessing: Preprocessing
    tokenizer: Tokenizer | None

    @property
    def labels(self) -> list[str]:
        return self.preprocessing.labels

    def encode(self, raw: RawData) -> torch.Tensor:
        """Raw inputs to model inputs, exactly as in training."""
        return self.preprocessing.encode_inputs(raw, self.tokenizer)

    @torch.no_grad()
    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encoded inputs [N, ...] -> class probabilities [N, C]."""
        return torch.softmax(self.model(inputs).float(), dim=-1)


def load_artifact(
    directory: Path, *, expected_digest: str | None = None, device: str = "cpu"
) -> LoadedModel:
    """Rebuild the model from `directory` alone, refusing weights whose digest differs."""
    card_path = directory / CARD
    if not card_path.is_file():
        raise ConfigError(f"{directory} is not a modelplane artifact (no {CARD})")
    card = json.loads(card_path.read_text())
    if card.get("format") != CARD_FORMAT:
        raise ConfigError(f"{card_path}: unsupported model card format {card.get('format')}")
    digest = sha256_file(directory / card["weights"])
    if digest != card["digest"] or (expected_digest and digest != expected_digest):
        raise ConfigError(
            f"{directory}: weights digest {digest} does not match "
            f"{expected_digest or card['digest']}; the artifact was changed or is incomplete"
        )
    shape = DataShape(
        num_classes=card["data_shape"]["num_classes"],
        input_shape=tuple(card["data_shape"]["input_shape"]),
        vocab_size=card["data_shape"]["vocab_size"],
    )
    model = build_model(card["architecture"], card["task"], card["params"], shape)
    model.load_state_dict(load_file(str(directory / card["weights"])))
    model.to(device).eval()
    preprocessing = Preprocessing.from_json(card["preprocessing"])
    tokenizer = (
        load_tokenizer(directory, max_length=preprocessing.max_length)
        if card.get("tokenizer")
        else None
    )
    return LoadedModel(model=model, card=card, preprocessing=preprocessing, tokenizer=tokenizer)


def load_init_weights(model: nn.Module, directory: Path) -> int:
    """Copy every tensor of `directory`'s weights whose name and shape match `model`'s.

    Heads differ between pre-training and fine-tuning and are left as initialised; an
    encoder that matches nothing means the artifact does not fit this model.
    """
    if not (directory / CARD).is_file():
        raise ConfigError(f"model.init.uri: {directory} is not a modelplane artifact")
    saved = load_file(str(directory / WEIGHTS))
    own = model.state_dict()
    matching = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    encoder_keys = [k for k in own if k.startswith("encoder.")]
    missing = [k for k in encoder_keys if k not in matching]
    if not matching or missing:
        raise ConfigError(
            f"model.init.uri: {directory} does not fit this model ({len(missing)} encoder "
            "tensors missing or of another shape); use the same architecture and params"
        )
    model.load_state_dict(matching, strict=False)
    return len(matching)
