"""Pieces every child manifest shares: owner references, labels, PVC volumes, the
object-storage credentials and cache."""

from __future__ import annotations

from typing import Any

from modelplane_operator import constants as c
from modelplane_operator.api.common import Scheduling, StorageSpec, is_s3
from modelplane_operator.api.resources import ObjectMeta
from modelplane_operator.judge import SpecError, credentials_problem, storage_secret
from modelplane_runtime.contract import (
    ENV_STORAGE_CACHE,
    S3_SECRET_KEYS_OPTIONAL,
    S3_SECRET_KEYS_REQUIRED,
)

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


def storage_wiring(
    uris: dict[str, str | None],
    storage: StorageSpec | None,
    *,
    default_secret: str,
    cache_limit: str,
) -> tuple[list[Manifest], list[Manifest], list[Manifest]]:
    """(env, volumes, volumeMounts) of a pod that reads or writes the s3:// URIs among
    `uris` (by spec field): the Secret's keys as environment (its values never pass
    through the operator; a missing optional key is left unset) and an emptyDir cache for
    the objects. All empty when no URI is s3://, so such pods stay as they were. Raises
    SpecError when no Secret is named and the operator has no default."""
    if not any(is_s3(uri) for uri in uris.values()):
        return [], [], []
    if (problem := credentials_problem(uris, storage, default_secret=default_secret)) is not None:
        raise SpecError(problem.field, problem.message)
    secret = storage_secret(storage, default_secret)
    env: list[Manifest] = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key in S3_SECRET_KEYS_REQUIRED
    ]
    env += [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
        }
        for key in S3_SECRET_KEYS_OPTIONAL
    ]
    env.append({"name": ENV_STORAGE_CACHE, "value": c.STORAGE_CACHE_PATH})
    empty_dir: Manifest = {"sizeLimit": cache_limit} if cache_limit else {}
    volumes = [{"name": c.STORAGE_CACHE_VOLUME, "emptyDir": empty_dir}]
    mounts = [{"name": c.STORAGE_CACHE_VOLUME, "mountPath": c.STORAGE_CACHE_PATH}]
    return env, volumes, mounts


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
