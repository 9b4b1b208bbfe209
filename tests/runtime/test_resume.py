"""A run killed after a checkpoint resumes where it was and ends where it would have."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from modelplane_runtime.contract import OptimConfig, TrainingResult
from modelplane_runtime.train.checkpoint import checkpoint_paths, save_checkpoint
from tests.runtime.conftest import make_config, run_processes


def test_a_killed_run_resumes_and_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    optim = OptimConfig(epochs=40, batch_size=16, learning_rate=1e-3, seed=3)
    # dropout on: the resumed run must also restore the random state, not only weights
    params = {"dropout": 0.2}
    straight = make_config(
        tmp_path / "a",
        name="r",
        optim=optim,
        params=params,
        checkpoint_every_steps=25,
        checkpoint_keep=2,
        objective="accuracy",
    )
    broken = make_config(
        tmp_path / "b",
        name="r",
        optim=optim,
        params=params,
        checkpoint_every_steps=25,
        checkpoint_keep=2,
        objective="accuracy",
    )
    (done,) = run_processes(straight, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    config_path = tmp_path / "broken.json"
    config_path.write_text(broken.to_json())
    process = subprocess.Popen(
        [sys.executable, "-m", "modelplane_runtime", "train", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    checkpoints = tmp_path / "b" / "out" / "r" / "checkpoints"
    deadline = time.monotonic() + 180
    while len(checkpoint_paths(checkpoints)) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # no clean-up, as when a node dies
    assert process.wait(timeout=30) == -signal.SIGKILL
    killed_at = int(checkpoint_paths(checkpoints)[0].name[5:14])
    assert not (tmp_path / "b" / "out" / "r" / "model_card.json").exists()

    (resumed,) = run_processes(broken, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"(step {killed_at})" in resumed.stderr  # it continued, it did not start over
    a = load_file(str(tmp_path / "a" / "out" / "r" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "r" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the objective at every epoch's end, those before the kill included
    whole = TrainingResult.model_validate_json(done.stdout.strip().splitlines()[-1])
    pieced = TrainingResult.model_validate_json(resumed.stdout.strip().splitlines()[-1])
    per_epoch = whole.steps // 40
    assert list(whole.objective_by_step) == [str(e * per_epoch) for e in range(1, 41)]
    assert pieced.objective_by_step == whole.objective_by_step


def test_a_finished_run_started_again_reports_its_result_without_training(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, optim=OptimConfig(epochs=1, batch_size=32))
    (first,) = run_processes(config, tmp_path)
    (again,) = run_processes(config, tmp_path)
    assert first.returncode == again.returncode == 0
    assert "already finished" in again.stderr
    assert first.stdout.strip() == again.stdout.strip()


def test_a_checkpoint_of_another_model_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    config = make_config(tmp_path, name="r", optim=OptimConfig(epochs=1, batch_size=32))
    save_checkpoint(
        tmp_path / "out" / "r" / "checkpoints",
        step=5,
        state={"model": {"unrelated.weight": torch.zeros(2)}},
        keep=2,
    )
    (run,) = run_processes(config, tmp_path)
    assert run.returncode == 42, run.stderr[-2000:]
    assert "does not fit this run's model" in run.stderr
    assert "delete" in run.stderr
