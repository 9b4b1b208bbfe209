"""reconcile_deployment: one level-based pass that converges a ModelDeployment.

Read → derive → act: read what there is (the model the deployment names, the Ray
head's and workers' Deployments, the token, Serve's state through the head's dashboard,
the Ray pods while some are not ready), let the pure derivation decide the status and
what to do to the Ray cluster (`derive_deployment_status`), do it, and patch status once
when it changed. A body that does not parse is Rejected with reason InvalidSpec
(`derive_invalid_deployment`); so is a spec the builders cannot render. Killed at any
point and run again, it finds the same deterministic children.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelplane_operator import constants as c
from modelplane_operator import observability as obs
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.builders.serving import (
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
)
from modelplane_operator.client import Client
from modelplane_operator.dashboard import Dashboard
from modelplane_operator.reconcile import status_patch
from modelplane_operator.scaling import DELETION_COST_ANNOTATION, deletion_costs
from modelplane_operator.serve_config import ResolvedModel
from modelplane_operator.serve_metrics import LoadTracker, replica_url, with_load
from modelplane_operator.settings import Settings
from modelplane_operator.status.serving import (
    ClusterActions,
    DeploymentDecision,
    ModelRefused,
    ModelWaiting,
    ObservedDeployment,
    derive_deployment_status,
    derive_invalid_deployment,
    pods_worth_reading,
    resolve_from_training,
)
from modelplane_operator.validation import problems_of

log = logging.getLogger("modelplane.deployment")
Manifest = dict[str, Any]
DashboardFor = Callable[[str, str], Dashboard]
"""(base URL, token) -> the head's dashboard."""


async def _resolve(
    client: Client, deployment: ModelDeployment
) -> ResolvedModel | ModelWaiting | ModelRefused:
    source = deployment.spec.model
    if source.from_training is not None:
        body = await client.get_training(deployment.metadata.namespace or "", source.from_training)
        try:
            training = ModelTraining.model_validate(body) if body is not None else None
        except ValidationError:
            training = None
        return resolve_from_training(source.from_training, training)
    # The artifact's own card is read by the replica (digest and requireMetrics checked
    # there); the operator cannot mount the claim, so a uri model carries no metrics here.
    return ResolvedModel(uri=source.uri or "", digest="", metrics={})


async def _token(client: Client, deployment: ModelDeployment) -> tuple[str, bool]:
    """The cluster's token and whether it already existed (a new one is drawn once)."""
    names = names_for(deployment.metadata.name or "")
    existing = await client.get_secret_value(
        deployment.metadata.namespace or "", names.secret, TOKEN_KEY
    )
    return (existing, True) if existing else (secrets.token_urlsafe(32), False)


async def _observe(
    client: Client,
    deployment: ModelDeployment,
    *,
    settings: Settings,
    dashboard_for: DashboardFor,
    load: LoadTracker | None,
) -> tuple[ObservedDeployment, str]:
    """Everything one pass reads, and the cluster's token."""
    namespace = deployment.metadata.namespace or ""
    name = deployment.metadata.name or ""
    names = names_for(name)
    model = await _resolve(client, deployment)
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
        pods=tuple(pods),
        token_exists=token_exists,
    )
    return observed, token


async def _apply_cluster(
    client: Client,
    deployment: ModelDeployment,
    actions: ClusterActions,
    *,
    settings: Settings,
    token: str | None,
) -> None:
    """Apply everything but the workers' size; the head carries the hash it was built
    from (on its metadata, not its pods, so a new hash restarts nothing)."""
    if token is not None:
        await client.apply(build_token_secret(deployment, token))
    await client.apply(build_config_map(deployment, actions.config))
    await client.apply(build_head_service(deployment))
    await client.apply(build_http_service(deployment))
    for policy in build_network_policies(deployment):
        await client.apply(policy)
    await client.apply(build_worker_disruption_budget(deployment))
    head = build_head(deployment, settings=settings, model_uri=actions.model_uri)
    head["metadata"].setdefault("annotations", {})[c.ANNOTATION_SPEC_HASH] = actions.spec_hash
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


async def _act(
    client: Client,
    deployment: ModelDeployment,
    actions: ClusterActions,
    *,
    observed: ObservedDeployment,
    token: str,
    settings: Settings,
    dashboard_for: DashboardFor,
) -> None:
    """Do what the derivation decided to the Ray cluster."""
    namespace = deployment.metadata.namespace or ""
    name = deployment.metadata.name or ""
    if actions.apply_cluster:
        await _apply_cluster(
            client,
            deployment,
            actions,
            settings=settings,
            token=None if observed.token_exists else token,
        )
    if actions.push_config:
        names = names_for(name)
        url = settings.dashboard_url.format(head=names.head_service, namespace=namespace)
        pushed = await dashboard_for(url, token).deploy(actions.config)
        log.info("%s/%s: Serve config pushed in place: %s", namespace, name, pushed)
    if actions.mark_idle and observed.serve is not None:
        await _mark_idle_workers(client, deployment, observed.serve.replica_ips)
    if actions.workers is not None:
        await client.apply(
            build_workers(
                deployment,
                settings=settings,
                model_uri=actions.model_uri,
                replicas=actions.workers,
            )
        )
    if actions.scaled is not None:
        obs.scaled(actions.scaled)


async def _record(
    client: Client, body: Manifest, decision: DeploymentDecision, *, now: datetime
) -> None:
    """Patch status when it changed, and record the decision's Events."""
    new_status = decision.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    patch = status_patch(body.get("status") or {}, new_status)
    if patch is not None:
        meta = body.get("metadata") or {}
        await client.patch_deployment_status(meta.get("namespace", ""), meta.get("name", ""), patch)
    for event in decision.events:
        await client.event(
            owner=body, type_=event.type, reason=event.reason, message=event.message, now=now
        )


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
    try:
        deployment = ModelDeployment.model_validate(body)
    except ValidationError as exc:
        # Permanent until the spec changes: a status that names the fields, written once
        # (the same body derives the same status), instead of a traceback every second.
        decision = derive_invalid_deployment(
            body, [str(problem) for problem in problems_of(exc)], now=now
        )
        await _record(client, body, decision, now=now)
        return decision.status.phase
    observed, token = await _observe(
        client, deployment, settings=settings, dashboard_for=dashboard_for, load=load
    )
    decision = derive_deployment_status(deployment, observed, now=now, settings=settings)
    if decision.actions is not None:
        await _act(
            client,
            deployment,
            decision.actions,
            observed=observed,
            token=token,
            settings=settings,
            dashboard_for=dashboard_for,
        )
    await _record(client, body, decision, now=now)
    return decision.status.phase
