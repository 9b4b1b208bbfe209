"""An in-memory stand-in for the operator's Client: the reconcile passes run against it
without a cluster, and tests read back what they applied, deleted and patched."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from modelplane_operator.client import Client

Manifest = dict[str, Any]


def _matches(obj: Manifest, labels: dict[str, Any]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(key) == str(value) for key, value in labels.items())


class FakeClient(Client):
    def __init__(
        self, *, trainings: tuple[Manifest, ...] = (), pods: tuple[Manifest, ...] = ()
    ) -> None:
        # No API client: nothing here talks to a cluster.
        self.writes = 0
        self.objects: dict[tuple[str, str], Manifest] = {}
        """Applied children by (kind, name)."""
        self.trainings = {t["metadata"]["name"]: t for t in trainings}
        self.pods = list(pods)
        self.deleted: list[str] = []
        self.status_patches: list[Manifest] = []
        self.events: list[tuple[str, str, str]] = []
        self.pod_queries: list[dict[str, Any]] = []

    def applied(self, kind: str, name: str) -> Manifest:
        return self.objects[(kind, name)]

    async def apply(self, manifest: Manifest) -> Manifest:
        self.writes += 1
        stored = copy.deepcopy(manifest)
        self.objects[(stored["kind"], stored["metadata"]["name"])] = stored
        return stored

    async def get_training(self, namespace: str, name: str) -> Manifest | None:
        return self.trainings.get(name)

    async def get_deployment(self, namespace: str, name: str) -> Manifest | None:
        return self.objects.get(("Deployment", name))

    async def get_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.objects.get(("Secret", name))
        return None if secret is None else str(secret["stringData"][key])

    async def list_jobs(self, namespace: str, labels: dict[str, Any]) -> list[Manifest]:
        return [
            job
            for (kind, _), job in self.objects.items()
            if kind == "Job" and _matches(job, labels)
        ]

    async def list_pods(self, namespace: str, labels: dict[str, Any]) -> list[Manifest]:
        self.pod_queries.append(dict(labels))
        return [pod for pod in self.pods if _matches(pod, labels)]

    async def job_create_failures(self, namespace: str, job: str) -> list[str]:
        return []

    async def delete_job(self, namespace: str, name: str) -> None:
        self.writes += 1
        self.deleted.append(name)
        self.objects.pop(("Job", name), None)

    async def patch_training_status(self, namespace: str, name: str, status: Manifest) -> None:
        self.writes += 1
        self.status_patches.append(status)

    async def patch_deployment_status(self, namespace: str, name: str, status: Manifest) -> None:
        self.writes += 1
        self.status_patches.append(status)

    async def event(
        self, *, owner: Manifest, type_: str, reason: str, message: str, now: datetime
    ) -> None:
        self.events.append((type_, reason, message))

    async def suspend_job(self, namespace: str, name: str, *, suspend: bool) -> None:
        self.writes += 1
        self.objects[("Job", name)]["spec"]["suspend"] = suspend
