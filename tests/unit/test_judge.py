"""judge_training: what the API server accepts but a pod would refuse, found from the spec."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.judge import judge_training, unreachable_without_default
from modelplane_runtime.contract import BUILTIN_DATA_KINDS, DATA_KIND_BY_TASK
from tests.factories import EXAMPLES, make_deployment, make_training, make_tuning

TEXT = {"spec.model": {"architecture": "transformer", "task": "text-classification"}}
GANG_OF_4 = {"spec.resources": {"nodes": 2, "gpusPerNode": 2}}


def judged(changes: dict[str, Any]) -> ModelTraining:
    """A ModelTraining the API accepts (it parses), with `changes`."""
    return ModelTraining.model_validate(make_training(changes))


def space(**params: dict[str, Any]) -> dict[str, Any]:
    return {"spec.tuning": make_tuning(**params)}


CASES = [
    (
        "a built-in data set the runtime does not ship",
        {"spec.data.train.uri": "builtin://mnist"},
        ["spec.data.train.uri"],
        "unknown built-in data set 'mnist'; known: builtin://breast-cancer",
    ),
    (
        "image data for a text task",
        {**TEXT, "spec.data.train.uri": "builtin://digits"},
        ["spec.data.train.uri"],
        "builtin://digits holds image data, but text-classification needs text data "
        "(use builtin://sentiment)",
    ),
    (
        "validation data of another kind than the task reads",
        {"spec.data.validation": {"uri": "builtin://sentiment"}},
        ["spec.data.validation.uri"],
        "holds text data, but tabular-classification needs tabular data",
    ),
    (
        "a pvc URI without a claim",
        {"spec.output.uri": "pvc:///models"},
        ["spec.output.uri"],
        "names no claim",
    ),
    (
        "an int range for batchSize starting at 0",
        space(batchSize={"type": "int", "min": 0, "max": 64}),
        ["spec.tuning.space.batchSize.min"],
        "0 is not a valid batchSize: Input should be greater than or equal to 1",
    ),
    (
        "a learning rate range up to 50",
        space(learningRate={"type": "uniform", "min": 0.001, "max": 50}),
        ["spec.tuning.space.learningRate.max"],
        "50.0 is not a valid learningRate: Input should be less than or equal to 10",
    ),
    (
        "a choice of 0 epochs",
        space(epochs={"type": "choice", "values": [0, 3]}),
        ["spec.tuning.space.epochs.values[0]"],
        "0 is not a valid epochs",
    ),
    (
        "a choice of a fractional batch size",
        space(batchSize={"type": "choice", "values": [16.5, 32]}),
        ["spec.tuning.space.batchSize.values[0]"],
        "16.5 is not a valid batchSize: Input should be a valid integer",
    ),
    (
        "an int range with a fractional bound",
        space(epochs={"type": "int", "min": 1.5, "max": 3}),
        ["spec.tuning.space.epochs.min"],
        "1.5 is not a valid epochs",
    ),
    (
        "an optimizer the runtime does not know",
        space(optimizer={"type": "choice", "options": ["adamw", "adam"]}),
        ["spec.tuning.space.optimizer.options[1]"],
        "'adam' is not a valid optimizer",
    ),
    (
        "a batch that does not split over the gang's processes",
        {**GANG_OF_4, "spec.hyperparameters.batchSize": 30},
        ["spec.hyperparameters.batchSize"],
        "batch size 30 must be divisible by the 4 training processes",
    ),
    (
        "searched batch sizes that do not split over the gang's processes",
        {**GANG_OF_4, **space(batchSize={"type": "choice", "values": [32, 18]})},
        ["spec.tuning.space.batchSize.values[1]"],
        "batch size 18 must be divisible by the 4 training processes",
    ),
    (
        "an int range of batch sizes over several processes",
        {**GANG_OF_4, **space(batchSize={"type": "int", "min": 16, "max": 64})},
        ["spec.tuning.space.batchSize"],
        "an int range samples batch sizes that do not divide over the 4 training processes",
    ),
    (
        "a pvc URI whose claim is not a claim's name",
        {"spec.model.init": {"uri": "pvc://Models_X/base"}},
        ["spec.model.init.uri"],
        "'Models_X' is not a PersistentVolumeClaim name",
    ),
    (
        "several problems at once, each named",
        {
            "spec.data.train.uri": "builtin://nope",
            **space(epochs={"type": "int", "min": 0, "max": 3}),
        },
        ["spec.data.train.uri", "spec.tuning.space.epochs.min"],
        "unknown built-in data set 'nope'",
    ),
]


@pytest.mark.parametrize(
    ("changes", "fields", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_operator_judges(changes: dict[str, Any], fields: list[str], message: str) -> None:
    problems = judge_training(judged(changes))
    assert [p.field for p in problems] == fields
    assert message in str(problems[0])


FINE = [
    ("the default training", {}),
    ("text data for a text task", {**TEXT, "spec.data.train.uri": "builtin://sentiment"}),
    ("files are the pod's to read", {**TEXT, "spec.data.train.uri": "pvc://data/reviews.jsonl"}),
    ("a batch that splits over the gang", {**GANG_OF_4, "spec.hyperparameters.batchSize": 32}),
    (
        "a searched batch size overrides the fixed one",
        {
            **GANG_OF_4,
            "spec.hyperparameters.batchSize": 30,
            **space(batchSize={"type": "choice", "values": [16, 32]}),
        },
    ),
    (
        "fp16 searched on GPUs",
        {
            "spec.resources.gpusPerNode": 1,
            **space(precision={"type": "choice", "options": ["fp16"]}),
        },
    ),
    (
        "an int range of whole numbers written as floats",
        space(epochs={"type": "int", "min": 1.0, "max": 3.0}),
    ),
]


@pytest.mark.parametrize("changes", [c[1] for c in FINE], ids=[c[0] for c in FINE])
def test_the_operator_lets_pass(changes: dict[str, Any]) -> None:
    assert judge_training(judged(changes)) == []


def test_every_example_training_is_judged_runnable() -> None:
    trainings = [
        doc
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "ModelTraining"
    ]
    assert trainings
    for doc in trainings:
        assert judge_training(ModelTraining.model_validate(doc)) == [], doc["metadata"]["name"]


def test_the_contracts_table_of_built_in_data_is_what_the_runtime_ships() -> None:
    """The operator judges builtin:// URIs from the contract; the runtime reads them from
    its own modules, which the operator cannot import."""
    from modelplane_runtime.data.builtin import BUILTIN  # noqa: PLC0415  (numpy)

    assert {name: kind for name, (kind, _) in BUILTIN.items()} == BUILTIN_DATA_KINDS
    assert set(DATA_KIND_BY_TASK.values()) == set(BUILTIN_DATA_KINDS.values())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"spec.model": {"uri": "s3://models/chat"}}, "spec.model.uri"),
        (
            {
                "spec.model": {"uri": "builtin://smollm2-135m-instruct"},
                "spec.generation.adapters": [
                    {"name": "support", "uri": "pvc://adapters/support"},
                    {"name": "sales", "uri": "s3://adapters/sales"},
                ],
            },
            "spec.generation.adapters[1].uri",
        ),
        ({"spec.model": {"uri": "builtin://smollm2-135m-instruct"}}, None),
    ],
    ids=[
        "an s3 model needs a default secret",
        "so does an s3 adapter, by its own field",
        "a built-in model needs none",
    ],
)
def test_a_deployment_without_a_secret_is_reachable_only_through_the_default(
    changes: dict[str, Any], field: str | None
) -> None:
    problem = unreachable_without_default(ModelDeployment.model_validate(make_deployment(changes)))
    assert (problem.field if problem else None) == field
