"""`modelplane run` on a ModelDeployment: the model gate, a clear error for a missing
training, and the whole local chain — train, serve, answer — in one file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelplane.cli import app
from modelplane.serving import record_training
from modelplane_harness.cluster import free_port
from modelplane_runtime.contract import TrainingResult
from tests.factories import make_deployment, make_training
from tests.serving.conftest import Artifact

runner = CliRunner()


def write(path: Path, *resources: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump_all(resources))
    return path


def test_a_model_below_require_metrics_is_rejected_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    record_training(
        "weak",
        TrainingResult(
            run="weak",
            artifact_uri="pvc://models/weak/weak",
            digest="sha256:ab",
            metrics={"f1": 0.61},
        ),
    )
    deployment = make_deployment(
        {"spec.model": {"fromTraining": "weak"}, "spec.requireMetrics": {"f1": 0.9}}
    )
    result = runner.invoke(app, ["run", str(write(tmp_path / "d.yaml", deployment))])
    assert result.exit_code == 4, result.output
    assert "Rejected (MetricsBelowThreshold)" in result.output
    assert "f1 is 0.61, below the required 0.9" in result.output
    assert not (tmp_path / ".local" / "serve-demo").exists()


def test_a_required_metric_the_training_never_reported_is_rejected_as_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    record_training(
        "plain",
        TrainingResult(run="plain", artifact_uri="pvc://m/plain", digest="sha256:ab", metrics={}),
    )
    deployment = make_deployment(
        {"spec.model": {"fromTraining": "plain"}, "spec.requireMetrics": {"f1": 0.9}}
    )
    result = runner.invoke(app, ["run", str(write(tmp_path / "d.yaml", deployment))])
    assert result.exit_code == 4, result.output
    # The operator's reason and words for the same training status.
    assert "Rejected (MetricMissing)" in result.output
    assert "the model reports no f1 (it reports: none)" in result.output


def test_a_uri_model_below_require_metrics_is_refused_by_its_replica_as_on_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table_model: Artifact
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    deployment = make_deployment(
        {"spec.model": {"uri": table_model.uri}, "spec.requireMetrics": {"accuracy": 0.999}}
    )
    result = runner.invoke(
        app, ["run", str(write(tmp_path / "d.yaml", deployment)), "--port", str(free_port())]
    )
    assert result.exit_code == 4, result.output
    assert "Rejected (MetricsBelowThreshold)" in result.output
    assert "the replica refused the model's card: accuracy is" in result.output
    assert "below the required 0.999" in result.output


def test_a_training_that_never_ran_locally_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    deployment = make_deployment({"spec.model": {"fromTraining": "ghost"}})
    result = runner.invoke(app, ["run", str(write(tmp_path / "d.yaml", deployment))])
    assert result.exit_code == 3, result.output
    assert "no local training named 'ghost'" in result.output


def test_one_file_trains_serves_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    training = make_training(
        {"spec.hyperparameters": {"epochs": 3, "learningRate": 0.003}}, name="cancer"
    )
    deployment = make_deployment(
        {"spec.model": {"fromTraining": "cancer"}, "spec.requireMetrics": {"accuracy": 0.8}},
        name="cancer-api",
    )
    path = write(tmp_path / "chain.yaml", training, deployment)
    row = json.dumps([float(v) for v in range(30)])
    result = runner.invoke(
        app, ["run", str(path), "--port", str(free_port()), "--predict", row, "--predict", row]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / ".local" / "trainings" / "cancer.json").read_text())
    assert record["metrics"]["accuracy"] >= 0.8
    assert "ready: http://127.0.0.1:" in result.output
    assert "cancer-api: predictions" in result.output
    table = result.output.split("cancer-api: predictions", 1)[1]
    assert table.count("malignant") + table.count("benign") >= 2
