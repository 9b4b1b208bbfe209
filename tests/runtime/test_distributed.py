"""DDP over Gloo: two processes reach the weights one process reaches; the collective
timeout comes from MODELPLANE_DIST_TIMEOUT_S."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch.distributed
from safetensors.torch import load_file

from modelplane_runtime.contract import ENV_DIST_TIMEOUT as ENV_TIMEOUT
from modelplane_runtime.contract import DataConfig, OptimConfig
from modelplane_runtime.errors import ConfigError
from modelplane_runtime.train.distributed import DistEnv, collective_timeout
from tests.runtime.conftest import make_config, run_processes

# Two ranks average two half-batch gradients where one process averages one full batch:
# the same sums in another order, so float rounding may differ in the last bits.
TOLERANCE = 1e-5


def test_two_gloo_processes_reach_the_weights_of_one_with_the_same_global_batch(
    tmp_path: Path,
) -> None:
    optim = OptimConfig(epochs=3, batch_size=32, learning_rate=1e-3, seed=7)
    single = make_config(tmp_path / "one", name="eq", optim=optim)
    double = make_config(tmp_path / "two", name="eq", optim=optim)
    (one,) = run_processes(single, tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    both = run_processes(double, tmp_path, world_size=2)
    assert [p.returncode for p in both] == [0, 0], [p.stderr[-2000:] for p in both]
    a = load_file(str(tmp_path / "one" / "out" / "eq" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "out" / "eq" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < TOLERANCE, worst
    # and they really trained: the weights moved away from their initialisation
    assert max(float(a[k].abs().max()) for k in a) > 0.05


def test_a_batch_that_does_not_split_over_the_processes_is_a_config_error(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, optim=OptimConfig(epochs=1, batch_size=33))
    results = run_processes(config, tmp_path, world_size=2)
    assert [p.returncode for p in results] == [42, 42]
    assert "must be divisible by the 2 training processes" in results[0].stderr


def test_two_ranks_train_one_tokenizer_and_keep_it_beside_the_checkpoints(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        name="txt",
        architecture="transformer",
        task="text-classification",
        params={"layers": 1, "hidden": 32, "heads": 2, "max_length": 16, "vocab_size": 300},
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.2),
        optim=OptimConfig(epochs=1, batch_size=32, learning_rate=1e-3),
    )
    results = run_processes(config, tmp_path, world_size=2)
    assert [p.returncode for p in results] == [0, 0], [p.stderr[-2000:] for p in results]
    out = tmp_path / "out" / "txt"
    kept = json.loads((out / "checkpoints" / "tokenizer.json").read_text())["model"]["vocab"]
    served = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert kept == served


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [({}, 600.0), ({ENV_TIMEOUT: "120"}, 120.0), ({ENV_TIMEOUT: " 2.5 "}, 2.5)],
    ids=["unset is ten minutes", "whole seconds", "fractions of a second"],
)
def test_the_collective_timeout_is_read_in_seconds(environ: dict[str, str], seconds: float) -> None:
    assert collective_timeout(environ) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "value",
    ["", "ten", "10m", "0", "-30", "inf", "nan"],
    ids=["empty", "a word", "a unit", "zero", "negative", "infinite", "not a number"],
)
def test_a_timeout_that_is_not_a_positive_number_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match=f"{ENV_TIMEOUT}=.*positive number of seconds"):
        collective_timeout({ENV_TIMEOUT: value})


def test_the_process_group_waits_as_long_as_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setenv(ENV_TIMEOUT, "42")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    DistEnv(rank=1, world_size=2).init()
    assert calls == [
        {"backend": "gloo", "rank": 1, "world_size": 2, "timeout": timedelta(seconds=42)}
    ]


def test_a_bad_timeout_fails_the_run_as_a_config_error(tmp_path: Path) -> None:
    (result,) = run_processes(
        make_config(tmp_path, optim=OptimConfig(epochs=1)),
        tmp_path,
        extra_env={ENV_TIMEOUT: "ten minutes"},
    )
    assert result.returncode == 42, result.stderr[-2000:]
    assert f"{ENV_TIMEOUT}='ten minutes': must be a positive number of seconds" in result.stderr
    assert not (tmp_path / "out").exists()
