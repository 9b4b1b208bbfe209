"""ModelDeployment status from the model, the Ray pods and Serve's application state: a
pure phase machine.

    Pending ──model resolved, gate passed──► Progressing ──Serve RUNNING──► Ready
       │ (waiting for the training)            │     ▲                        │
       └─ model below requireMetrics ─► Rejected   └── config change ◄────────┘
                                           Progressing/Ready ──Serve failed──► Degraded

Every phase drives a decision: Pending and Rejected roll nothing out; Progressing and
Ready keep the Ray cluster applied; Degraded keeps it too (Serve retries, and a fixed
spec is pushed in place) while the condition carries Serve's own message.

A Ray pod that cannot pull its image, keeps crashing or was OOM-killed is no phase of
its own: the kubelet keeps retrying, as it does for a training's pods. While the
deployment is Progressing, its conditions carry that pod's reason (ImagePullFailed,
CrashLoopBackOff, OOMKilled) and the kubelet's message instead of RollingOut; a Ready
deployment stays Ready (it serves) and its message names the pod that keeps it from
growing. Ray's own memory monitor may kill a replica before the kernel does: a Serve
message that says so gives reason OOMKilled too (Progressing while Serve retries,
Degraded once Serve gives up), as does a Degraded deployment with an OOM-killed pod.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from modelplane_operator import constants as c
from modelplane_operator.api.deployment import (
    Counts,
    DeploymentPhase,
    Load,
    ModelDeploymentStatus,
    ModelInfo,
)
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.conditions import Event, set_condition
from modelplane_operator.serve_config import ResolvedModel
from modelplane_operator.status.pods import PodProblem, pod_problem

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
    replica_ips: frozenset[str] = frozenset()
    """Node IPs of the running replicas (a worker pod's IP when it hosts one)."""
    listed_replicas: int = 0
    """Replicas Serve lists in any state: running, starting (a rollout's surge), stopping."""


@dataclass(frozen=True)
class ObservedDeployment:
    """What one pass saw."""

    model: ResolvedModel | ModelWaiting
    endpoint: str
    head: Manifest | None = None
    workers: Manifest | None = None
    serve: ServeState | None = None
    """None when the head's dashboard did not answer (not started yet, or down)."""
    gate_failures: tuple[str, ...] = field(default=())
    pods: tuple[Manifest, ...] = ()
    """The Ray head and worker pods, when `pods_worth_reading` said so."""


@dataclass(frozen=True)
class DeploymentDecision:
    status: ModelDeploymentStatus
    roll_out: bool
    """Apply (or keep) the Ray cluster: false while the model is missing or refused."""
    events: tuple[Event, ...] = ()


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
) -> ResolvedModel | ModelWaiting:
    """The model `fromTraining: name` refers to, or why there is none yet. Waiting is
    temporary: the pass runs again when the training changes."""
    if training is None:
        return ModelWaiting(
            c.REASON_WAITING_FOR_TRAINING,
            f"waiting for ModelTraining {name!r}: it does not exist in this namespace",
        )
    status = training.status
    phase = status.phase if status else None
    artifact = status.artifact if status else None
    if status is None or phase != "Succeeded" or artifact is None or not artifact.uri:
        hint = (
            "; it failed, so fix and re-run it or point model.uri at another artifact"
            if phase == "Failed"
            else ""
        )
        return ModelWaiting(
            c.REASON_WAITING_FOR_TRAINING,
            f"waiting for ModelTraining {name!r} to succeed (it is {phase or 'new'}){hint}",
        )
    return ResolvedModel(uri=artifact.uri, digest=artifact.digest, metrics=dict(status.metrics))


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


def _pod_problem(pods: tuple[Manifest, ...]) -> PodProblem | None:
    """The head's problem first (nothing serves without it), then the workers', by name."""

    def order(pod: Manifest) -> tuple[bool, str]:
        meta = pod.get("metadata") or {}
        return (meta.get("labels") or {}).get(c.LABEL_ROLE) != "head", str(meta.get("name"))

    return pod_problem(sorted(pods, key=order))


def _ready_replicas(manifest: Manifest | None) -> int:
    return int(((manifest or {}).get("status") or {}).get("readyReplicas") or 0)


def _desired_replicas(manifest: Manifest | None) -> int:
    return int(((manifest or {}).get("spec") or {}).get("replicas") or 0)


