"""A trained model on disk, and the loader that rebuilds it from the files alone.

`<output>/<run>/` holds:
- `model.safetensors` — the weights;
- `model_card.json` — architecture, resolved params, data shape, preprocessing, metrics,
  the sha256 digest of the weights, the run config and the training history;
- `tokenizer.json` — text models only;
- `curves.png` — training loss and validation metrics;
- `result.json` — the TrainingResult, also the pod's termination message.

The card is written last: a folder (or an s3:// prefix) with a card is a complete
artifact, and readers trust only weights whose sha256 equals the card's digest.

On s3:// the trainer writes the artifact to a local staging folder, then `publish`
uploads it: the remote card is deleted first (an old card never vouches for new
weights), then the weights, tokenizer and curves, then the card, then the result. There
is no temporary prefix renamed into place, because S3 has no rename (a "move" is a full
copy of the weights, then a delete). It is not needed: each object's PUT is atomic, and a
multipart upload is invisible until it completes, so a killed upload leaves either the
old object or none, never half of one; and since the card goes last and carries the
weights' digest, a prefix whose card is missing or disagrees with its weights is refused
by every reader. Card-last gives the all-or-nothing guarantee without copying the weights.
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

from modelplane_runtime import objectstore
from modelplane_runtime.contract import (
    HUGGINGFACE_ARCHITECTURES,
    RESULT_FILE,
    RunConfig,
    TrainingResult,
)
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


def publish(directory: Path, uri: str) -> None:
    """Upload the artifact staged in `directory` (saved, its result written) to the
    s3:// folder `uri`: the old card goes first, the new card and result last (see the
    module's docstring). Checkpoints under `directory` are not part of it."""
    prefix = objectstore.parse(uri, field="output.uri")
    objectstore.delete_object(prefix.child(CARD), field="output.uri")
    objectstore.delete_object(prefix.child(RESULT), field="output.uri")
    objectstore.upload_tree(
        directory, prefix, field="output.uri", last=(CARD, RESULT), exclude=("checkpoints",)
    )


def fetch_published(uri: str, directory: Path) -> bool:
    """Download the card and result of the s3:// artifact `uri` into `directory`; False
    when either is not there (the artifact was never published, or is being replaced)."""
    prefix = objectstore.parse(uri, field="output.uri")
    for name in (CARD, RESULT):
        if not objectstore.exists(prefix.child(name), field="output.uri"):
            return False
    for name in (CARD, RESULT):
        objectstore.download_file(prefix.child(name), directory / name, field="output.uri")
    return True


def verify_artifact(
    directory: Path,
    *,
    source: str | None = None,
    expected_digest: str | None = None,
    field: str = "model.uri",
) -> dict[str, Any]:
    """The card of the artifact in `directory`, once its weights are known to be the ones
    the card (and `expected_digest`, when given) names. `source` is the URI the folder was
    copied from: errors name it (the s3:// object), not the local copy."""
    where = source.rstrip("/") if source else str(directory)
    card_path = directory / CARD
    if not card_path.is_file():
        raise ConfigError(f"{field}: {where} is not a modelplane artifact (no {CARD})")
    try:
        card: dict[str, Any] = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{field}: {where}/{CARD} is not JSON: {exc}") from exc
    if card.get("format") != CARD_FORMAT:
        raise ConfigError(f"{where}/{CARD}: unsupported model card format {card.get('format')}")
    weights = directory / card["weights"]
    if not weights.is_file():
        raise ConfigError(f"{field}: {where}/{card['weights']} is missing; the card names it")
    digest = sha256_file(weights)
    wanted = card["digest"] if digest != card["digest"] else expected_digest
    if wanted and digest != wanted:
        which = "the model card's" if wanted == card["digest"] else "the expected digest"
        raise ConfigError(
            f"{where}/{card['weights']}: weights digest {digest} does not match {wanted} "
            f"(the digest differs from {which}); the artifact was changed or is incomplete"
        )
    return card


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

    def vocabulary(self) -> list[str]:
        """The tokens a text model knows (empty for other kinds)."""
        return list(self.tokenizer.get_vocab()) if self.tokenizer is not None else []

    @torch.no_grad()
    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encoded inputs [N, ...] -> class probabilities [N, C]."""
        return torch.softmax(self.model(inputs).float(), dim=-1)


def load_artifact(
    directory: Path, *, expected_digest: str | None = None, device: str = "cpu"
) -> LoadedModel:
    """Rebuild the model from `directory` alone, refusing weights whose digest differs.
    A huggingface text classifier is a Hugging Face folder (lm.artifact.load_classifier);
    a language model is refused: it generates text, it does not classify."""
    card = verify_artifact(directory, expected_digest=expected_digest)
    if card["architecture"] in HUGGINGFACE_ARCHITECTURES and card["task"] == "text-classification":
        # transformers takes seconds to import: only these artifacts pay it
        from modelplane_runtime.lm.artifact import load_classifier  # noqa: PLC0415

        return load_classifier(directory, card=card, device=device)
    if card["architecture"] in HUGGINGFACE_ARCHITECTURES:
        raise ConfigError(
            f"model.uri: {directory} is a {card['task']} model ({card['architecture']}, a "
            "Hugging Face folder): it generates text, and a replica serves it through the "
            "OpenAI API (serve/generation.py), not as a classifier"
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


def load_init_weights(model: nn.Module, directory: Path, *, source: str | None = None) -> int:
    """Copy every tensor of `directory`'s weights whose name and shape match `model`'s.

    Heads differ between pre-training and fine-tuning and are left as initialised; an
    encoder that matches nothing means the artifact does not fit this model.
    """
    verify_artifact(directory, source=source, field="model.init.uri")
    saved = load_file(str(directory / WEIGHTS))
    own = model.state_dict()
    matching = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    encoder_keys = [k for k in own if k.startswith("encoder.")]
    missing = [k for k in encoder_keys if k not in matching]
    if not matching or missing:
        raise ConfigError(
            f"model.init.uri: {source or directory} does not fit this model ({len(missing)} "
            "encoder tensors missing or of another shape); use the same architecture and params"
        )
    model.load_state_dict(matching, strict=False)
    return len(matching)
