"""A ModelTraining renders to the run config the runtime reads."""

from __future__ import annotations

import pytest

from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.render import render_run_config
from tests.factories import make_training


def test_the_spec_maps_field_by_field() -> None:
    training = ModelTraining.model_validate(
        make_training(
            {
                "spec.model.params": {"layers": 3, "hidden": 32},
                "spec.data.validationSplit": 0.3,
                "spec.hyperparameters": {
                    "batchSize": 16,
                    "learningRate": 0.01,
                    "precision": "bf16",
                },
                "spec.checkpoint": {"everySteps": 7, "keep": 2},
                "spec.evaluation.metrics": ["f1"],
            }
        )
    )
    config = render_run_config(training, progress_port=9000)
    assert config.name == "demo"
    assert config.params == {"layers": 3, "hidden": 32}
    assert config.data.validation_split == 0.3
    assert (config.optim.batch_size, config.optim.learning_rate) == (16, 0.01)
    assert config.optim.precision == "bf16"
    assert (config.checkpoint_every_steps, config.checkpoint_keep) == (7, 2)
    assert config.metrics == ("f1",)
    assert config.output_uri == "pvc://models/demo"
    assert config.progress_port == 9000


def test_trial_hyperparameters_override_the_spec_by_yaml_name() -> None:
    training = ModelTraining.model_validate(make_training())
    config = render_run_config(
        training, run_name="demo-trial-3", hyperparameters={"learningRate": 0.5, "batchSize": 8}
    )
    assert config.name == "demo-trial-3"
    assert (config.optim.learning_rate, config.optim.batch_size) == (0.5, 8)


def test_a_nameless_resource_cannot_render() -> None:
    training = ModelTraining.model_validate(make_training({"metadata": {}}))
    with pytest.raises(ValueError, match=r"metadata\.name"):
        render_run_config(training)


def test_a_language_model_renders_its_adapter_parallelism_and_step_limit() -> None:
    training = ModelTraining.model_validate(
        make_training(
            {
                "spec.model": {
                    "architecture": "huggingface",
                    "task": "text-generation",
                    "init": {"uri": "builtin://smollm2-135m-instruct"},
                    "params": {"maxLength": 128},
                    "adapter": {"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]},
                },
                "spec.data.train.uri": "builtin://chat",
                "spec.parallelism": {"strategy": "fsdp"},
                "spec.hyperparameters": {"maxSteps": 30},
            }
        )
    )
    config = render_run_config(training)
    assert (config.architecture, config.task) == ("huggingface", "text-generation")
    assert config.init_uri == "builtin://smollm2-135m-instruct"
    assert config.params == {"max_length": 128}
    assert config.adapter is not None
    assert (config.adapter.rank, config.adapter.alpha) == (4, 8.0)
    assert config.adapter.target_modules == ("q_proj", "v_proj")
    assert (config.adapter.dropout, config.adapter.merge) == (0.05, False)
    assert config.parallelism == "fsdp"
    assert config.optim.max_steps == 30
    assert render_run_config(ModelTraining.model_validate(make_training())).adapter is None