def _phase(  # noqa: PLR0911  (one return per edge of the phase machine)
    observed: ObservedDeployment,
) -> tuple[DeploymentPhase, str, str]:
    """(phase, reason, message) of the Ready/Progressing conditions."""
    if isinstance(observed.model, ModelWaiting):
        return "Pending", observed.model.reason, observed.model.message
    if observed.gate_failures:
        return (
            "Rejected",
            c.REASON_METRICS_BELOW_THRESHOLD,
            "the model does not meet requireMetrics: " + "; ".join(observed.gate_failures),
        )
    serve = observed.serve
    problem = _pod_problem(observed.pods)
    oom = serve_oom(serve.message) if serve is not None else None
    if serve is not None and serve.status in ("DEPLOY_FAILED", "UNHEALTHY"):
        if oom is not None:
            return "Degraded", c.REASON_OOM_KILLED, f"Serve reports {serve.status}: {oom}"
        said = f"Serve reports {serve.status}: {summarize_serve_message(serve.message)}"
        if problem is not None and problem.reason == c.REASON_OOM_KILLED:
            # The kernel killed a replica's pod: Serve only saw its replica die.
            return "Degraded", c.REASON_OOM_KILLED, f"{said}; {problem.message}"
        return "Degraded", c.REASON_APPLICATION_ERROR, said
    if serve is not None and serve.status == "RUNNING" and serve.running_replicas > 0:
        return (
            "Ready",
            c.REASON_SERVING,
            f"serving with {serve.running_replicas} replica(s)"
            + (f"; {problem.message}" if problem else ""),
        )
    if problem is not None:
        return "Progressing", problem.reason, problem.message
    if oom is not None and serve is not None:
        doing = serve.status.lower().replace("_", " ")
        return "Progressing", c.REASON_OOM_KILLED, f"Serve application {doing}: {oom}"
    if serve is None:
        return (
            "Progressing",
            c.REASON_ROLLING_OUT,
            "waiting for the Ray head to start and deploy the Serve application",
        )
    return (
        "Progressing",
        c.REASON_ROLLING_OUT,
        f"Serve application {serve.status.lower().replace('_', ' ')}"
        + (f": {summarize_serve_message(serve.message)}" if serve.message else ""),
    )


def derive_deployment_status(
    deployment: ModelDeployment, observed: ObservedDeployment, *, now: datetime
) -> DeploymentDecision:
    """The status one pass writes, whether to roll out, and the Events of a change."""
    previous = deployment.status or ModelDeploymentStatus()
    generation = deployment.metadata.generation or 0
    phase, reason, message = _phase(observed)
    conditions = list(previous.conditions)

    def condition(
        type_: str, status: Literal["True", "False", "Unknown"], why: str, text: str
    ) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions,
            type_=type_,
            status=status,
            reason=why,
            message=text,
            observed_generation=generation,
            now=now,
        )

    condition(c.COND_READY, "True" if phase == "Ready" else "False", reason, message)
    condition(
        c.COND_PROGRESSING,
        "True" if phase in ("Pending", "Progressing") else "False",
        reason,
        message,
    )
    reconciling = phase in ("Pending", "Progressing")
    condition(
        c.COND_RECONCILING,
        "True" if reconciling else "False",
        reason if reconciling else "NotReconciling",
        message if reconciling else "",
    )
    stalled = phase in ("Rejected", "Degraded")
    condition(
        c.COND_STALLED,
        "True" if stalled else "False",
        reason if stalled else "NotStalled",
        message if stalled else "",
    )
    model_info = None
    if isinstance(observed.model, ResolvedModel):
        model_info = ModelInfo(
            uri=observed.model.uri, digest=observed.model.digest, metrics=observed.model.metrics
        )
        accepted = not observed.gate_failures
        condition(
            c.COND_MODEL_ACCEPTED,
            "True" if accepted else "False",
            c.REASON_MODEL_ACCEPTED if accepted else c.REASON_METRICS_BELOW_THRESHOLD,
            "the model meets requireMetrics" if accepted else message,
        )
    else:
        condition(c.COND_MODEL_ACCEPTED, "Unknown", observed.model.reason, observed.model.message)
    roll_out = phase not in ("Pending", "Rejected")
    serve = observed.serve
    status = ModelDeploymentStatus(
        observed_generation=generation,
        phase=phase,
        conditions=conditions,
        endpoint=observed.endpoint if roll_out else None,
        model=model_info,
        replicas=Counts(
            desired=serve.target_replicas if serve else 0,
            ready=serve.running_replicas if serve else 0,
        )
        if roll_out
        else None,
        workers=Counts(
            desired=_desired_replicas(observed.workers), ready=_ready_replicas(observed.workers)
        )
        if roll_out
        else None,
        load=Load(
            ongoing_requests=serve.ongoing_requests,
            requests_per_second=serve.requests_per_second,
        )
        if roll_out and serve
        else None,
        last_scale_time=previous.last_scale_time,
    )
    events: tuple[Event, ...] = ()
    if phase != previous.phase:
        kind: Literal["Normal", "Warning"] = (
            "Warning" if phase in ("Rejected", "Degraded") else "Normal"
        )
        events = (Event(kind, reason, message[:MESSAGE_LIMIT]),)
    return DeploymentDecision(status=status, roll_out=roll_out, events=events)
