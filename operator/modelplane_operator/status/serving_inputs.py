"""What one pass of a ModelDeployment observes, and how its words are read: the model
the deployment names (resolved, waiting, or refused for good), Serve's application state
as the head's dashboard reports it, and Serve's messages (an out-of-memory kill, the
replica's requireMetrics refusal). Pure: the reconcile reads, these interpret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.serve_config import ResolvedModel
from modelplane_runtime.contract import REQUIRE_METRICS_REFUSAL

Manifest = dict[str, Any]
MESSAGE_LIMIT = 1024
SERVE_OOM_MARKERS = (
    "OutOfMemoryError",  # ray.exceptions.OutOfMemoryError (a task the monitor killed)
    "running low on memory",  # the raylet: "1 worker(s) were killed due to the node ..."
)
"""Ray's words when its memory monitor killed a worker (ray/exceptions.py, the raylet's
"N worker(s) were killed due to the node running low on memory", older releases'
"Task was killed due to the node running low on memory"). Ray's message for a worker
that died of unknown causes lists "the OOM killer" as a mere possibility: no marker."""
MEMORY_HINT = "raise spec.resources.memory"


@dataclass(frozen=True)
class ModelWaiting:
    """The model cannot be resolved yet (a temporary state): the message says why."""

    reason: str
    message: str
    task: str | None = None
    """The task of the training it waits for (known before it ends), if it exists."""


@dataclass(frozen=True)
class ModelRefused:
    """The model the deployment names can never be served as it stands (a terminal
    state until what it names changes): the reason and message say why."""

    reason: str
    message: str


@dataclass(frozen=True)
class ServeState:
    """The Serve application as the head's dashboard reports it."""

    status: str
    """NOT_STARTED, DEPLOYING, RUNNING, DEPLOY_FAILED, UNHEALTHY, DELETING."""
    message: str = ""
    target_replicas: int = 0
    running_replicas: int = 0
    ongoing_requests: float = 0.0
    requests_per_second: float = 0.0
    tokens_per_second: float = 0.0
    """A language model's replicas' generated tokens per second."""
    running_sequences: int = 0
    waiting_sequences: int = 0
    replica_ips: frozenset[str] = frozenset()
    """Node IPs of the running replicas (a worker pod's IP when it hosts one)."""
    listed_replicas: int = 0
    """Replicas Serve lists in any state: running, starting (a rollout's surge), stopping."""


@dataclass(frozen=True)
class ObservedDeployment:
    """What one pass saw."""

    model: ResolvedModel | ModelWaiting | ModelRefused
    endpoint: str
    head: Manifest | None = None
    workers: Manifest | None = None
    serve: ServeState | None = None
    """None when the head's dashboard did not answer (not started yet, or down)."""
    pods: tuple[Manifest, ...] = ()
    """The Ray head and worker pods, when `pods_worth_reading` said so."""
    token_exists: bool = False
    """The cluster's token Secret exists (a first pass draws one)."""


def summarize_serve_message(message: str) -> str:
    """Serve's failure message with a replica's traceback cut to the exception's own
    line: `Failed to update the deployments ['model']. ... ConfigError: <why>`."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    head, last = lines[0], lines[-1]
    text = head if last == head else f"{head.split(' Error:')[0]} ... {last}"
    return text[:MESSAGE_LIMIT]


def serve_oom(message: str) -> str | None:
    """Serve's message cut to Ray's out-of-memory line(s) when Ray's memory monitor killed
    a replica, else None. Ray's advice that follows (thresholds, env vars) is dropped."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not any(marker in line for line in lines for marker in SERVE_OOM_MARKERS):
        return None
    found = [
        line
        for line in lines
        if line.startswith("Memory on the node") or any(m in line for m in SERVE_OOM_MARKERS)
    ]
    text = " ".join(found).split(" Refer to the documentation")[0].rstrip(" .")
    return f"a replica ran out of memory: {text}; {MEMORY_HINT}"[:MESSAGE_LIMIT]


def resolve_from_training(
    name: str, training: ModelTraining | None
) -> ResolvedModel | ModelWaiting | ModelRefused:
    """The model `fromTraining: name` refers to, with its task, or why there is none yet
    (waiting: the pass runs again when the training changes) or never will be (refused,
    until the training is replaced by one that can succeed or be served)."""
    if training is None:
        return ModelWaiting(
            c.REASON_WAITING_FOR_TRAINING,
            f"waiting for ModelTraining {name!r}: it does not exist in this namespace",
        )
    task = training.spec.model.task
    if task == "masked-lm":
        return ModelRefused(
            c.REASON_UNSERVABLE_MODEL,
            f"spec.model.fromTraining: ModelTraining {name!r} trains task {task}, a "
            "pre-training task with no labels to answer; serve a text-classification "
            "model fine-tuned from it (model.init.uri in a ModelTraining)",
        )
    status = training.status
    phase = status.phase if status else None
    artifact = status.artifact if status else None
    if phase == "Failed":
        return ModelRefused(
            c.REASON_TRAINING_FAILED,
            f"spec.model.fromTraining: ModelTraining {name!r} failed, so it has no model to "
            "serve; fix and re-create it, or point model.uri at another artifact",
        )
    if status is None or phase != "Succeeded" or artifact is None or not artifact.uri:
        return ModelWaiting(
            c.REASON_WAITING_FOR_TRAINING,
            f"waiting for ModelTraining {name!r} to succeed (it is {phase or 'new'})",
            task=task,
        )
    return ResolvedModel(
        uri=artifact.uri, digest=artifact.digest, metrics=dict(status.metrics), task=task
    )


def replica_refusal(message: str) -> str | None:
    """The replica's own words when it refused a model card below requireMetrics (the
    sentences after REQUIRE_METRICS_REFUSAL on its line), else None."""
    for line in message.splitlines():
        _, marker, rest = line.partition(REQUIRE_METRICS_REFUSAL)
        if marker:
            return rest.strip()[:MESSAGE_LIMIT]
    return None


def pods_worth_reading(*deployments: Manifest | None) -> bool:
    """Whether a pod of these Deployments may be failing to start: some pod is not yet
    updated and ready. A settled cluster's pods are not listed on every pass."""
    for manifest in deployments:
        if manifest is None:
            continue
        meta = manifest.get("metadata") or {}
        status = manifest.get("status") or {}
        desired = int((manifest.get("spec") or {}).get("replicas") or 0)
        settled = (
            int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
            and int(status.get("replicas") or 0) == desired
            and int(status.get("updatedReplicas") or 0) == desired
            and int(status.get("readyReplicas") or 0) == desired
            and not status.get("unavailableReplicas")
        )
        if not settled:
            return True
    return False
