"""A ModelTraining's children: headless Service, Indexed Job.

A single-node training has no Service: its one pod is its own rendezvous. The run config
travels in the pod template's annotation, and a downwardAPI volume makes it the file the
runtime reads: one write per attempt fewer than a ConfigMap, and nothing to clean up.

Pod i of the Job is `<job>-<i>.<service>`; rank 0's address is the rendezvous point.
Every pod runs torchrun with `--node-rank` from the Job's completion index, so the same
template serves every node, and `nproc_per_node` is gpusPerNode (one process on CPUs).
The rendezvous is static (`--master-addr`, no `--max-restarts`): a node that leaves
cannot rejoin the ranks that stayed, so the pods of a multi-node Job live and die as one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.builders.common import (
    Manifest,
    apply_scheduling,
    child_meta,
    owner_reference,
    pod_image,
    pod_security_context,
    pvc_claims,
    pvc_volumes,
    storage_wiring,
)
from modelplane_operator.judge import SpecError, claim_problem, training_uris
from modelplane_operator.naming import child_name
from modelplane_operator.settings import Settings
from modelplane_runtime.contract import ENV_DIST_TIMEOUT, ENV_PVC_ROOT, ExitCode, RunConfig

CONTAINER = "trainer"
CONFIG_DIR = "/etc/modelplane"
CONFIG_FILE = "run.json"
# The API server refuses a pod whose annotations total more than 256 KiB; half of that
# leaves room for whatever else annotates the pods. A RunConfig is a few KiB.
RUN_CONFIG_MAX = 128 * 1024
# The RunConfig's parts a spec can make long, and the field each comes from.
_LONG_PARTS = {
    "adapter": "spec.model.adapter.targetModules",
    "data": "spec.data",
    "init_uri": "spec.model.init.uri",
    "output_uri": "spec.output.uri",
}
# Indexed Job pods are named <job>-<index>-<random 5>, and their hostname is
# <job>-<index>: leave room for both under the 63-character label limit.
JOB_NAME_MAX = 50
# A PersistentVolumeClaim's name is a DNS-1123 subdomain; the API server would refuse a
# Job that mounts any other name, on every pass.


@dataclass(frozen=True)
class TrainingNames:
    """Deterministic names of one attempt's children."""

    job: str
    service: str


def names_for(training_name: str, attempt: int) -> TrainingNames:
    """Attempt 0 is `<name>-train`; a replacement after a failure is `<name>-train-<n>`."""
    job = child_name(
        training_name, "train", str(attempt) if attempt else "", max_length=JOB_NAME_MAX
    )
    return TrainingNames(job=job, service=job)


def _labels(training: ModelTraining, run: str, attempt: int) -> dict[str, str]:
    """Labels of one run's children: the training, the run (the training itself or one
    of its tuning trials) and the attempt."""
    labels = {
        c.LABEL_NAME: "modelplane",
        c.LABEL_COMPONENT: "training",
        c.LABEL_TRAINING: training.metadata.name or "",
        c.LABEL_RUN: run,
        c.LABEL_ATTEMPT: str(attempt),
    }
    if run != training.metadata.name:
        labels[c.LABEL_TRIAL] = run
    return labels


def _run_config_json(run_config: RunConfig) -> str:
    """The JSON the pods read, as their template's annotation carries it. SpecError, on
    the field that made it long, when the API server might refuse the pods for it."""
    text = run_config.to_json()
    size = len(text.encode())
    if size > RUN_CONFIG_MAX:
        parts = run_config.model_dump(mode="json")
        longest = max(_LONG_PARTS, key=lambda part: len(json.dumps(parts[part])))
        raise SpecError(
            _LONG_PARTS[longest],
            f"the run config is {size} bytes, more than the {RUN_CONFIG_MAX} a pod "
            "annotation may carry; shorten it",
        )
    return text


def needs_service(training: ModelTraining) -> bool:
    return training.spec.resources.nodes > 1


def build_service(
    training: ModelTraining, *, attempt: int, settings: Settings, run: str | None = None
) -> Manifest:
    """Headless: it only gives each pod a stable DNS name for the rendezvous."""
    run = run or training.metadata.name or ""
    names = names_for(run, attempt)
    labels = _labels(training, run, attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(
            name=names.service,
            namespace=training.metadata.namespace,
            labels=labels,
            owner=owner_reference(c.KIND_TRAINING, training.metadata),
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # ranks meet before any is Ready
            "selector": {
                c.LABEL_RUN: labels[c.LABEL_RUN],
                c.LABEL_ATTEMPT: labels[c.LABEL_ATTEMPT],
            },
            "ports": [{"name": "rendezvous", "port": settings.master_port}],
        },
    }


