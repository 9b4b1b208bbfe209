"""FSDP (train.fsdp) on two Gloo ranks: the same step one process takes, full state
dicts gathered from the shards and put back into them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.multiprocessing.spawn import start_processes
from transformers import LlamaForCausalLM

from modelplane_harness.cluster import free_port
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.train import fsdp
from tests.runtime.conftest import tiny_llama_config

WORLD = 2
VOCAB = 300
MAX_NORM = 0.05  # well below the gradient's norm: clipping acts, so its norm must be global
# One SGD step: two ranks' reduce-scattered half-batch gradients against one process's
# whole-batch gradient differ in float rounding only (measured: 7.5e-9; the step moves
# the weights by 1.3e-3).
TOLERANCE = 1e-6


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(VOCAB))


def _batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(1))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    """The trainer's normalisation: a loss summed over this rank's tokens, divided by the
    tokens of every rank, times the ranks (FSDP averages the gradients over them)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    logits = model(input_ids=ids).logits[:, :-1].float()
    nll = nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="sum"
    )
    (nll * world / (_batch().shape[0] * (_batch().shape[1] - 1))).backward()  # type: ignore[no-untyped-call]
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    optimizer.step()
    optimizer.zero_grad()
    full = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(full)


def _rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _llama()
        fsdp.shard(model, precision="fp32", device=torch.device("cpu"))
        optimizer = _optimizer(model)
        start, _ = fsdp.full_state(model)
        half = _batch().shape[0] // WORLD
        norm = _step(model, optimizer, _batch()[rank * half : (rank + 1) * half])
        after, optimizer_state = fsdp.full_state(model, optimizer)
        # back into the shards of a fresh model and optimizer, and gathered again
        again = _llama()
        fsdp.shard(again, precision="fp32", device=torch.device("cpu"))
        again_optimizer = _optimizer(again)
        saved: dict[str, Any] = {"after": after, "optimizer": optimizer_state}
        dist.broadcast_object_list(box := [saved], src=0)
        fsdp.load_full_state(
            again,
            again_optimizer,
            model_state=box[0]["after"],
            optimizer_state=box[0]["optimizer"],
        )
        reloaded, reloaded_optimizer = fsdp.full_state(again, again_optimizer)
        if rank == 0:
            torch.save(
                {
                    "start": start,
                    "after": after,
                    "norm": norm,
                    "optimizer": optimizer_state,
                    "reloaded": reloaded,
                    "reloaded_optimizer": reloaded_optimizer,
                },
                out,
            )
        else:
            assert start == after == {}, "only rank 0 receives the full state"
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fsdp") / "rank0.pt"
    start_processes(  # type: ignore[no-untyped-call]
        _rank, args=(free_port(), out), nprocs=WORLD, start_method="spawn", join=True
    )
    state: dict[str, Any] = torch.load(out, weights_only=True)
    return state


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_gathering_the_shards_gives_the_state_dict_of_one_process(
    sharded: dict[str, Any],
) -> None:
    whole = _llama().state_dict()
    assert sharded["start"].keys() == whole.keys()
    assert all(torch.equal(sharded["start"][k], whole[k]) for k in whole)


def test_two_sharded_ranks_take_the_step_one_process_takes(sharded: dict[str, Any]) -> None:
    model = _llama()
    norm = _step(model, _optimizer(model), _batch())
    assert norm > 10 * MAX_NORM  # clipped
    assert sharded["norm"] == pytest.approx(norm, rel=TOLERANCE)  # the global norm
    assert _worst(sharded["after"], model.state_dict()) < TOLERANCE
    assert _worst(sharded["after"], sharded["start"]) > 100 * TOLERANCE  # it stepped


def test_a_full_state_goes_back_into_the_shards_unchanged(sharded: dict[str, Any]) -> None:
    assert _worst(sharded["reloaded"], sharded["after"]) == 0.0
    momentum = {k: v["momentum_buffer"] for k, v in sharded["optimizer"]["state"].items()}
    again = {k: v["momentum_buffer"] for k, v in sharded["reloaded_optimizer"]["state"].items()}
    assert set(momentum) == {name for name, _ in _llama().named_parameters()}
    assert _worst(again, momentum) == 0.0


class _DecoderLayer(nn.Linear):
    pass


# peft 0.21 asks transformers 5 for a property that is deprecated there
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    ("build", "units"),
    [
        (_llama, ["LlamaDecoderLayer", "LlamaDecoderLayer"]),
        (
            lambda: get_peft_model(
                _llama(), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
            ),
            ["LlamaDecoderLayer", "LlamaDecoderLayer"],
        ),
        (
            lambda: nn.Sequential(_DecoderLayer(2, 2), nn.ReLU(), _DecoderLayer(2, 2)),
            ["_DecoderLayer"] * 2,
        ),
        (lambda: nn.Sequential(nn.Linear(2, 2), nn.ReLU()), ["Linear", "ReLU"]),
    ],
    ids=[
        "a transformers model shards each decoder layer",
        "so does one wrapped by PEFT",
        "any module shards the layers named DecoderLayer",
        "else each top-level child",
    ],
)
def test_the_units_of_sharding(build: Any, units: list[str]) -> None:
    assert [type(m).__name__ for m in fsdp.layer_units(build())] == units


def test_fp16_needs_a_gpu_and_bf16_computes_in_bf16_and_reduces_in_fp32() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        fsdp.precision_policy("fp16", torch.device("cpu"))
    policy = fsdp.precision_policy("bf16", torch.device("cpu"))
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert fsdp.precision_policy("fp32", torch.device("cpu")).param_dtype is None
