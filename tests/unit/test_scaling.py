"""Worker pods follow the replicas Serve wants, within the spec's bounds, idle ones first."""

from __future__ import annotations

import pytest

from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.scaling import BUSY_COST, IDLE_COST, decide_workers, deletion_costs
from tests.factories import make_deployment


def deployment(low: int = 1, high: int = 8) -> ModelDeployment:
    return ModelDeployment.model_validate(
        make_deployment({"spec.replicas": {"min": low, "max": high}})
    )


@pytest.mark.parametrize(
    ("target", "current", "workers", "changed"),
    [
        (None, 3, 3, False),
        (3, 3, 3, False),
        (5, 3, 5, True),
        (2, 3, 2, True),
        (20, 3, 8, True),
        (0, 3, 1, True),
    ],
    ids=[
        "no word from the head keeps the workers",
        "a met target changes nothing",
        "more wanted replicas add workers at once",
        "a lower target removes workers",
        "the target is capped at max",
        "the target is floored at min",
    ],
)
def test_workers_follow_the_replica_target(
    target: int | None, current: int, workers: int, changed: bool
) -> None:
    decision = decide_workers(deployment(), target_replicas=target, current_workers=current)
    assert (decision.workers, decision.changed) == (workers, changed)


def test_the_message_says_why() -> None:
    decision = decide_workers(deployment(), target_replicas=5, current_workers=3)
    assert decision.message == (
        "scaled workers up from 3 to 5: Serve wants 5 replica(s) (bounds 1..8), one per worker"
    )


def test_scale_to_zero_is_allowed_when_min_is_zero() -> None:
    decision = decide_workers(deployment(low=0), target_replicas=0, current_workers=1)
    assert decision.workers == 0


def with_spares(spare: int, low: int = 1, high: int = 4) -> ModelDeployment:
    return ModelDeployment.model_validate(
        make_deployment(
            {
                "spec.replicas": {"min": low, "max": high},
                "spec.autoscaling": {"spareWorkers": spare},
            }
        )
    )


@pytest.mark.parametrize(
    ("target", "workers"),
    [(1, 2), (3, 4), (4, 4), (0, 2)],
    ids=[
        "one warm worker beside the replica",
        "the spare follows the target",
        "never more than max in all",
        "min still floors the target",
    ],
)
def test_spare_workers_are_kept_beyond_the_replicas(target: int, workers: int) -> None:
    decision = decide_workers(with_spares(1), target_replicas=target, current_workers=1)
    assert decision.workers == workers


def test_the_message_counts_the_spare() -> None:
    decision = decide_workers(with_spares(1), target_replicas=2, current_workers=2)
    assert decision.message == (
        "scaled workers up from 2 to 3: Serve wants 2 replica(s) (bounds 1..4), one per "
        "worker, plus up to 1 spare"
    )


def test_pods_without_a_replica_are_deleted_first() -> None:
    costs = deletion_costs({"w-a": "10.0.0.1", "w-b": "10.0.0.2"}, {"10.0.0.2"})
    assert costs == {"w-a": IDLE_COST, "w-b": BUSY_COST}


def test_a_rollouts_surging_replica_gets_a_worker_even_beyond_max() -> None:
    # min = max = 1: the old replica runs, the new version's replica waits for a place.
    decision = decide_workers(
        deployment(low=1, high=1), target_replicas=1, current_workers=1, listed_replicas=2
    )
    assert decision.workers == 2
    assert "Serve wants 1 replica(s), 2 placed" in decision.message


def test_a_spare_takes_the_surging_replica() -> None:
    decision = decide_workers(
        with_spares(1, low=1, high=2), target_replicas=1, current_workers=2, listed_replicas=2
    )
    assert (decision.workers, decision.changed) == (2, False)


def test_a_draining_replica_keeps_its_worker_until_serve_lets_it_go() -> None:
    # Serve lowered its target from 3 to 2; the third replica is still stopping.
    draining = decide_workers(deployment(), target_replicas=2, current_workers=3, listed_replicas=3)
    assert (draining.workers, draining.changed) == (3, False)
    gone = decide_workers(deployment(), target_replicas=2, current_workers=3, listed_replicas=2)
    assert (gone.workers, gone.changed) == (2, True)
