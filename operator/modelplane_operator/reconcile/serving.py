"""reconcile_deployment: one level-based pass that converges a ModelDeployment.

Resolve the model (a Succeeded ModelTraining's artifact, or `model.uri`), apply the
gate, read the Ray head's Serve state through its dashboard (and the Ray pods while some
are not ready), let the pure phase machine decide, apply the Ray cluster when it says so,
built for the resolved artifact, and patch status once when it changed.
Killed at any point and run again, it finds the same deterministic children.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelplane_operator import constants as c
from modelplane_operator import observability as obs
from modelplane_operator.api.deployment import Counts
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.builders.common import pod_image
from modelplane_operator.builders.serving import (
    REPLICA_RAY_CPUS,
    TOKEN_KEY,
    build_config_map,
    build_head,
    build_head_service,
    build_http_service,
    build_network_policies,
    build_token_secret,
    build_worker_disruption_budget,
    build_workers,
    endpoint,
    names_for,
    replica_threads,
)
from modelplane_operator.client import Client
from modelplane_operator.conditions import Event, format_time
from modelplane_operator.dashboard import Dashboard
from modelplane_operator.reconcile import status_patch
from modelplane_operator.scaling import DELETION_COST_ANNOTATION, decide_workers, deletion_costs
from modelplane_operator.serve_config import ResolvedModel, gate_failures, render_serve_config
from modelplane_operator.serve_metrics import LoadTracker, replica_url, with_load
from modelplane_operator.settings import Settings
from modelplane_operator.status.serving import (
    ModelWaiting,
    ObservedDeployment,
    derive_deployment_status,
    pods_worth_reading,
    resolve_from_training,
)

log = logging.getLogger("modelplane.deployment")
Manifest = dict[str, Any]
DashboardFor = Callable[[str, str], Dashboard]
"""(base URL, token) -> the head's dashboard."""


async def _resolve(client: Client, deployment: ModelDeployment) -> ResolvedModel | ModelWaiting:
    source = deployment.spec.model
    if source.from_training is not None:
        body = await client.get_training(deployment.metadata.namespace or "", source.from_training)
        try:
            training = ModelTraining.model_validate(body) if body is not None else None
        except ValidationError:
            training = None
        return resolve_from_training(source.from_training, training)
    # The artifact's own card is read by the serving app (digest checked there); the
    # operator cannot mount the claim, so a uri model carries no metrics to gate on.
    return ResolvedModel(uri=source.uri or "", digest="", metrics={})


def _initial_workers(deployment: ModelDeployment, current: Manifest | None) -> int:
    """Keep what the scaling loop decided; start with room for the first replicas."""
    if current is not None:
        return int((current.get("spec") or {}).get("replicas") or 0)
    replicas = deployment.spec.replicas
    return min(max(replicas.min, 1) + deployment.spec.autoscaling.spare_workers, replicas.max)


async def _token(client: Client, deployment: ModelDeployment) -> tuple[str, bool]:
    """The cluster's token and whether it already existed (a new one is drawn once)."""
    names = names_for(deployment.metadata.name or "")
    existing = await client.get_secret_value(
        deployment.metadata.namespace or "", names.secret, TOKEN_KEY
    )
    return (existing, True) if existing else (secrets.token_urlsafe(32), False)


