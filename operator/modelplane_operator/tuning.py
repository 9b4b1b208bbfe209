"""Hyperparameter search decisions, rebuilt from status.trials on every pass.

There is no optuna database: each pass creates an in-memory study, adds every trial the
resource's status records (finished ones with their objective, running ones with their
intermediate values), and asks optuna for the next suggestions or whether a running
trial should stop. The same history and seed always give the same answer, so an operator
restart changes nothing.

Grid search is enumerated here rather than by optuna's GridSampler: that sampler marks
visited points with ids it keeps in its own storage, which a study rebuilt from status
does not have. Random and TPE sampling and the median stopping rule are optuna's.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from modelplane_operator.api.training import ParamSpec, Tuning

ParamValue = float | int | str
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as status.trials records it."""

    params: dict[str, ParamValue]
    state: Literal["running", "complete", "failed", "stopped"]
    value: float | None = None
    """The objective's final value (complete trials)."""
    intermediate: dict[int, float] = field(default_factory=dict)
    """The objective by step, from the trial's progress."""


def distributions(space: dict[str, ParamSpec]) -> dict[str, BaseDistribution]:
    """optuna distributions of a spec.tuning.space."""
    result: dict[str, BaseDistribution] = {}
    for name, spec in sorted(space.items()):
        if spec.type == "choice":
            choices: Sequence[ParamValue] = spec.values or spec.options or []
            result[name] = CategoricalDistribution(list(choices))
        elif spec.type == "int":
            result[name] = IntDistribution(int(spec.min or 0), int(spec.max or 0))
        else:
            result[name] = FloatDistribution(
                float(spec.min or 0), float(spec.max or 0), log=spec.type == "loguniform"
            )
    return result


def grid(space: dict[str, ParamSpec]) -> list[dict[str, ParamValue]]:
    """Every point of an int/choice space, in a fixed order."""
    axes: dict[str, list[ParamValue]] = {}
    for name, spec in sorted(space.items()):
        if spec.type == "int":
            axes[name] = list(range(int(spec.min or 0), int(spec.max or 0) + 1))
        elif spec.type == "choice":
            axes[name] = list(spec.values or spec.options or [])
        else:
            raise ValueError(f"grid search cannot enumerate {name} of type {spec.type}")
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _pass_seed(seed: int, history: Sequence[TrialRecord]) -> int:
    """A seed per history length: a rebuilt study must not repeat its first suggestion."""
    digest = hashlib.sha256(f"{seed}:{len(history)}".encode()).hexdigest()
    return int(digest[:8], 16)


def _fits(distribution: BaseDistribution, value: ParamValue) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _study(
    tuning: Tuning,
    history: Sequence[TrialRecord],
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    study = optuna.create_study(
        direction=tuning.objective.goal,
        sampler=sampler,
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=1,
            n_warmup_steps=tuning.early_stopping.min_steps if tuning.early_stopping else 0,
        ),
    )
    dists = distributions(tuning.space)
    states = {
        "running": TrialState.RUNNING,
        "complete": TrialState.COMPLETE,
        "failed": TrialState.FAIL,
        "stopped": TrialState.PRUNED,
    }
    for record in history:
        # A trial sampled before spec.tuning.space changed may lie outside it now; it
        # still counts, with only the parameters the current space can describe.
        fitting = [k for k, v in record.params.items() if k in dists and _fits(dists[k], v)]
        state = states[record.state]
        if state == TrialState.COMPLETE and record.value is None:
            state = TrialState.FAIL  # finished without an objective: nothing to learn from
        study.add_trial(
            create_trial(
                state=state,
                value=record.value if state == TrialState.COMPLETE else None,
                params={k: v for k, v in record.params.items() if k in fitting},
                distributions={k: dists[k] for k in fitting},
                intermediate_values=dict(record.intermediate),
            )
        )
    return study


def suggest(
    tuning: Tuning, *, seed: int, history: Sequence[TrialRecord], count: int
) -> list[dict[str, ParamValue]]:
    """Up to `count` new parameter sets; fewer when a grid is exhausted."""
    if count <= 0:
        return []
    if tuning.algorithm == "grid":
        seen = [r.params for r in history]
        points = grid(tuning.space)
        random.Random(seed).shuffle(points)
        return [p for p in points if p not in seen][:count]
    sampler: optuna.samplers.BaseSampler = (
        optuna.samplers.RandomSampler(seed=_pass_seed(seed, history))
        if tuning.algorithm == "random"
        else optuna.samplers.TPESampler(seed=_pass_seed(seed, history), n_startup_trials=3)
    )
    study = _study(tuning, history, sampler)
    dists = distributions(tuning.space)
    # Asked trials stay RUNNING in this study, so each next ask sees the ones before it.
    return [dict(study.ask(dists).params) for _ in range(count)]


def should_stop(tuning: Tuning, *, history: Sequence[TrialRecord], index: int) -> bool:
    """The median rule for the running trial `history[index]`."""
    if tuning.early_stopping is None or tuning.early_stopping.rule == "none":
        return False
    record = history[index]
    if record.state != "running" or not record.intermediate:
        return False
    study = _study(tuning, history, optuna.samplers.RandomSampler(seed=0))
    return bool(study.pruner.prune(study, study.trials[index]))
