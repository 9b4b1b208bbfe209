"""hyperparameters.maxSteps ends a run inside an epoch, evaluated where it stops."""

from __future__ import annotations

import json
from pathlib import Path

from modelplane_runtime.contract import OptimConfig, TrainingResult
from tests.runtime.conftest import make_config, run_processes


def test_max_steps_stops_inside_an_epoch_and_evaluates_there(tmp_path: Path) -> None:
    # breast-cancer with a quarter held out: 426 rows, 13 steps of 32 per epoch.
    optim = OptimConfig(epochs=3, max_steps=17, batch_size=32, learning_rate=1e-3, seed=3)
    config = make_config(tmp_path, name="short", optim=optim, objective="accuracy")
    (run,) = run_processes(config, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    artifact = tmp_path / "out" / "short"
    result = TrainingResult.model_validate_json((artifact / "result.json").read_text())
    assert (result.steps, result.epochs) == (17, 2)
    card = json.loads((artifact / "model_card.json").read_text())
    assert [s["step"] for s in card["history"]["steps"]][-1] == 17
    # epoch 1 ends at step 13, the cut-short epoch 2 at step 17: both evaluated
    assert sorted(card["history"]["epochs"]) == ["1", "2"]
    assert sorted(result.objective_by_step, key=int) == ["13", "17"]
    assert result.metrics == card["history"]["epochs"]["2"]
