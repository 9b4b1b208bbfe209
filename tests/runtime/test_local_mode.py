"""`modelplane run` trains a ModelTraining on this machine and says where the result is."""

from __future__ import annotations

import io
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from modelplane import local
from modelplane.cli import app
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.api.training import ParamSpec
from modelplane_operator.tuning import grid
from tests.factories import make_training

runner = CliRunner()


def test_run_trains_locally_and_prints_metrics_and_the_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path / "pvc"))
    resource = make_training(
        {
            "spec.hyperparameters": {"epochs": 3, "batchSize": 32, "learningRate": 0.003},
            "spec.resources.gpusPerNode": 2,  # two processes on the CPU, over Gloo
        },
        name="local",
    )
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(resource))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 process(es)" in result.output
    artifact = tmp_path / "pvc" / "models" / "demo" / "local"
    assert f"artifact: {artifact}" in result.output.replace("\n", "")
    card = json.loads((artifact / "model_card.json").read_text())
    assert card["metrics"]["accuracy"] > 0.85
    assert "accuracy" in result.output


def test_a_config_error_in_local_mode_exits_with_its_code_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path / "pvc"))
    resource = make_training({"spec.data.train.uri": "pvc://datasets/missing.csv"}, name="bad")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(resource))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 42
    assert "configuration error" in result.output
    assert "not found" in result.output


def test_local_tuning_finds_a_better_model_than_its_worst_trial_and_lists_every_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path / "pvc"))
    resource = make_training(
        {
            "spec.hyperparameters": {"epochs": 2, "batchSize": 32},
            "spec.tuning": {
                "objective": {"metric": "f1", "goal": "maximize"},
                "algorithm": "random",
                "maxTrials": 4,
                "parallelTrials": 1,
                "space": {"learningRate": {"type": "loguniform", "min": 1e-6, "max": 1e-1}},
            },
        },
        name="tuned",
    )
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(resource))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    for i in range(4):
        assert f"tuned-t{i}" in result.output
    cards = [
        json.loads(
            (tmp_path / "pvc" / "models" / "demo" / f"tuned-t{i}" / "model_card.json").read_text()
        )
        for i in range(4)
    ]
    f1 = [card["metrics"]["f1"] for card in cards]
    assert max(f1) > min(f1) + 0.05, f1
    best = f1.index(max(f1))
    assert f"tuned-t{best} (best)" in result.output


def test_local_tuning_stops_a_lagging_trial_by_the_median_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path / "pvc"))
    # Grid order is the seed's shuffle of the points: pick the listing that tries the
    # hopeless learning rate last, so two finished trials set the median first.
    seed = 42
    for values in itertools.permutations([3e-3, 1e-2, 1e-7]):
        space = {"learningRate": ParamSpec(type="choice", values=list(values))}
        order = grid(space)
        random.Random(seed).shuffle(order)
        if order[-1]["learningRate"] == 1e-7:
            break
    else:
        pytest.fail("no listing puts the lagging trial last")
    resource = make_training(
        {
            "spec.hyperparameters": {"epochs": 20, "batchSize": 8, "seed": seed},
            "spec.tuning": {
                "objective": {"metric": "accuracy", "goal": "maximize"},
                "algorithm": "grid",
                "maxTrials": 3,
                "earlyStopping": {"rule": "median", "minSteps": 0},
                "space": {"learningRate": {"type": "choice", "values": list(values)}},
            },
        },
        name="early",
    )
    path = tmp_path / "early.yaml"
    path.write_text(yaml.safe_dump(resource))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert "stopped early" in result.output
    lagging = tmp_path / "pvc" / "models" / "demo" / "early-t2"
    assert not (lagging / "model_card.json").exists()  # it never finished


def test_a_finished_run_reports_its_objective_at_every_epochs_end() -> None:
    from modelplane_runtime.train.loop import objective_by_step  # noqa: PLC0415

    epochs = {"1": {"accuracy": 0.5}, "2": {"accuracy": 0.75}, "3": {"f1": 0.1}}
    # the steps the runtime reports metrics at (metrics_step): each epoch's last step
    assert objective_by_step(epochs, "accuracy", steps=90, total_epochs=3) == {
        "30": 0.5,
        "60": 0.75,
    }
    # epochs of unequal length: no step can be named, so nothing is claimed
    assert objective_by_step(epochs, "accuracy", steps=91, total_epochs=3) == {}
    many = {str(e): {"f1": e / 100} for e in range(1, 101)}
    latest = objective_by_step(many, "f1", steps=1000, total_epochs=100)
    assert list(latest) == [str(e * 10) for e in range(37, 101)]  # the latest 64, in order


def test_the_training_processes_end_when_local_mode_stops_waiting_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or any error while following) must not leave a run training unwatched."""
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path / "pvc"))
    seen: list[Any] = []

    def interrupted(processes: list[Any], *args: Any) -> tuple[int, None]:
        seen.extend(processes)
        raise RuntimeError("the wait ended")  # as pytest-timeout's Failed, or a bug

    monkeypatch.setattr(local, "_follow", interrupted)
    training = ModelTraining.model_validate(make_training(name="interrupted"))
    with pytest.raises(RuntimeError, match="the wait ended"):
        local.run_training(training, console=Console(file=io.StringIO()))
    assert seen
    assert all(process.poll() is not None for process in seen)
