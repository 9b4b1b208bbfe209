"""architecture -> builder, and the tiny defaults that train in seconds on a CPU."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from modelplane_runtime.errors import ConfigError
from modelplane_runtime.models.bert import Bert
from modelplane_runtime.models.mlp import MLP
from modelplane_runtime.models.resnet import ResNet
from modelplane_runtime.models.transformer import TransformerClassifier

DEFAULTS: dict[str, dict[str, int | float]] = {
    "transformer": {
        "layers": 2,
        "hidden": 64,
        "heads": 4,
        "dropout": 0.1,
        "max_length": 64,
        "vocab_size": 2000,
    },
    "bert": {
        "layers": 2,
        "hidden": 64,
        "heads": 4,
        "dropout": 0.1,
        "max_length": 64,
        "vocab_size": 2000,
    },
    "resnet": {"layers": 1, "hidden": 16},
    "mlp": {"layers": 2, "hidden": 64, "dropout": 0.1},
}


@dataclass(frozen=True)
class DataShape:
    """What the data decides about a model."""

    num_classes: int
    input_shape: tuple[int, ...] = ()
    vocab_size: int = 0


def resolve_params(architecture: str, params: dict[str, Any]) -> dict[str, int | float]:
    """The architecture's defaults overlaid with `params`; unknown keys are refused."""
    if architecture not in DEFAULTS:
        raise ConfigError(
            f"model.architecture: unknown architecture {architecture!r}; "
            f"known: {', '.join(DEFAULTS)}"
        )
    defaults = DEFAULTS[architecture]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(
            f"model.params: {unknown} do not apply to {architecture} "
            f"(it takes {', '.join(defaults)})"
        )
    return {**defaults, **params}


def _encoder_args(p: dict[str, Any], shape: DataShape) -> dict[str, Any]:
    """What the transformer classifier and BERT both take."""
    return {
        "vocab_size": shape.vocab_size,
        "max_length": int(p["max_length"]),
        "num_classes": shape.num_classes,
        "hidden": int(p["hidden"]),
        "layers": int(p["layers"]),
        "heads": int(p["heads"]),
        "dropout": float(p["dropout"]),
    }


def _transformer(task: str, p: dict[str, Any], shape: DataShape) -> nn.Module:
    return TransformerClassifier(**_encoder_args(p, shape))


def _bert(task: str, p: dict[str, Any], shape: DataShape) -> nn.Module:
    return Bert(**_encoder_args(p, shape), masked_lm=task == "masked-lm")


def _resnet(task: str, p: dict[str, Any], shape: DataShape) -> nn.Module:
    if len(shape.input_shape) != 3:
        raise ConfigError(f"resnet takes images [C, H, W], the data is {shape.input_shape}")
    return ResNet(
        channels=shape.input_shape[0],
        num_classes=shape.num_classes,
        hidden=int(p["hidden"]),
        layers=int(p["layers"]),
    )


def _mlp(task: str, p: dict[str, Any], shape: DataShape) -> nn.Module:
    return MLP(
        inputs=math.prod(shape.input_shape),
        num_classes=shape.num_classes,
        hidden=int(p["hidden"]),
        layers=int(p["layers"]),
        dropout=float(p["dropout"]),
    )


BUILDERS: dict[str, Callable[[str, dict[str, Any], DataShape], nn.Module]] = {
    "transformer": _transformer,
    "bert": _bert,
    "resnet": _resnet,
    "mlp": _mlp,
}


def build_model(
    architecture: str, task: str, params: dict[str, Any], shape: DataShape
) -> nn.Module:
    """Build the network for `architecture` with resolved `params`."""
    resolved = resolve_params(architecture, params)
    if "heads" in resolved and int(resolved["hidden"]) % int(resolved["heads"]):
        raise ConfigError("model.params: hidden must be divisible by heads")
    return BUILDERS[architecture](task, resolved, shape)
