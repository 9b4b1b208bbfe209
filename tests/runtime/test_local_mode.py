"""`modelplane run` trains a ModelTraining on this machine and says where the result is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelplane.cli import app
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
