"""Pieces every child manifest shares: owner references, labels, PVC volumes."""

from __future__ import annotations

from typing import Any

from modelplane_operator import constants as c
from modelplane_operator.api.common import Scheduling
from modelplane_operator.api.resources import ObjectMeta

Manifest = dict[str, Any]


def owner_reference(kind: str, meta: ObjectMeta) -> dict[str, Any]:
    """The controller reference that makes a child garbage-collected with its owner."""
    if not meta.name or not meta.uid:
        raise ValueError("an owner needs metadata.name and metadata.uid")
    return {
        "apiVersion": c.API_VERSION,
        "kind": kind,
        "name": meta.name,
        "uid": meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_meta(
    *, name: str, namespace: str | None, labels: dict[str, str], owner: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY, **labels},
        "ownerReferences": [owner],
    }


def pvc_claims(uris: list[str | None]) -> list[str]:
    """Distinct claim names of the pvc:// URIs, in first-seen order."""
    claims: list[str] = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").split("/", 1)[0]
            if claim and claim not in claims:
                claims.append(claim)
    return claims


def pvc_volumes(claims: list[str], *, root: str) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, volumeMounts) mounting each claim at <root>/<claim>."""
    volumes = [
        {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}}
        for i, claim in enumerate(claims)
    ]
    mounts = [
        {"name": f"pvc-{i}", "mountPath": f"{root}/{claim}"} for i, claim in enumerate(claims)
    ]
    return volumes, mounts


def pod_security_context(run_as_user: int) -> Manifest:
    """Every pod the operator creates runs as this non-root user, default seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "runAsGroup": run_as_user,
        "fsGroup": run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_image(scheduling: Scheduling, default: str) -> str:
    """The resource's own image, or the operator's runtime image."""
    return scheduling.image or default


def apply_scheduling(pod: Manifest, scheduling: Scheduling) -> None:
    """Copy the spec's placement (node selector, tolerations, priority) into `pod`."""
    if scheduling.node_selector:
        pod["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in scheduling.tolerations]
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
