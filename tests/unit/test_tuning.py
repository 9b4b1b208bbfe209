"""Search decisions: reproducible from status, grid exactly once, median stopping."""

from __future__ import annotations

from typing import Any

from modelplane_operator.api.training import Tuning
from modelplane_operator.tuning import TrialRecord, grid, should_stop, suggest


def tuning(**changes: Any) -> Tuning:
    base: dict[str, Any] = {
        "objective": {"metric": "f1", "goal": "maximize"},
        "algorithm": "tpe",
        "maxTrials": 12,
        "parallelTrials": 2,
        "space": {
            "learningRate": {"type": "loguniform", "min": 1e-4, "max": 1e-1},
            "batchSize": {"type": "choice", "values": [16, 32, 64]},
        },
    }
    base.update(changes)
    return Tuning.model_validate(base)


def finished(n: int) -> list[TrialRecord]:
    return [
        TrialRecord(
            params={"learningRate": 10 ** -(1 + i % 3), "batchSize": 32},
            state="complete",
            value=0.5 + 0.01 * i,
        )
        for i in range(n)
    ]


def test_the_same_seed_and_history_give_the_same_suggestions() -> None:
    for algorithm in ("tpe", "random"):
        t = tuning(algorithm=algorithm)
        history = finished(5)
        first = suggest(t, seed=42, history=history, count=2)
        again = suggest(t, seed=42, history=list(history), count=2)
        assert first == again
        assert first[0] != first[1]
        assert suggest(t, seed=43, history=history, count=2) != first


def test_suggestions_stay_inside_the_space() -> None:
    for params in suggest(tuning(), seed=1, history=finished(6), count=5):
        assert 1e-4 <= float(params["learningRate"]) <= 1e-1
        assert params["batchSize"] in (16, 32, 64)


def test_a_rebuilt_study_does_not_repeat_its_last_suggestion() -> None:
    t = tuning(algorithm="random")
    history: list[TrialRecord] = []
    seen = []
    for _ in range(4):
        (params,) = suggest(t, seed=7, history=history, count=1)
        seen.append(params)
        history.append(TrialRecord(params=params, state="running"))
    assert len({tuple(sorted(p.items())) for p in seen}) == 4


def test_grid_covers_the_space_exactly_once() -> None:
    t = tuning(
        algorithm="grid",
        space={
            "batchSize": {"type": "choice", "values": [16, 32]},
            "epochs": {"type": "int", "min": 1, "max": 3},
            "optimizer": {"type": "choice", "options": ["adamw", "sgd"]},
        },
    )
    history: list[TrialRecord] = []
    while batch := suggest(t, seed=3, history=history, count=5):
        history += [TrialRecord(params=p, state="complete", value=0.5) for p in batch]
    points = [tuple(sorted(r.params.items())) for r in history]
    assert len(points) == len(set(points)) == 2 * 3 * 2
    assert {tuple(sorted(p.items())) for p in grid(t.space)} == set(points)


def test_the_median_rule_stops_a_trial_worse_than_the_median_and_keeps_the_best() -> None:
    t = tuning(earlyStopping={"rule": "median", "minSteps": 5})
    done = [
        TrialRecord(
            params={"learningRate": 0.01, "batchSize": 32},
            state="complete",
            value=v,
            intermediate={10: v},
        )
        for v in (0.6, 0.7, 0.8)
    ]
    worse = TrialRecord(
        params={"learningRate": 0.05, "batchSize": 16}, state="running", intermediate={10: 0.5}
    )
    best = TrialRecord(
        params={"learningRate": 0.002, "batchSize": 64}, state="running", intermediate={10: 0.9}
    )
    history = [*done, worse, best]
    assert should_stop(t, history=history, index=3)
    assert not should_stop(t, history=history, index=4)


def test_no_trial_stops_before_min_steps_or_without_the_rule() -> None:
    done = [
        TrialRecord(
            params={"learningRate": 0.01, "batchSize": 32},
            state="complete",
            value=0.8,
            intermediate={3: 0.8},
        )
    ]
    early = TrialRecord(
        params={"learningRate": 0.05, "batchSize": 16}, state="running", intermediate={3: 0.1}
    )
    with_rule = tuning(earlyStopping={"rule": "median", "minSteps": 5})
    assert not should_stop(with_rule, history=[*done, early], index=1)
    assert not should_stop(tuning(), history=[*done, early], index=1)


def test_a_trial_from_before_a_space_change_does_not_break_the_search() -> None:
    t = tuning(algorithm="tpe")
    old = TrialRecord(params={"learningRate": 5.0, "batchSize": 128}, state="complete", value=0.7)
    (params,) = suggest(t, seed=1, history=[*finished(3), old], count=1)
    assert 1e-4 <= float(params["learningRate"]) <= 1e-1