def _resources(training: ModelTraining) -> Manifest:
    spec = training.spec.resources
    amounts: dict[str, str | int] = {}
    if spec.cpu is not None:
        amounts["cpu"] = spec.cpu
    if spec.memory is not None:
        amounts["memory"] = spec.memory
    limits: dict[str, str | int] = dict(amounts)
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = spec.gpus_per_node
    resources: Manifest = {}
    if amounts:
        resources["requests"] = amounts
    if limits:
        resources["limits"] = limits
    return resources


def build_job(
    training: ModelTraining, run_config: RunConfig, *, attempt: int, settings: Settings
) -> Manifest:
    spec = training.spec
    names = names_for(run_config.name, attempt)
    nodes = spec.resources.nodes
    per_node = max(1, spec.resources.gpus_per_node)
    # One node needs no rendezvous across pods: no Service, rank 0 is this pod.
    master = f"{names.job}-0.{names.service}" if nodes > 1 else "127.0.0.1"
    uris = training_uris(spec)
    for field, uri in uris.items():
        if (problem := claim_problem(field, uri)) is not None:
            raise SpecError(problem.field, problem.message)
    run_config_json = _run_config_json(run_config)
    claims = pvc_claims(list(uris.values()))
    volumes, mounts = pvc_volumes(claims, root=settings.pvc_root)
    volumes += [
        {
            "name": "run-config",
            "downwardAPI": {
                "items": [
                    {
                        "path": CONFIG_FILE,
                        "fieldRef": {
                            "fieldPath": f"metadata.annotations['{c.ANNOTATION_RUN_CONFIG}']"
                        },
                    }
                ]
            },
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # NCCL needs shared memory
    ]
    mounts += [
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    # Every rank: rank 0 uploads the artifact, and every rank reads the data.
    storage_env, storage_volumes, storage_mounts = storage_wiring(
        uris,
        spec.storage,
        default_secret=settings.storage_secret,
        cache_limit=settings.storage_cache_limit,
    )
    volumes += storage_volumes
    mounts += storage_mounts
    command = [
        "torchrun",
        f"--nnodes={nodes}",
        f"--nproc-per-node={per_node}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "-m",
        "modelplane_runtime",
        "train",
        "--config",
        f"{CONFIG_DIR}/{CONFIG_FILE}",
    ]
    labels = _labels(training, run_config.name, attempt)
    # A pod that Kubernetes takes away (drain, preemption, taint) did nothing wrong. One
    # pod alone is replaced in place by the Job and resumes from the checkpoint; in a gang
    # a lone replacement would meet ranks stuck in the old rendezvous, so the attempt
    # fails and the operator replaces every pod, without counting it as a restart.
    on_disruption = "FailJob" if nodes > 1 else "Ignore"
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # training needs no Kubernetes credentials
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings.run_as_user),
        "containers": [
            {
                "name": CONTAINER,
                "image": pod_image(spec.resources, settings.runtime_image),
                "command": command,
                "env": [
                    {"name": "MASTER_ADDR", "value": master},
                    {"name": "MASTER_PORT", "value": str(settings.master_port)},
                    {"name": ENV_PVC_ROOT, "value": settings.pvc_root},
                    {"name": ENV_DIST_TIMEOUT, "value": f"{settings.dist_timeout_seconds:g}"},
                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                    *storage_env,
                ],
                "ports": [{"name": "progress", "containerPort": settings.progress_port}],
                "resources": _resources(training),
                "volumeMounts": mounts,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": volumes,
    }
    if nodes > 1:
        pod_spec["subdomain"] = names.service
    apply_scheduling(pod_spec, spec.resources)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_meta(
            name=names.job,
            namespace=training.metadata.namespace,
            labels=labels,
            owner=owner_reference(c.KIND_TRAINING, training.metadata),
        ),
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            # A gang: one failed pod fails the Job, and the operator replaces the whole
            # Job (resuming from the checkpoint) instead of restarting one rank alone.
            "backoffLimit": 0,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [int(ExitCode.CONFIG_ERROR)],
                        },
                    },
                    {
                        "action": on_disruption,
                        "onPodConditions": [{"type": c.POD_DISRUPTION_TARGET}],
                    },
                ]
            },
            "suspend": spec.suspend,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {c.ANNOTATION_RUN_CONFIG: run_config_json},
                },
                "spec": pod_spec,
            },
        },
    }
