"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelplane_operator import constants as c
from modelplane_runtime.contract import ENV_DIST_TIMEOUT, ENV_PVC_ROOT, PROGRESS_PORT

# The image the chart sets by default (runtime.image, flavor cuda), so an operator run
# outside the chart (`python -m modelplane_operator`) starts the same pods.
DEFAULT_RUNTIME_IMAGE = "ghcr.io/modelplane/runtime:0.1.0-cuda"
# How long a Job that completed may go without rank 0's result before the training fails
# with ResultMissing. The kubelet writes the termination message as it records the
# container's termination, before the pod (and so the Job) can count as succeeded: a
# message missing once the Job is Complete is almost always missing for good. The grace
# only covers a watch that delivered the Job's update before the pod's.
RESULT_GRACE_SECONDS = 60.0
# torch.distributed's own default: long enough for a slow rank's checkpoint load or a
# data set's first read, short enough that a lost rank fails the attempt in minutes.
DIST_TIMEOUT_SECONDS = 600.0
# The emptyDir that holds a pod's s3:// objects: a training's downloaded data and its
# artifact staged for upload, a replica's downloaded model. Past it the kubelet evicts
# the pod, which the run survives (a restart), so it is a guard against a runaway, not a
# quota: large enough for every model and data set this platform trains on one node.
STORAGE_CACHE_LIMIT = "50Gi"


@dataclass(frozen=True)
class Settings:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    """Image of training and serving pods, unless a resource names its own."""
    pvc_root: str = "/mnt/pvc"
    """Where pods mount each PersistentVolumeClaim named by a pvc:// URI."""
    master_port: int = c.MASTER_PORT
    """torchrun rendezvous port on rank 0."""
    progress_port: int = PROGRESS_PORT
    """Port of rank 0's /progress and /metrics."""
    run_as_user: int = 1000
    """UID of every container (pods run as non-root)."""
    dashboard_url: str = f"http://{{head}}.{{namespace}}.svc:{c.DASHBOARD_PORT}"
    """How to reach a deployment's Ray dashboard: a template over the head Service's name
    and the namespace. Tests point it at a local Ray."""
    metrics_url: str = f"http://{{head}}.{{namespace}}.svc:{c.METRICS_PORT}"
    """How to reach a deployment's Ray head's Prometheus metrics (the head Service's
    `metrics` port): a template like `dashboard_url`."""
    replica_metrics_url: str = f"http://{{ip}}:{c.METRICS_PORT}"
    """How to reach the metrics of a node hosting a Serve replica: a template over the
    worker pod's IP. Tests point it at a local Ray's port."""
    result_grace_seconds: float = RESULT_GRACE_SECONDS
    """Seconds a completed Job may lack rank 0's result before the run fails with
    ResultMissing, counted from the Job's Complete condition."""
    dist_timeout_seconds: float = DIST_TIMEOUT_SECONDS
    """Seconds a training's collective may wait for the other ranks before the run fails
    (the training pods' MODELPLANE_DIST_TIMEOUT_S)."""
    storage_secret: str = ""
    """Name of the Secret with s3:// credentials that a resource without spec.storage
    uses, in its own namespace; empty: none, and such a resource fails with InvalidSpec.
    The operator never reads the Secret: the pods get its keys as environment."""
    storage_cache_limit: str = STORAGE_CACHE_LIMIT
    """Size limit of the emptyDir where a pod keeps its s3:// objects; empty: none."""

    @classmethod
    def from_environ(cls) -> Settings:
        env = os.environ
        defaults = cls()
        return cls(
            runtime_image=env.get(c.ENV_RUNTIME_IMAGE, DEFAULT_RUNTIME_IMAGE),
            pvc_root=env.get(ENV_PVC_ROOT, defaults.pvc_root),
            progress_port=int(env.get(c.ENV_PROGRESS_PORT, defaults.progress_port)),
            dashboard_url=env.get(c.ENV_DASHBOARD_URL, defaults.dashboard_url),
            metrics_url=env.get(c.ENV_METRICS_URL, defaults.metrics_url),
            replica_metrics_url=env.get(c.ENV_REPLICA_METRICS_URL, defaults.replica_metrics_url),
            result_grace_seconds=float(env.get(c.ENV_RESULT_GRACE, defaults.result_grace_seconds)),
            dist_timeout_seconds=float(env.get(ENV_DIST_TIMEOUT, defaults.dist_timeout_seconds)),
            storage_secret=env.get(c.ENV_STORAGE_SECRET, defaults.storage_secret),
            storage_cache_limit=env.get(c.ENV_STORAGE_CACHE_LIMIT, defaults.storage_cache_limit),
        )
