"""The runtime contract round-trips and respects Kubernetes' limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelplane_runtime.contract import (
    OBJECTIVE_EPOCHS,
    BatchingConfig,
    DataConfig,
    ExitCode,
    RunConfig,
    ServeArgs,
    TrainingResult,
)


def make_run_config() -> RunConfig:
    return RunConfig(
        name="demo",
        architecture="mlp",
        task="tabular-classification",
        data=DataConfig(train_uri="builtin://breast-cancer", validation_split=0.2),
        output_uri="pvc://models/demo",
        metrics=("accuracy", "f1"),
    )


def test_run_config_round_trips_through_json() -> None:
    config = make_run_config()
    assert RunConfig.from_json(config.to_json()) == config


def test_run_config_refuses_unknown_fields() -> None:
    data = make_run_config().model_dump()
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        RunConfig.model_validate(data)


def test_a_newer_contract_version_is_refused_not_misread() -> None:
    data = make_run_config().model_dump()
    data["version"] = 2
    with pytest.raises(ValidationError, match="version"):
        RunConfig.model_validate(data)


def test_training_result_fits_the_termination_message() -> None:
    result = TrainingResult(
        run="demo", metrics={"f1": 0.9}, artifact_uri="pvc://m/demo", digest="sha256:ab"
    )
    text = result.to_termination_message()
    assert TrainingResult.model_validate_json(text) == result


def test_a_result_with_every_objective_it_may_carry_fits() -> None:
    result = TrainingResult(
        run="a-trial-name-of-forty-characters-long-xx",
        metrics={name: 0.123456789 for name in ("accuracy", "f1", "precision", "recall")},
        artifact_uri="pvc://a-claim-name/some/models/a-trial-name-of-forty-characters-long-xx",
        digest="sha256:" + "ab" * 32,
        steps=10**7,
        epochs=OBJECTIVE_EPOCHS,
        objective_by_step={str(10**7 - i * 99_999): 0.123456789012345 for i in range(64)},
    )
    assert len(result.objective_by_step) == OBJECTIVE_EPOCHS
    assert TrainingResult.model_validate_json(result.to_termination_message()) == result


def test_an_oversized_training_result_is_refused() -> None:
    result = TrainingResult(
        run="demo",
        metrics={f"m{i}": float(i) for i in range(400)},
        artifact_uri="pvc://m/demo",
        digest="sha256:ab",
    )
    with pytest.raises(ValueError, match="4096"):
        result.to_termination_message()


def test_serve_args_round_trip() -> None:
    args = ServeArgs(model_name="demo", model_uri="pvc://m/demo", dtype="bf16", threads=2)
    assert ServeArgs.model_validate_json(args.model_dump_json()) == args


def test_batching_config_round_trips_and_refuses_an_empty_batch() -> None:
    batching = BatchingConfig(max_batch_size=8, batch_wait_timeout_s=0.01)
    assert BatchingConfig.model_validate(batching.model_dump()) == batching
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingConfig(max_batch_size=0)


def test_config_errors_have_a_code_apart_from_infrastructure_failures() -> None:
    assert ExitCode.CONFIG_ERROR not in (ExitCode.OK, ExitCode.INFRASTRUCTURE)
