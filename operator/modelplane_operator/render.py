"""ModelTraining spec -> RunConfig: the one rendering shared by the operator and local mode."""

from __future__ import annotations

from typing import Any

from modelplane_operator.api.resources import ModelTraining
from modelplane_runtime.contract import (
    PROGRESS_PORT,
    AdapterConfig,
    DataConfig,
    OptimConfig,
    RunConfig,
)


def render_run_config(
    training: ModelTraining,
    *,
    run_name: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    progress_port: int = PROGRESS_PORT,
) -> RunConfig:
    """The run config for `training`.

    `run_name` names the run (and the artifact folder); it defaults to the resource's
    name. `hyperparameters` overrides spec.hyperparameters by YAML name (a tuning
    trial's sampled values).
    """
    spec = training.spec
    name = run_name or training.metadata.name
    if not name:
        raise ValueError("a ModelTraining needs metadata.name to render a run config")
    hyper = spec.hyperparameters.model_copy(
        update={_snake(k): v for k, v in (hyperparameters or {}).items()}
    )
    params = spec.model.params.model_dump(by_alias=False, exclude_none=True)
    adapter = spec.model.adapter
    return RunConfig(
        name=name,
        architecture=spec.model.architecture,
        task=spec.model.task,
        params=params,
        init_uri=spec.model.init.uri if spec.model.init else None,
        adapter=AdapterConfig(
            method=adapter.method,
            rank=adapter.rank,
            alpha=adapter.alpha,
            dropout=adapter.dropout,
            target_modules=tuple(adapter.target_modules),
            merge=adapter.merge,
        )
        if adapter
        else None,
        parallelism=spec.parallelism.strategy,
        data=DataConfig(
            train_uri=spec.data.train.uri,
            validation_uri=spec.data.validation.uri if spec.data.validation else None,
            validation_split=spec.data.validation_split,
            text_column=spec.data.text_column,
            label_column=spec.data.label_column,
        ),
        optim=OptimConfig(**hyper.model_dump(by_alias=False)),
        checkpoint_every_steps=spec.checkpoint.every_steps,
        checkpoint_keep=spec.checkpoint.keep,
        output_uri=spec.output.uri,
        metrics=tuple(spec.evaluation.metrics),
        progress_port=progress_port,
        objective=spec.tuning.objective.metric if spec.tuning else None,
    )


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
