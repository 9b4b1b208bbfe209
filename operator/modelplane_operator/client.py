"""The operator's only module that talks to the API server.

Every write is a server-side apply with the operator's field manager (children), a
merge patch of the status subresource, or an Event. Reads are gets and label-selected
lists; with a `WatchCache` (the operator binds its watch indexes), lists of Jobs and
Pods and gets of apps/v1 Deployments are answered from memory. Nothing here decides
anything.
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from typing import Any

import aiohttp
from lightkube import AsyncClient, codecs
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Pod, Secret
from lightkube.types import CascadeType, PatchType

from modelplane_operator import constants as c
from modelplane_operator.conditions import format_time
from modelplane_operator.watchcache import WatchCache

log = logging.getLogger("modelplane.client")
ModelTrainingResource = create_namespaced_resource(
    c.GROUP, c.VERSION, c.KIND_TRAINING, c.PLURAL_TRAINING
)
ModelDeploymentResource = create_namespaced_resource(
    c.GROUP, c.VERSION, c.KIND_DEPLOYMENT, c.PLURAL_DEPLOYMENT
)
Manifest = dict[str, Any]
CACHED_KINDS = {"Job": "jobs", "Deployment": "deployments"}
"""Kinds the operator applies and reads back from the watch cache -> its cache kind."""


def _dict(obj: Any) -> Manifest:
    """lightkube objects as plain dicts (the builders' and derivations' currency)."""
    result: Manifest = obj.to_dict()
    return result


class Client:
    def __init__(self, api: AsyncClient | None = None, cache: WatchCache | None = None) -> None:
        self.api = api or AsyncClient(field_manager=c.FIELD_MANAGER)
        self.cache = cache
        self._http: aiohttp.ClientSession | None = None
        self.writes = 0
        """API writes made so far (the operator benchmark reads it)."""

    async def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply; the same manifest twice changes nothing."""
        self.writes += 1
        result = _dict(await self.api.apply(codecs.from_dict(manifest), force=True))
        if self.cache is not None and manifest.get("kind") in CACHED_KINDS:
            self.cache.wrote(CACHED_KINDS[manifest["kind"]], result)
        return result

    async def get_training(self, namespace: str, name: str) -> Manifest | None:
        try:
            obj = await self.api.get(ModelTrainingResource, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return _dict(obj)

    async def get_model_deployment(self, namespace: str, name: str) -> Manifest | None:
        return await self._get(ModelDeploymentResource, namespace, name)

    async def get_deployment(self, namespace: str, name: str) -> Manifest | None:
        """An apps/v1 Deployment (a Ray head or workers)."""
        if self.cache is not None and self.cache.covers("deployments"):
            return self.cache.get("deployments", namespace, name)
        return await self._get(Deployment, namespace, name)

    async def get_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = await self._get(Secret, namespace, name)
        if secret is None:
            return None
        value = (secret.get("data") or {}).get(key)
        return base64.b64decode(value).decode() if value else None

    async def _get(self, resource: Any, namespace: str, name: str) -> Manifest | None:
        try:
            obj = await self.api.get(resource, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return _dict(obj)

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.writes += 1
        await self.api.patch(
            Pod,
            name,
            {"metadata": {"annotations": annotations}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    async def patch_deployment_status(self, namespace: str, name: str, status: Manifest) -> None:
        self.writes += 1
        await self.api.patch(
            ModelDeploymentResource.Status,
            name,
            {"status": status},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    async def list_jobs(self, namespace: str, labels: dict[str, Any]) -> list[Manifest]:
        found = self.cache.select("jobs", namespace, labels) if self.cache else None
        if found is not None:
            return found
        return [_dict(j) async for j in self.api.list(Job, namespace=namespace, labels=labels)]

    async def list_pods(self, namespace: str, labels: dict[str, Any]) -> list[Manifest]:
        found = self.cache.select("pods", namespace, labels) if self.cache else None
        if found is not None:
            return found
        return [_dict(p) async for p in self.api.list(Pod, namespace=namespace, labels=labels)]

    async def job_create_failures(self, namespace: str, job: str) -> list[str]:
        """Messages of the Job's FailedCreate events, newest last."""
        events = self.api.list(
            Event,
            namespace=namespace,
            fields={"involvedObject.name": job, "reason": "FailedCreate"},
        )
        return [str(e.message) async for e in events if e.message]

    async def delete_job(self, namespace: str, name: str) -> None:
        self.writes += 1
        if self.cache is not None:
            self.cache.deleting("jobs", namespace, name)
        try:
            await self.api.delete(Job, name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def suspend_job(self, namespace: str, name: str, *, suspend: bool) -> None:
        """Flip spec.suspend, the one Job field that may change after creation."""
        self.writes += 1
        job = await self.api.patch(
            Job,
            name,
            {"spec": {"suspend": suspend}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        if self.cache is not None:
            self.cache.wrote("jobs", _dict(job))

    async def patch_training_status(self, namespace: str, name: str, status: Manifest) -> None:
        self.writes += 1
        await self.api.patch(
            ModelTrainingResource.Status,
            name,
            {"status": status},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    async def event(
        self, *, owner: Manifest, type_: str, reason: str, message: str, now: datetime
    ) -> None:
        """Record an Event on `owner`; failing to record one never fails a reconcile."""
        meta = owner["metadata"]
        stamp = format_time(now)
        event = codecs.from_dict(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "source": {"component": c.FIELD_MANAGER},
                "reportingComponent": c.FIELD_MANAGER,
            }
        )
        try:
            self.writes += 1
            await self.api.create(event)
        except ApiError as exc:
            log.warning("could not record event %s on %s: %s", reason, meta["name"], exc)

    async def progress(self, pod_ip: str, port: int) -> Manifest | None:
        """Rank 0's /progress, or None when it does not answer (yet)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        try:
            async with self._http.get(f"http://{pod_ip}:{port}/progress") as response:
                if response.status == 200:
                    data: Manifest = await response.json()
                    return data
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        return None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self.api.close()
