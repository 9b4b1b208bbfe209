"""What a ModelDeployment's pass does to its Ray cluster, decided purely: the desired
Serve config and children hash for the resolved model, whether the cluster is applied
and its config pushed in place, and the workers' size (Serve's replica target through
`scaling.decide_workers`). A deployment is passed often (its events, each change of
Serve's state, its load measurements), so the cluster is applied only when what it is
built from changed, the workers only when their size did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.builders.serving import REPLICA_RAY_CPUS, children_hash, replica_threads
from modelplane_operator.judge import SpecError
from modelplane_operator.scaling import decide_workers
from modelplane_operator.serve_config import ResolvedModel, render_serve_config
from modelplane_operator.settings import Settings
from modelplane_operator.status.serving_inputs import ObservedDeployment

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ClusterActions:
    """What the reconcile does to the Ray cluster after a pass that rolls out."""

    config: dict[str, Any]
    """The Serve config the cluster runs."""
    model_uri: str
    spec_hash: str
    """What the cluster is built from (`children_hash`), kept on the head's metadata."""
    apply_cluster: bool
    """Apply everything but the workers' size: the first pass, or the hash changed."""
    push_config: bool
    """Also push the config to the running head, which rolls its replicas in place."""
    workers: int | None
    """Apply the worker Deployment with this many pods; None leaves it as it is."""
    mark_idle: bool
    """Before shrinking, give the worker pods without a replica the lowest deletion cost."""
    scaled: Literal["up", "down"] | None = None
    """The workers were resized (for the operator's metrics)."""


@dataclass(frozen=True)
class Desired:
    """The cluster this operator would build for the resolved model."""

    config: dict[str, Any]
    spec_hash: str


def desired_replicas(manifest: Manifest | None) -> int:
    return int(((manifest or {}).get("spec") or {}).get("replicas") or 0)


def head_hash(head: Manifest | None) -> str | None:
    annotations = ((head or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(c.ANNOTATION_SPEC_HASH)
    return str(value) if value is not None else None


def desired_cluster(
    deployment: ModelDeployment, model: ResolvedModel, settings: Settings
) -> Desired | SpecError:
    """The Serve config and children hash for `model`, or the spec problem that keeps the
    builders from rendering them."""
    try:
        config = render_serve_config(
            deployment, model, replica_cpus=REPLICA_RAY_CPUS, threads=replica_threads(deployment)
        )
        return Desired(config, children_hash(deployment, config, settings, model_uri=model.uri))
    except SpecError as problem:
        return problem


def initial_workers(deployment: ModelDeployment, current: Manifest | None) -> int:
    """Keep what the passes decided; start with room for the first replicas."""
    if current is not None:
        return desired_replicas(current)
    replicas = deployment.spec.replicas
    return min(max(replicas.min, 1) + deployment.spec.autoscaling.spare_workers, replicas.max)


def cluster_actions(
    deployment: ModelDeployment,
    observed: ObservedDeployment,
    *,
    desired: Desired,
    model_uri: str,
) -> tuple[ClusterActions, str]:
    """What to do to the Ray cluster, and the Scaled Event's message (empty: unscaled).
    Passes come often: the cluster is applied only when what it is built from changed,
    the workers only when their size did."""
    up_to_date = (
        observed.token_exists
        and observed.workers is not None
        and head_hash(observed.head) == desired.spec_hash
    )
    serve = observed.serve
    current = initial_workers(deployment, observed.workers)
    scale = decide_workers(
        deployment,
        target_replicas=serve.target_replicas if serve is not None else None,
        current_workers=current,
        listed_replicas=serve.listed_replicas if serve is not None else 0,
    )
    scaled = scale.changed and observed.workers is not None
    actions = ClusterActions(
        config=desired.config,
        model_uri=model_uri,
        spec_hash=desired.spec_hash,
        apply_cluster=not up_to_date,
        # A new model or new settings go to the running head in place, so Serve rolls its
        # replicas without a second cluster (a head that does not take it deploys the
        # mounted ConfigMap when the kubelet refreshes it).
        push_config=not up_to_date and observed.head is not None and observed.token_exists,
        workers=scale.workers if scale.changed or not up_to_date else None,
        mark_idle=scale.changed and scale.workers < current and serve is not None,
        scaled=("up" if scale.workers > current else "down") if scaled else None,
    )
    return actions, scale.message if scaled else ""
