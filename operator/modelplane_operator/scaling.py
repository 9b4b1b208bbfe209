"""The second level of scaling: worker pods follow the replicas Serve wants.

Ray Serve's autoscaler moves the replica target between `replicas.min` and `max` on
ongoing requests, and already waits `downscaleDelaySeconds` before lowering it. Each
worker pod holds one replica, so the operator sizes the worker Deployment to the target:
up at once (a wanted replica with no place is load going unserved), down when the target
dropped — Serve has waited out the delay, and its replica on that worker is gone — with
the idle workers named first, so Kubernetes removes them rather than busy ones.
`autoscaling.spareWorkers` keeps that many workers more (up to `replicas.max`): warm
places where the next replicas start at once.

Serve's target is not all it places: a rollout surges (the new version's replicas start
before the old ones stop) and a replica being removed drains before it goes. Every
replica Serve lists, whatever its state, holds a worker, so the workers never drop below
that count: a surging replica gets a worker (beyond `replicas.max` for the rollout if
need be, unless a spare takes it) instead of waiting forever for a place — seen on the
real node, where a one-worker deployment's rollout never finished — and a draining
replica keeps its pod until Serve lets it go.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelplane_operator.api.resources import ModelDeployment

# Kubernetes deletes the pods with the lowest cost first when a Deployment shrinks.
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
IDLE_COST = "-1000"
BUSY_COST = "1000"


@dataclass(frozen=True)
class ScaleDecision:
    workers: int
    """Worker pods wanted."""
    message: str
    """Why, for the Event (empty when nothing changes)."""

    @property
    def changed(self) -> bool:
        return bool(self.message)


def decide_workers(
    deployment: ModelDeployment,
    *,
    target_replicas: int | None,
    current_workers: int,
    listed_replicas: int = 0,
) -> ScaleDecision:
    """Workers for Serve's replica target (None: the head did not answer; keep them),
    never fewer than the replicas Serve lists in any state (surging, draining)."""
    spec = deployment.spec.replicas
    if target_replicas is None:
        return ScaleDecision(workers=current_workers, message="")
    spare = deployment.spec.autoscaling.spare_workers
    wanted = max(min(max(target_replicas, spec.min) + spare, spec.max), listed_replicas)
    if wanted == current_workers:
        return ScaleDecision(workers=current_workers, message="")
    direction = "up" if wanted > current_workers else "down"
    placed = f", {listed_replicas} placed" if listed_replicas > target_replicas else ""
    return ScaleDecision(
        workers=wanted,
        message=(
            f"scaled workers {direction} from {current_workers} to {wanted}: Serve wants "
            f"{target_replicas} replica(s){placed} (bounds {spec.min}..{spec.max}), one per "
            "worker" + (f", plus up to {spare} spare" if spare else "")
        ),
    )


def deletion_costs(pod_ips: dict[str, str], replica_ips: set[str]) -> dict[str, str]:
    """Pod name -> deletion cost: pods that host no replica go first."""
    return {name: BUSY_COST if ip in replica_ips else IDLE_COST for name, ip in pod_ips.items()}
