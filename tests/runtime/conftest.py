"""Helpers for runtime tests: real torch on the CPU, tiny models, built-in data."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelplane_harness.cluster import free_port
from modelplane_runtime.contract import DataConfig, OptimConfig, RunConfig

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "dog",
    "ran",
    "far",
    "away",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "fox",
    "jumps",
]
TINY_LLAMA = {"layers": 2, "hidden": 32, "heads": 2, "max_length": 32, "vocab_size": 300}


def make_config(tmp_path: Path, *, name: str = "run", **overrides: Any) -> RunConfig:
    """A small MLP run on breast-cancer, writing under `tmp_path`; override any field."""
    data = overrides.pop(
        "data", DataConfig(train_uri="builtin://breast-cancer", validation_split=0.25)
    )
    optim = overrides.pop("optim", OptimConfig(epochs=3, batch_size=32, learning_rate=1e-3))
    fields: dict[str, Any] = {
        "name": name,
        "architecture": "mlp",
        "task": "tabular-classification",
        "params": {"dropout": 0.0},
        "data": data,
        "optim": optim,
        "output_uri": f"file://{tmp_path}/out",
        "progress_port": 0,
        "checkpoint_every_steps": 1000,
    }
    fields.update(overrides)
    return RunConfig(**fields)


def write_lm_records(path: Path, *, count: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """`count` prompt/response JSONL records of random lengths at `path` (so ranks and
    micro-batches hold different numbers of supervised tokens); returns them."""
    rng = random.Random(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    records = [{"prompt": words(2, 8), "response": words(1, 9)} for _ in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def make_lm_config(tmp_path: Path, *, name: str = "lm", **overrides: Any) -> RunConfig:
    """A tiny llama trained from scratch, fp32, two micro-batches per step, a checkpoint
    every 2 steps; override any field. Without `data`, on records written to
    `tmp_path/train.jsonl`."""
    if "data" not in overrides:
        train = tmp_path / "train.jsonl"
        write_lm_records(train)
        overrides["data"] = DataConfig(train_uri=f"file://{train}", validation_split=0.25)
    fields: dict[str, Any] = {
        "architecture": "llama",
        "task": "text-generation",
        "params": dict(TINY_LLAMA),
        "optim": OptimConfig(
            epochs=2, batch_size=8, learning_rate=3e-3, gradient_accumulation=2, seed=1
        ),
        "checkpoint_every_steps": 2,
        "objective": "perplexity",
    }
    fields.update(overrides)
    return make_config(tmp_path, name=name, **fields)


BUILTIN_CHAT_LLAMA = {"layers": 2, "hidden": 32, "heads": 4, "max_length": 48, "vocab_size": 600}


def make_chat_lm_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    """A tiny from-scratch llama on builtin://chat, built in-process (no progress port,
    no processes); override any field."""
    fields: dict[str, Any] = {
        "name": "lm",
        "architecture": "llama",
        "task": "text-generation",
        "params": BUILTIN_CHAT_LLAMA,
        "data": DataConfig(train_uri="builtin://chat"),
        "optim": OptimConfig(seed=7),
        "output_uri": f"file://{tmp_path}/out",
    }
    fields.update(overrides)
    return RunConfig(**fields)


def tiny_llama_config(
    vocab_size: int,
    *,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Any:
    """transformers' LlamaConfig of the tests' tiny decoder (2 layers, hidden 32)."""
    from transformers import LlamaConfig  # noqa: PLC0415  (transformers imports slowly)

    given: dict[str, Any] = {
        name: value
        for name, value in (
            ("pad_token_id", pad_token_id),
            ("bos_token_id", bos_token_id),
            ("eos_token_id", eos_token_id),
        )
        if value is not None  # left out: transformers' own defaults
    }
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **given,
    )


def run_fresh_python(script: str, *arguments: str) -> None:
    """`script` in a new Python process with nothing of this one's state (offline, a bare
    environment), as another tool would load an artifact; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]


def run_processes(
    config: RunConfig,
    tmp_path: Path,
    *,
    world_size: int = 1,
    timeout: float = 240,
    extra_env: dict[str, str] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run `python -m modelplane_runtime train` as `world_size` real processes (Gloo)."""
    config_path = tmp_path / f"{config.name}-{world_size}.json"
    config_path.write_text(config.to_json())
    port = str(free_port())
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "WORLD_SIZE": str(world_size),
        "OMP_NUM_THREADS": "1",
        "MODELPLANE_DIST_TIMEOUT_S": "120",
        **(extra_env or {}),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "modelplane_runtime", "train", "--config", str(config_path)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world_size)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.fixture(scope="session")
def shared_storage_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One storage cache for the session's SmolLM2 tests: the first converts the shipped
    GGUF into a Hugging Face folder there (~30 s), the others reuse it."""
    return tmp_path_factory.mktemp("storage-cache")
