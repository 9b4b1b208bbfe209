"""The modelplane command: exit codes and output a user (and CI) relies on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner, Result

from modelplane import local
from modelplane.cli import app
from modelplane.local import (
    LocalRun,
    check_storage_credentials,
    credentials_refusal,
    storage_cache,
)
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.judge import judge_training, training_uris
from modelplane_operator.render import render_run_config
from modelplane_runtime.contract import TrainingResult
from tests.factories import (
    EXAMPLES,
    INVALID_EXAMPLES,
    make_deployment,
    make_training,
    make_tuning,
)

runner = CliRunner()


def test_validate_accepts_the_examples() -> None:
    result = runner.invoke(app, ["validate", *map(str, sorted(EXAMPLES.glob("*.yaml")))])
    assert result.exit_code == 0, result.output
    assert "invalid" not in result.output


def test_validate_fails_on_an_invalid_file_and_names_the_field_and_rule() -> None:
    path = INVALID_EXAMPLES / "deployment-replicas-min-above-max.yaml"
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "spec.replicas.min: min must be less than or equal to max" in result.output
    assert "[rule: self.min <= self.max]" in result.output


def test_crds_check_fails_on_a_stale_folder_and_passes_after_writing(tmp_path: Path) -> None:
    assert runner.invoke(app, ["crds", "--dir", str(tmp_path), "--check"]).exit_code == 1
    assert runner.invoke(app, ["crds", "--dir", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crds", "--dir", str(tmp_path), "--check"]).exit_code == 0


# Local mode's verdicts, with the runtime processes replaced by a scripted outcome per run:
# the trial phases, the best trial and the search's phase come from the operator's rules.


def fake_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outcomes: list[tuple[int, float | None]]
) -> list[str]:
    """Replace run_training: run i exits outcomes[i][0] and, when outcomes[i][1] is a
    number, leaves a result with that f1. Returns the names of the runs started."""
    started: list[str] = []

    def run_training(training: ModelTraining, **kwargs: Any) -> LocalRun:
        code, f1 = outcomes[len(started)]
        config = render_run_config(
            training,
            progress_port=0,
            run_name=kwargs.get("run_name"),
            hyperparameters=kwargs.get("hyperparameters"),
        )
        started.append(config.name)
        logs = tmp_path / "logs" / config.name
        logs.mkdir(parents=True)
        (logs / "rank-0.log").write_text(f"t ERROR run {config.name} broke\n")
        artifact = tmp_path / "models" / config.name
        result = None
        if f1 is not None:
            result = TrainingResult(
                run=config.name,
                artifact_uri=f"pvc://models/demo/{config.name}",
                digest="sha256:" + "0" * 64,
                metrics={"f1": f1},
            )
        return LocalRun(exit_code=code, config=config, artifact=artifact, logs=logs, result=result)

    monkeypatch.setattr(local, "run_training", run_training)
    return started


def run_file(tmp_path: Path, resource: dict[str, Any], *options: str) -> Result:
    path = tmp_path / "resource.yaml"
    path.write_text(yaml.safe_dump(resource))
    return runner.invoke(app, ["run", *options, str(path)])


def searching(**tuning: Any) -> dict[str, Any]:
    return make_training({"spec.tuning": {**make_tuning(), **tuning}}, name="search")


def test_local_tuning_stops_after_max_failed_trials_as_the_operator_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    started = fake_runs(monkeypatch, tmp_path, [(1, None)] * 5)
    result = run_file(tmp_path, searching(maxTrials=5, maxFailedTrials=1))
    assert result.exit_code == 1, result.output
    assert started == ["search-t0", "search-t1"]  # no trial starts after the second failure
    assert "Failed (TooManyFailedTrials): 2 trials failed (maxFailedTrials 1)" in result.output
    assert "run search-t1 broke" in result.output


def test_a_trial_that_exits_0_without_a_result_failed_and_the_search_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    fake_runs(monkeypatch, tmp_path, [(0, None), (0, None)])
    result = run_file(tmp_path, searching(maxTrials=2))
    assert result.exit_code == 1, result.output
    assert result.output.count("no result") == 2
    assert "Failed (NoTrialSucceeded): no trial succeeded" in result.output


def test_local_tuning_records_the_operators_best_trial_for_from_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    fake_runs(monkeypatch, tmp_path, [(0, 0.7), (1, None), (0, 0.9), (0, 0.8)])
    result = run_file(tmp_path, searching(maxTrials=4))
    assert result.exit_code == 0, result.output
    assert "search-t2 (best)" in result.output
    assert "exit 1" in result.output
    record = TrainingResult.model_validate_json(
        (tmp_path / ".local" / "trainings" / "search.json").read_text()
    )
    assert (record.run, record.metrics) == ("search-t2", {"f1": 0.9})


def test_a_training_that_exits_0_without_a_result_fails_and_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    fake_runs(monkeypatch, tmp_path, [(0, None)])
    result = run_file(tmp_path, make_training(name="quiet"))
    assert result.exit_code == 1, result.output
    assert "training ended without a result" in result.output
    assert not (tmp_path / ".local" / "trainings" / "quiet.json").exists()


def test_a_result_file_that_is_not_a_training_result_is_no_result(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps({"metrics": {"f1": 0.9}}))
    assert local.read_result(tmp_path) is None
    good = TrainingResult(run="r", artifact_uri="pvc://m/r", digest="sha256:00")
    (tmp_path / "result.json").write_text(good.model_dump_json())
    assert local.read_result(tmp_path) == good


# `modelplane run` refuses what a cluster would refuse or fail, before anything runs.

UNKNOWN_DATA = {"spec.data.train.uri": "builtin://nope"}


def test_run_check_says_a_valid_example_would_run_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    started = fake_runs(monkeypatch, tmp_path, [])
    result = runner.invoke(app, ["run", "--check", str(EXAMPLES / "quickstart-training.yaml")])
    assert result.exit_code == 0, result.output
    assert "ModelTraining/quickstart: would run" in result.output
    assert started == []


def test_run_check_names_the_field_the_api_server_refuses(tmp_path: Path) -> None:
    path = INVALID_EXAMPLES / "deployment-replicas-min-above-max.yaml"
    result = runner.invoke(app, ["run", "--check", str(path)])
    assert result.exit_code == 1
    assert "refused at apply" in result.output
    assert "spec.replicas.min: min must be less than or equal to max" in result.output


def test_run_check_fails_a_spec_the_operator_would_fail_with_its_field_and_message(
    tmp_path: Path,
) -> None:
    training = ModelTraining.model_validate(make_training(UNKNOWN_DATA))
    (problem,) = judge_training(training)
    result = run_file(tmp_path, make_training(UNKNOWN_DATA), "--check")
    assert result.exit_code == 1, result.output
    assert "Failed (InvalidSpec)" in result.output
    assert f"spec.data.train.uri: {problem.message}" in result.output


def test_run_refuses_a_judged_spec_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path))
    started = fake_runs(monkeypatch, tmp_path, [(0, 0.9)])
    good = make_training(name="first")
    bad = make_training(UNKNOWN_DATA, name="second")
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([good, bad]))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 1, result.output
    assert "ModelTraining/second" in result.output
    assert "unknown built-in data set 'nope'" in result.output
    assert started == []  # not even the valid first document


def test_run_check_rejects_a_deployment_the_operators_builders_refuse(tmp_path: Path) -> None:
    deployment = make_deployment({"spec.resources": {"memory": "100Mi"}}, name="tiny")
    result = run_file(tmp_path, deployment, "--check")
    assert result.exit_code == 1, result.output
    assert "Rejected (InvalidSpec)" in result.output
    assert "spec.resources.memory: 100Mi is below the 250Mi a worker pod needs" in result.output


# s3:// without a cluster: local mode's credentials are the caller's AWS_* environment.

S3_TRAINING = make_training(
    {"spec.output.uri": "s3://models/runs", "spec.storage": {"secretRef": {"name": "s3-creds"}}}
)


def s3_file(tmp_path: Path, *documents: dict[str, Any]) -> Path:
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_local_mode_refuses_s3_without_credentials_before_running_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    started: list[str] = []
    monkeypatch.setattr("modelplane.local.run_training", lambda *a, **k: started.append("run"))
    result = runner.invoke(app, ["run", str(s3_file(tmp_path, S3_TRAINING))])
    assert result.exit_code == 1
    assert started == []
    assert "spec.output.uri: s3://models/runs is in object storage" in result.output
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in result.output


def test_a_secret_ref_is_noted_and_the_environment_used_instead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    training = ModelTraining.model_validate(S3_TRAINING)
    console = Console(record=True, width=200)
    check_storage_credentials(training_uris(training.spec), training.spec.storage, console=console)
    said = console.export_text()
    assert "Secret 's3-creds', which local mode cannot read" in said
    assert "AWS_* credentials of this environment" in said


def test_without_s3_local_mode_needs_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    training = ModelTraining.model_validate(make_training())
    assert credentials_refusal(training_uris(training.spec)) is None


def test_local_modes_storage_cache_is_beside_its_pvc_root_unless_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELPLANE_PVC_ROOT", str(tmp_path / "runs"))
    monkeypatch.delenv("MODELPLANE_STORAGE_CACHE", raising=False)
    assert storage_cache() == tmp_path / "runs" / ".local" / "storage-cache"
    monkeypatch.setenv("MODELPLANE_STORAGE_CACHE", str(tmp_path / "cache"))
    assert storage_cache() == tmp_path / "cache"


def test_validate_accepts_s3_without_a_secret_and_warns_that_it_needs_the_default(
    tmp_path: Path,
) -> None:
    bare = make_training({"spec.output.uri": "s3://models/runs"})
    result = runner.invoke(app, ["validate", str(s3_file(tmp_path, bare))])
    assert result.exit_code == 0, result.output
    assert "warning: Failed (InvalidSpec) on a cluster whose operator has no default" in (
        result.output
    )
    assert "spec.storage.secretRef.name" in result.output
    result = runner.invoke(app, ["validate", str(s3_file(tmp_path, S3_TRAINING))])
    assert (result.exit_code, "warning" in result.output) == (0, False)


def test_the_progress_line_shows_tokens_per_second_for_a_language_model() -> None:
    lm = {"epoch": 1, "loss": 2.5, "tokens_per_second": 1234.4, "samples_per_second": 9.0}
    assert local.progress_info(lm) == "epoch 1  loss 2.5000  1,234 tokens/s"
    classifier = {"epoch": 2, "loss": 0.5, "samples_per_second": 880.2}
    assert local.progress_info(classifier) == "epoch 2  loss 0.5000  880 samples/s"
    assert local.progress_info({"epoch": 1}) == "epoch 1"
