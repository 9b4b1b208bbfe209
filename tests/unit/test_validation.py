"""Resources are accepted or refused the way the API server will, with messages that teach."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import pytest

from modelplane_operator.api.common import parse_quantity
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.api.training import DEFAULT_METRICS, PARAMS_BY_ARCHITECTURE, Task
from modelplane_operator.builders.serving import cpu_cores
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
TEXT = {"architecture": "transformer", "task": "text-classification"}
RESNET = {"architecture": "resnet", "task": "image-classification"}
INVALID = sorted(INVALID_EXAMPLES.glob("*.yaml"))
ADAPTER = {"name": "support", "uri": "pvc://models/support/support"}
GATE_F1 = {"spec.requireMetrics": {"f1": 0.9}}
S3_SECRET = {"secretRef": {"name": "s3-creds"}}


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
            {"spec.resources.gpusPerReplica": 1, "spec.optimization.quantization": "int8"},
            "spec.optimization.quantization",
            "int8 quantization is for CPU serving",
        ),
        ({"spec.requireMetrics": {"loss": 0.1}}, "spec.requireMetrics", "keys must be among"),
        ({"spec.replicas.max": 0}, "spec.replicas.max", "greater than or equal to 1"),
        (
            {"spec.resources.cpu": "four"},
            "spec.resources.cpu",
            "must be a Kubernetes quantity of cores",
        ),
        ({"spec.resources.cpu": "-1"}, "spec.resources.cpu", "must be from 1m"),
        ({"spec.resources.cpu": "0"}, "spec.resources.cpu", "must be from 1m"),
        ({"spec.resources.cpu": "2Gi"}, "spec.resources.cpu", "binary suffix such as Gi"),
        ({"spec.resources.cpu": 2000}, "spec.resources.cpu", "to 1024 cores"),
        ({"spec.resources.memory": "-5Gi"}, "spec.resources.memory", "from 1Mi to 16Ti"),
        ({"spec.resources.memory": "32Ti"}, "spec.resources.memory", "from 1Mi to 16Ti"),
        ({"spec.resources.memory": "lots"}, "spec.resources.memory", "quantity of bytes"),
        ({"spec.resources.gpusPerReplica": 0.5}, "spec.resources.gpusPerReplica", "integer"),
        (
            {"spec.optimization.dtype": "fp16"},
            "spec.optimization.dtype",
            "fp16 needs a GPU: set resources.gpusPerReplica",
        ),
        ({"spec.requireMetrics": {"f1": 90}}, "spec.requireMetrics", "from 0 to 1"),
        ({"spec.requireMetrics": {"f1": -0.1}}, "spec.requireMetrics", "from 0 to 1"),
        ({"spec.rollout": {"strategy": "RollingUpdate"}}, "spec.rollout", "unknown field"),
        (
            {"spec.model": {"uri": "builtin://digits"}},
            "spec.model.uri",
            "model.uri must be a pvc://, s3:// or file:// location",
        ),
        (
            {"spec.model": {"uri": "builtin://sentiment"}},
            "spec.model.uri",
            "or a pretrained model that ships with modelplane (builtin://smollm2-135m-instruct)",
        ),
        (
            {"spec.model": {"uri": "builtin://smollm2-135m-instruct"}, **GATE_F1},
            "spec.requireMetrics",
            "a builtin:// model ships with none",
        ),
        (
            {"spec.generation.maxTokens": 0},
            "spec.generation.maxTokens",
            "greater than or equal to 1",
        ),
        (
            {"spec.generation.maxTokens": 131073},
            "spec.generation.maxTokens",
            "less than or equal to 131072",
        ),
        (
            {"spec.generation.maxSequences": 0},
            "spec.generation.maxSequences",
            "greater than or equal to 1",
        ),
        (
            {"spec.generation.kvCacheTokens": 128},
            "spec.generation.kvCacheTokens",
            "greater than or equal to 256",
        ),
        (
            {"spec.generation.adapters": [ADAPTER, {**ADAPTER, "uri": "pvc://models/b/b"}]},
            "spec.generation.adapters",
            "generation.adapters names must be unique",
        ),
        (
            {"spec.generation.adapters": [{**ADAPTER, "name": "-support"}]},
            "spec.generation.adapters[0].name",
            "should match pattern",
        ),
        (
            {"spec.generation.adapters": [{**ADAPTER, "uri": "builtin://smollm2-135m-instruct"}]},
            "spec.generation.adapters[0].uri",
            "builtin:// names a data set or a base model shipped with modelplane, not an adapter",
        ),
        (
            {"spec.generation.adapters": [{**ADAPTER, "uri": "s3://adapters"}]},
            "spec.generation.adapters[0].uri",
            "must name a key prefix after the bucket",
        ),
        (
            {
                "spec.model": {"uri": "pvc://models/chat/chat"},
                "spec.generation.adapters": [ADAPTER],
                "spec.storage": S3_SECRET,
            },
            "spec.storage",
            "neither model.uri nor any generation.adapters[].uri is s3://",
        ),
    ],
    ids=[
        "min replicas above max is refused",
        "two model sources are refused",
        "no model source is refused",
        "int8 on a GPU replica is refused",
        "a gate on a lower-is-better metric is refused",
        "zero max replicas is refused",
        "a cpu that is not a quantity is refused",
        "a negative cpu is refused",
        "zero cpu is refused",
        "a cpu in gibibytes is refused",
        "more than 1024 cores are refused",
        "a negative memory is refused",
        "more than 16Ti of memory is refused",
        "a memory that is not a quantity is refused",
        "half a GPU per replica is refused",
        "fp16 on a CPU replica is refused",
        "a gate in percent is refused",
        "a negative gate is refused",
        "the removed rollout field is refused",
        "serving a built-in data set is refused",
        "the refusal names the built-in model a deployment serves",
        "a gate on a built-in model, which has no metrics, is refused",
        "a request limit of no tokens is refused",
        "more new tokens than any context holds are refused",
        "a batch of no sequences is refused",
        "a KV cache smaller than one page is refused",
        "two adapters of one name are refused",
        "an adapter name a request's model cannot carry is refused",
        "a built-in base model as an adapter is refused",
        "an adapter at a bucket's root is refused",
        "credentials for no s3 model or adapter are refused",
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
            {"spec.model": {**TEXT, "params": {"hidden": 10, "heads": 4}}},
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
        (
            {"spec.model": {**RESNET, "params": {"heads": 4}}},
            "spec.model.params.heads",
            "params.heads is only for transformer, bert and llama",
        ),
        (
            {"spec.model.params": {"heads": 2}},
            "spec.model.params.heads",
            "params.heads is only for transformer, bert and llama",
        ),
        (
            {"spec.model.params": {"vocabSize": 1000}},
            "spec.model.params.vocabSize",
            "params.vocabSize is only for transformer, bert and llama",
        ),
        (
            {"spec.model.params": {"maxLength": 32}},
            "spec.model.params.maxLength",
            "params.maxLength is only for transformer, bert, llama and huggingface",
        ),
        (
            {"spec.model": {**RESNET, "params": {"dropout": 0.1}}},
            "spec.model.params.dropout",
            "params.dropout is only for transformer, bert and mlp",
        ),
        (
            {"spec.model": {**TEXT, "params": {"heads": 3}}},
            "spec.model.params.heads",
            "hidden must be divisible by heads (unset, hidden is 64",
        ),
        (
            {"spec.model": {**TEXT, "params": {"hidden": 10}}},
            "spec.model.params.heads",
            "hidden must be divisible by heads",
        ),
        (
            {"spec.hyperparameters.precision": "fp16"},
            "spec.hyperparameters.precision",
            "fp16 needs GPUs",
        ),
        (
            {"spec.tuning": make_tuning(precision={"type": "choice", "options": ["fp16"]})},
            "spec.tuning.space",
            "tuning.space.precision offers fp16, which needs GPUs",
        ),
        (
            {
                "spec.evaluation.metrics": ["accuracy"],
                "spec.tuning": make_tuning(),
            },
            "spec.tuning.objective.metric",
            "must be loss or a metric the run computes",
        ),
        (
            {"spec.tuning": {**make_tuning(), "objective": {"metric": "top5Accuracy"}}},
            "spec.tuning.objective.metric",
            "must be loss or a metric the run computes",
        ),
        (
            {"spec.tuning": {**make_tuning(), "objective": {"metric": "loss"}}},
            "spec.tuning.objective.goal",
            "must be minimize for loss and perplexity",
        ),
        (
            {"spec.tuning": {**make_tuning(), "objective": {"metric": "f1", "goal": "minimize"}}},
            "spec.tuning.objective.goal",
            "maximize (the default) for the other metrics",
        ),
        (
            {"spec.model.init": {"uri": "builtin://sentiment"}},
            "spec.model.init.uri",
            "model.init.uri must be a pvc://, s3:// or file:// location",
        ),
        (
            {"spec.output.uri": "builtin://models"},
            "spec.output.uri",
            "output.uri must be a pvc://, s3:// or file:// location",
        ),
        (
            {"spec.data.labelColumn": "target"},
            "spec.data.labelColumn",
            "builtin:// data sets have fixed columns",
        ),
        (
            {"spec.data": {"train": {"uri": "pvc://d/t.csv"}, "textColumn": "notes"}},
            "spec.data.textColumn",
            "data.textColumn is for text tasks",
        ),
        (
            {
                "spec.model": {"architecture": "bert", "task": "masked-lm"},
                "spec.data": {"train": {"uri": "pvc://d/t.jsonl"}, "labelColumn": "y"},
            },
            "spec.data.labelColumn",
            "not read by masked-lm",
        ),
        ({"spec.resources.cpu": "1Ki"}, "spec.resources.cpu", "binary suffix"),
        ({"spec.resources.memory": 512}, "spec.resources.memory", "counts bytes"),
        ({"spec.resources.cpu": "Ki"}, "spec.resources.cpu", "binary suffix"),
        ({"spec.resources.cpu": "."}, "spec.resources.cpu", "must be from 1m"),
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
        "heads on a resnet are refused",
        "heads on an mlp are refused",
        "a vocabulary size on an mlp is refused",
        "a max length on an mlp is refused",
        "dropout on a resnet is refused",
        "heads that do not divide the default hidden width are refused",
        "a hidden width the default heads do not divide is refused",
        "fp16 without GPUs is refused",
        "searching fp16 without GPUs is refused",
        "an objective outside the listed metrics is refused",
        "an objective outside the task's standard set is refused",
        "maximizing the loss is refused",
        "minimizing f1 is refused",
        "starting from a built-in data set is refused",
        "writing to a built-in data set is refused",
        "a label column for built-in data is refused",
        "a text column on a table is refused",
        "a label column on masked-lm is refused",
        "a cpu in kibibytes is refused",
        "a memory without a suffix is refused as bytes",
        "a bare binary suffix as cpu is refused",
        "a bare decimal point (zero) as cpu is refused",
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


@pytest.mark.parametrize(
    "changes",
    [
        {"spec.model": {**TEXT, "params": {"hidden": 96, "heads": 8, "maxLength": 16}}},
        {"spec.model": {**RESNET, "params": {"layers": 2, "hidden": 8}}},
        {"spec.model.params": {"layers": 1, "hidden": 10, "dropout": 0.0}},
        {"spec.hyperparameters.precision": "fp16", "spec.resources.gpusPerNode": 1},
        {"spec.hyperparameters.precision": "bf16"},
        {"spec.tuning": {**make_tuning(), "objective": {"metric": "loss", "goal": "minimize"}}},
        {"spec.tuning": {**make_tuning(), "objective": {"metric": "recall"}}},
        {
            "spec.model": {"architecture": "bert", "task": "masked-lm"},
            "spec.data.train.uri": "builtin://sentiment",
            "spec.tuning": {
                **make_tuning(),
                "objective": {"metric": "perplexity", "goal": "minimize"},
            },
        },
        {
            "spec.data.validation": {"uri": "pvc://d/v.csv"},
            "spec.data.labelColumn": "target",
        },
        {"spec.resources": {"cpu": "1k", "memory": "1Mi"}},
        {"spec.resources": {"cpu": "1e3", "memory": "16Ti"}},
        {"spec.resources": {"cpu": 1, "memory": 1048576}},
        {"spec.resources": {"cpu": "1m", "memory": "1.5Gi"}},
    ],
    ids=[
        "heads that divide hidden on a transformer are accepted",
        "layers and hidden on a resnet are accepted",
        "dropout on an mlp with any hidden width is accepted",
        "fp16 with GPUs is accepted",
        "bf16 on CPUs is accepted",
        "minimizing the loss is accepted",
        "a standard metric with the default goal is accepted",
        "minimizing perplexity on masked-lm is accepted",
        "a label column for validation data of your own is accepted",
        "a thousand cores written 1k are accepted",
        "a thousand cores written 1e3 are accepted",
        "plain integers are accepted",
        "one millicore and fractional gibibytes are accepted",
    ],
)
def test_training_that_fits_is_accepted(changes: dict[str, Any]) -> None:
    assert problems(make_training(changes)) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"spec.resources": {"gpusPerReplica": 1}, "spec.optimization.dtype": "fp16"},
        {"spec.optimization.dtype": "bf16"},
        {"spec.requireMetrics": {"f1": 0, "accuracy": 1}},
        {"spec.model": {"uri": "pvc://models/sentiment"}},
        {"spec.model": {"uri": "builtin://smollm2-135m-instruct"}},
        {"spec.model": {"uri": "pvc://models/Llama-3.2-1B"}, "spec.generation": {}},
        {
            "spec.model": {"uri": "builtin://smollm2-135m-instruct"},
            "spec.generation.adapters": [{**ADAPTER, "uri": "s3://adapters/support"}],
            "spec.storage": S3_SECRET,
        },
        {
            "spec.generation": {
                "maxSequences": 1024,
                "maxWaiting": 0,
                "maxTokens": 131072,
                "adapters": [ADAPTER, {"name": "Sales.v2_1", "uri": "file:///adapters/sales"}],
            }
        },
    ],
    ids=[
        "fp16 on a GPU replica is accepted",
        "bf16 on a CPU replica is accepted",
        "gates of 0 and 1 are accepted",
        "a model on a claim is accepted",
        "the built-in language model is accepted",
        "a Hugging Face folder with the default generation settings is accepted",
        "credentials for an s3 adapter are accepted",
        "generation settings at their bounds are accepted",
    ],
)
def test_deployment_that_fits_is_accepted(changes: dict[str, Any]) -> None:
    assert problems(make_deployment(changes)) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", Decimal(4)),
        (2, Decimal(2)),
        ("500m", Decimal("0.5")),
        ("1.5", Decimal("1.5")),
        (".5", Decimal("0.5")),
        ("1.", Decimal(1)),
        ("+3", Decimal(3)),
        ("-1", Decimal(-1)),
        ("1k", Decimal(1000)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("25e-1", Decimal("2.5")),
        ("2E", Decimal(2 * 10**18)),
        ("100u", Decimal("0.0001")),
        ("5n", Decimal("0.000000005")),
        ("16Gi", Decimal(16 * 2**30)),
        ("512Mi", Decimal(512 * 2**20)),
        ("1.5Ki", Decimal(1536)),
        ("-5Gi", Decimal(-5 * 2**30)),
        ("01", Decimal(1)),
        # Go's parser (and so the API server) reads a quantity without digits as 0.
        (".", Decimal(0)),
        ("Ki", Decimal(0)),
        ("-", Decimal(0)),
    ],
    ids=repr,
)
def test_parse_quantity_follows_the_kubernetes_grammar(text: int | str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "four", "1.5.5", "1e", "1e+", "1e1.5", "1K", "1Kib", "1 Gi", "--1", "0x10", True],
    ids=repr,
)
def test_parse_quantity_refuses_what_is_not_a_quantity(text: Any) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("quantity", "cores"),
    [("1k", 1000.0), ("1e3", 1000.0), ("1E3", 1000.0), ("2.5", 2.5), ("250m", 0.25), (8, 8.0)],
    ids=repr,
)
def test_every_cpu_the_api_accepts_becomes_cores(quantity: int | str, cores: float) -> None:
    obj = make_deployment({"spec.resources.cpu": quantity})
    assert problems(obj) == []
    assert cpu_cores(quantity) == cores


def test_the_params_table_is_the_runtimes() -> None:
    from modelplane_runtime.models.registry import DEFAULTS  # noqa: PLC0415  (imports torch)

    snake = {"maxLength": "max_length", "vocabSize": "vocab_size"}
    taken = {
        arch: {
            snake.get(name, name) for name, archs in PARAMS_BY_ARCHITECTURE.items() if arch in archs
        }
        for arch in DEFAULTS
    }
    assert taken == {arch: set(defaults) for arch, defaults in DEFAULTS.items()}


def test_the_default_metrics_are_the_runtimes() -> None:
    from modelplane_runtime.evaluate import default_metrics  # noqa: PLC0415  (imports torch)

    assert {task: default_metrics(task) for task in get_args(Task)} == DEFAULT_METRICS
