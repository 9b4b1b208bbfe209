"""FSDP: parameters, gradients and optimizer state sharded over the processes (torch's
FSDP2, `fully_shard`).

Each decoder layer becomes one unit (its parameters are gathered for its forward and
backward, then freed), and the root takes what is left (embeddings, final norm, head).
The sharded parameters are DTensors, so `clip_grad_norm_` computes the global norm over
every shard, and the optimizer steps on each rank's shard only.

Checkpoints and artifacts hold full (unsharded) state dicts: gathering one is a
collective, so every rank calls `full_state`; rank 0 receives the tensors (on the CPU),
the others an empty dict. `load_full_state` puts full state dicts back into the shards.

A PEFT (LoRA) model shards the same way: FSDP2 shards each parameter on its own, so a
unit may mix the frozen base weights with the trainable adapter (only the latter get
gradients and optimizer state). bf16 runs with a MixedPrecisionPolicy; fp16 (CUDA
only) with torch.amp.GradScaler, whose inf check on DTensor gradients is reduced over
the shards, so every rank skips the same steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from modelplane_runtime.errors import ConfigError

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True)


def layer_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become one FSDP unit each: a transformers model's repeated
    blocks (its `_no_split_modules` classes, e.g. LlamaDecoderLayer, found through a
    PEFT wrapper too), else any module whose class name ends with "DecoderLayer", else
    the model's top-level children."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        blocks = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    return blocks or list(model.children())


def precision_policy(precision: str, device: torch.device) -> MixedPrecisionPolicy:
    """Parameters in the training precision for the compute, gradients reduced in fp32."""
    if precision == "fp32":
        return MixedPrecisionPolicy()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("hyperparameters.precision fp16 needs a GPU; use bf16 or fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard(model: nn.Module, *, precision: str, device: torch.device) -> FSDPModule:
    """Shard `model` in place over the default process group; returns it (its class is
    now also an FSDPModule). Call after moving it to `device` and before building the
    optimizer, which must see the sharded parameters."""
    policy = precision_policy(precision, device)
    for unit in layer_units(model):
        fully_shard(unit, mp_policy=policy)
    return fully_shard(model, mp_policy=policy)


def set_gradient_sync(model: nn.Module, *, enabled: bool) -> None:
    """Whether the next backward reduce-scatters the gradients: off for all but the last
    of a step's micro-batches, which then accumulate unsharded on each rank."""
    if not isinstance(model, FSDPModule):
        raise TypeError(f"{type(model).__name__} is not sharded")
    model.set_requires_gradient_sync(enabled)


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model state dict, optimizer state dict), both full and on the CPU on rank 0,
    empty on the others. A collective: every rank must call it. The optimizer's state is
    keyed by parameter names, not positions."""
    model_state = get_model_state_dict(model, options=_GATHER)
    if optimizer is None:
        return model_state, {}
    return model_state, get_optimizer_state_dict(model, optimizer, options=_GATHER)


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Put full state dicts (as `full_state` returns them on rank 0) into the shards;
    every rank calls it with the same full dicts, which are left as they were. Raises
    RuntimeError when the state does not fit the model."""
    # torch replaces the dicts' tensors with the shards in place: give it copies.
    set_model_state_dict(model, dict(model_state), options=_SCATTER)
    if optimizer is not None and optimizer_state:
        copied: dict[str, Any] = {
            "state": {k: dict(v) for k, v in optimizer_state["state"].items()},
            "param_groups": [dict(g) for g in optimizer_state["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, copied, options=_SCATTER)
