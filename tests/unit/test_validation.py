"""Resources are accepted or refused the way the API server will, with messages that teach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.validation import check_file, check_object
from tests.factories import (
    EXAMPLES,
    INVALID_EXAMPLES,
    delete,
    expected_message,
    make_deployment,
    make_training,
    make_tuning,
)

VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted(INVALID_EXAMPLES.glob("*.yaml"))


def problems(obj: dict[str, Any]) -> list[str]:
    return [str(p) for p in check_object(obj, "test").problems]


def test_there_are_examples_of_both_kinds_for_every_family() -> None:
    names = {p.stem for p in VALID}
    for family in ("text", "image", "tabular"):
        assert {f"{family}-training", f"{family}-deployment"} <= names


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_every_example_is_valid(path: Path) -> None:
    results = list(check_file(path))
    assert results
    assert all(r.ok for r in results), [str(p) for r in results for p in r.problems]


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_every_invalid_example_is_refused_naming_the_problem(path: Path) -> None:
    results = list(check_file(path))
    messages = [str(p) for r in results for p in r.problems]
    assert messages, f"{path.name} was accepted"
    assert any(expected_message(path) in m for m in messages), messages


def test_defaults_fill_an_omitted_spec_section() -> None:
    training = ModelTraining.model_validate(make_training())
    assert training.spec.hyperparameters.epochs == 3
    assert training.spec.resources.nodes == 1
    assert training.spec.checkpoint.keep == 3
    deployment = ModelDeployment.model_validate(make_deployment())
    assert (deployment.spec.replicas.min, deployment.spec.replicas.max) == (1, 1)


def test_camel_case_round_trips_through_yaml_names() -> None:
    training = ModelTraining.model_validate(
        make_training({"spec.hyperparameters": {"batchSize": 8, "learningRate": 0.01}})
    )
    dumped = training.model_dump(exclude_none=True)
    assert dumped["spec"]["hyperparameters"]["batchSize"] == 8
    assert "batch_size" not in dumped["spec"]["hyperparameters"]
    assert ModelTraining.model_validate(dumped) == training


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"spec.replicas": {"min": 3, "max": 2}},
            "spec.replicas.min",
            "min must be less than or equal to max",
        ),
        (
            {"spec.model": {"fromTraining": "a", "uri": "pvc://m/a"}},
            "spec.model",
            "exactly one of fromTraining and uri",
        ),
        ({"spec.model": {}}, "spec.model", "exactly one of fromTraining and uri"),
        (
            {"spec.resources.gpusPerReplica": 0.5, "spec.optimization.quantization": "int8"},
            "spec.optimization.quantization",
            "int8 quantization is for CPU serving",
        ),
        ({"spec.requireMetrics": {"loss": 0.1}}, "spec.requireMetrics", "keys must be among"),
        ({"spec.replicas.max": 0}, "spec.replicas.max", "greater than or equal to 1"),
        ({"spec.resources.cpu": "four"}, "spec.resources.cpu", "not a Kubernetes quantity"),
    ],
    ids=[
        "min replicas above max is refused",
        "two model sources are refused",
        "no model source is refused",
        "int8 on a GPU replica is refused",
        "a gate on a lower-is-better metric is refused",
        "zero max replicas is refused",
        "a cpu that is not a quantity is refused",
    ],
)
def test_deployment_rules(changes: dict[str, Any], field: str, message: str) -> None:
    found = problems(make_deployment(changes))
    assert any(p.startswith(f"{field}:") and message in p for p in found), found


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"spec.data.validation": {"uri": "pvc://d/v.csv"}, "spec.data.validationSplit": 0.1},
            "spec.data",
            "either validation or validationSplit",
        ),
        (
            {"spec.tuning": {**make_tuning(), "maxTrials": 2, "parallelTrials": 3}},
            "spec.tuning.parallelTrials",
            "must not exceed maxTrials",
        ),
        (
            {"spec.tuning": make_tuning(learningRate={"type": "uniform", "min": 1, "max": 1})},
            "spec.tuning.space.learningRate",
            "min < max",
        ),
        (
            {"spec.tuning": make_tuning(learningRate={"type": "loguniform", "min": 0, "max": 1})},
            "spec.tuning.space.learningRate.min",
            "loguniform needs min > 0",
        ),
        (
            {"spec.tuning": make_tuning(batchSize={"type": "choice", "values": []})},
            "spec.tuning.space.batchSize",
            "non-empty values",
        ),
        (
            {"spec.tuning": make_tuning(optimizer={"type": "uniform", "min": 0, "max": 1})},
            "spec.tuning.space",
            "only be searched with type choice",
        ),
        (
            {"spec.tuning": make_tuning(batchSize={"type": "uniform", "min": 8, "max": 64})},
            "spec.tuning.space",
            "only be searched with type int or choice",
        ),
        (
            {"spec.tuning": make_tuning(batchSize={"type": "choice", "options": ["big"]})},
            "spec.tuning.space",
            "numeric hyperparameters take values",
        ),
        (
            {"spec.tuning": make_tuning(dropout={"type": "uniform", "min": 0, "max": 0.5})},
            "spec.tuning.space",
            "space keys must be hyperparameter names",
        ),
        (
            {"spec.model": {"architecture": "resnet", "task": "masked-lm"}},
            "spec.model.task",
            "task does not fit architecture",
        ),
        (
            {"spec.model.params": {"hidden": 10, "heads": 4}},
            "spec.model.params.heads",
            "divisible by heads",
        ),
        (
            {"spec.evaluation.metrics": ["top5Accuracy"]},
            "spec.evaluation.metrics",
            "only for image-classification",
        ),
        ({"spec.output": delete()}, "spec.output", "Field required"),
        ({"spec.data.train.uri": "http://x/y"}, "spec.data.train.uri", "pvc://"),
        ({"metadata.name": "Upper"}, "metadata.name", "must start with a lowercase letter"),
        ({"spec.hyperparameters.lr": 0.1}, "spec.hyperparameters.lr", "unknown field"),
    ],
    ids=[
        "validation data and a split together are refused",
        "more parallel trials than trials are refused",
        "an empty numeric range is refused",
        "a loguniform range from zero is refused",
        "an empty choice is refused",
        "a categorical hyperparameter needs choice",
        "an integer hyperparameter needs int or choice",
        "a numeric hyperparameter cannot take named options",
        "an unknown hyperparameter in the space is refused",
        "a task the architecture cannot do is refused",
        "heads that do not divide hidden are refused",
        "top-5 accuracy outside images is refused",
        "a missing output is refused",
        "an unsupported URI scheme is refused",
        "an uppercase name is refused",
        "a misspelt field is refused",
    ],
)
def test_training_rules(changes: dict[str, Any], field: str, message: str) -> None:
    found = problems(make_training(changes))
    assert any(p.startswith(f"{field}:") and message in p for p in found), found


def test_a_full_tuning_spec_is_accepted() -> None:
    tuning = {
        **make_tuning(
            learningRate={"type": "loguniform", "min": 1e-5, "max": 1e-2},
            batchSize={"type": "choice", "values": [16, 32]},
            epochs={"type": "int", "min": 1, "max": 5},
            optimizer={"type": "choice", "options": ["adamw", "sgd"]},
        ),
        "algorithm": "tpe",
        "maxTrials": 8,
        "parallelTrials": 2,
        "earlyStopping": {"rule": "median", "minSteps": 10},
    }
    assert problems(make_training({"spec.tuning": tuning})) == []


def test_an_object_of_another_kind_is_refused_by_name() -> None:
    found = problems({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    assert found
    assert "not a modelplane resource" in found[0]


def test_a_yaml_syntax_error_is_one_readable_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("spec: [unclosed\n")
    (result,) = check_file(path)
    assert not result.ok
    assert "cannot read" in str(result.problems[0])