def _children_hash(
    deployment: ModelDeployment, config: dict[str, Any], settings: Settings, *, model_uri: str
) -> str:
    """What the Ray cluster is built from: the spec, the Serve config, the image, and the
    children as this operator's builders render them (the workers at a fixed size), so
    an upgraded operator whose builders render something new (a probe, a policy)
    re-applies running deployments once, with no version number to remember."""
    rendered = [
        build_head(deployment, settings=settings, model_uri=model_uri),
        build_workers(deployment, settings=settings, model_uri=model_uri, replicas=0),
        build_head_service(deployment),
        build_http_service(deployment),
        *build_network_policies(deployment),
        build_worker_disruption_budget(deployment),
    ]
    material = {
        "spec": deployment.spec.model_dump(mode="json"),
        "config": config,
        "image": pod_image(deployment.spec.resources, settings.runtime_image),
        "children": rendered,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


async def _apply_cluster(
    client: Client,
    deployment: ModelDeployment,
    *,
    config: dict[str, Any],
    model: ResolvedModel,
    settings: Settings,
    token: str | None,
    spec_hash: str,
) -> None:
    """Apply everything but the workers' size; the head carries the hash it was built
    from (on its metadata, not its pods, so a new hash restarts nothing)."""
    if token is not None:
        await client.apply(build_token_secret(deployment, token))
    await client.apply(build_config_map(deployment, config))
    await client.apply(build_head_service(deployment))
    await client.apply(build_http_service(deployment))
    for policy in build_network_policies(deployment):
        await client.apply(policy)
    await client.apply(build_worker_disruption_budget(deployment))
    head = build_head(deployment, settings=settings, model_uri=model.uri)
    head["metadata"].setdefault("annotations", {})[c.ANNOTATION_SPEC_HASH] = spec_hash
    await client.apply(head)


async def _mark_idle_workers(
    client: Client, deployment: ModelDeployment, replica_ips: frozenset[str]
) -> None:
    """Give worker pods without a replica the lowest deletion cost before shrinking."""
    namespace = deployment.metadata.namespace or ""
    pods = await client.list_pods(
        namespace,
        {c.LABEL_DEPLOYMENT: deployment.metadata.name or "", c.LABEL_ROLE: "worker"},
    )
    ips = {p["metadata"]["name"]: (p.get("status") or {}).get("podIP") or "" for p in pods}
    for pod, cost in deletion_costs(ips, set(replica_ips)).items():
        await client.annotate_pod(namespace, pod, {DELETION_COST_ANNOTATION: cost})


async def reconcile_deployment(
    client: Client,
    body: Manifest,
    *,
    settings: Settings,
    now: datetime,
    dashboard_for: DashboardFor,
    load: LoadTracker | None = None,
) -> str | None:
    """Converge one ModelDeployment; return its phase after this pass. With `load`, the
    head's and replicas' metrics give `status.load` (scraped every few seconds)."""
    deployment = ModelDeployment.model_validate(body)
    namespace = deployment.metadata.namespace or ""
    name = deployment.metadata.name or ""
    names = names_for(name)
    model = await _resolve(client, deployment)
    failures = tuple(gate_failures(deployment, model)) if isinstance(model, ResolvedModel) else ()
    head = await client.get_deployment(namespace, names.head)
    workers = await client.get_deployment(namespace, names.worker)
    token, token_exists = await _token(client, deployment)
    serve = None
    if head is not None and token_exists:
        url = settings.dashboard_url.format(head=names.head_service, namespace=namespace)
        serve = await dashboard_for(url, token).application(name)
    if serve is not None and load is not None:
        metrics = settings.metrics_url.format(head=names.head_service, namespace=namespace)
        sample = await load.measure(
            (namespace, name),
            application=name,
            head_url=f"{metrics.rstrip('/')}/metrics",
            replica_urls=[
                replica_url(settings.replica_metrics_url, ip) for ip in sorted(serve.replica_ips)
            ],
        )
        serve = with_load(serve, sample, deployment.status.load if deployment.status else None)
    pods = (
        await client.list_pods(namespace, {c.LABEL_COMPONENT: "serving", c.LABEL_DEPLOYMENT: name})
        if pods_worth_reading(head, workers)
        else []
    )
    observed = ObservedDeployment(
        model=model,
        endpoint=endpoint(deployment),
        head=head,
        workers=workers,
        serve=serve,
        gate_failures=failures,
        pods=tuple(pods),
    )
    decision = derive_deployment_status(deployment, observed, now=now)
    if decision.roll_out and isinstance(model, ResolvedModel):
        config = render_serve_config(
            deployment, model, replica_cpus=REPLICA_RAY_CPUS, threads=replica_threads(deployment)
        )
        wanted = _children_hash(deployment, config, settings, model_uri=model.uri)
        # The scaling loop runs every second: apply the cluster only when what it was
        # built from changed, not on every pass.
        current_hash = ((head or {}).get("metadata") or {}).get("annotations", {})
        up_to_date = (
            token_exists
            and workers is not None
            and current_hash.get(c.ANNOTATION_SPEC_HASH) == wanted
        )
        if not up_to_date:
            await _apply_cluster(
                client,
                deployment,
                config=config,
                model=model,
                settings=settings,
                token=None if token_exists else token,
                spec_hash=wanted,
            )
            if head is not None and token_exists:
                # A new model or new settings: pushed to the running head in place, so
                # Serve rolls its replicas without a second cluster. If the head does not
                # take it now, it deploys the mounted ConfigMap when the kubelet
                # refreshes it.
                url = settings.dashboard_url.format(head=names.head_service, namespace=namespace)
                pushed = await dashboard_for(url, token).deploy(config)
                log.info("%s/%s: Serve config pushed in place: %s", namespace, name, pushed)
        current = _initial_workers(deployment, workers)
        scale = decide_workers(
            deployment,
            target_replicas=serve.target_replicas if serve is not None else None,
            current_workers=current,
            listed_replicas=serve.listed_replicas if serve is not None else 0,
        )
        if scale.changed and scale.workers < current and serve is not None:
            await _mark_idle_workers(client, deployment, serve.replica_ips)
        if scale.changed or not up_to_date:
            workers_manifest = build_workers(
                deployment, settings=settings, model_uri=model.uri, replicas=scale.workers
            )
            await client.apply(workers_manifest)
        if scale.changed and workers is not None:
            obs.scaled("up" if scale.workers > current else "down")
            decision = replace(
                decision,
                status=decision.status.model_copy(
                    update={
                        "last_scale_time": format_time(now),
                        "workers": Counts(
                            desired=scale.workers,
                            ready=decision.status.workers.ready if decision.status.workers else 0,
                        ),
                    }
                ),
                events=(*decision.events, Event("Normal", c.REASON_SCALED, scale.message)),
            )
    new_status = decision.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    patch = status_patch(body.get("status") or {}, new_status)
    if patch is not None:
        await client.patch_deployment_status(namespace, name, patch)
    for event in decision.events:
        await client.event(
            owner=body, type_=event.type, reason=event.reason, message=event.message, now=now
        )
    return decision.status.phase
