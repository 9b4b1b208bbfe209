"""ModelDeployment status from the model, the Ray pods and Serve's application state: a
pure phase machine.

    Pending ──model resolved, gate passed──► Progressing ──Serve RUNNING──► Ready
       │ (waiting for the training)            │     ▲                        │
       └─ judged ─► Rejected ◄─ replica refuses └── config change ◄────────┘
                                           Progressing/Ready ──Serve failed──► Degraded

Every phase drives a decision: Pending and Rejected roll nothing out; Progressing and
Ready keep the Ray cluster applied; Degraded keeps it too (Serve retries, and a fixed
spec is pushed in place) while the condition carries Serve's own message.

Rejected is terminal until something it depends on changes, and says why in its reason:
MetricsBelowThreshold and MetricMissing (requireMetrics: for a `fromTraining` model from
the training's metrics before anything rolls out; for a `model.uri` model from the
replica, which refuses a model card below them with REQUIRE_METRICS_REFUSAL in its
error), TrainingFailed and UnservableModel (the training the deployment names), and
InvalidSpec (a spec the API accepted but the builders cannot build, spec.generation for
a training known to be a classifier even before it ends, or a body that does not parse:
`derive_invalid_deployment`). The same pass that derives the status decides
what to do to the Ray cluster (`ClusterActions`: apply it, push its config, size its
workers), so the reconcile only reads, calls this once, and acts.

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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from modelplane_operator import constants as c
from modelplane_operator.api.deployment import (
    Counts,
    DeploymentPhase,
    Load,
    ModelDeploymentStatus,
    ModelInfo,
)
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.conditions import Event, format_time, set_condition
from modelplane_operator.judge import SpecError
from modelplane_operator.serve_config import (
    ResolvedModel,
    engine,
    gate,
    generation_problem,
    is_language_model,
)
from modelplane_operator.settings import Settings
from modelplane_operator.status.cluster_actions import (
    ClusterActions,
    Desired,
    cluster_actions,
    desired_cluster,
    desired_replicas,
    head_hash,
)
from modelplane_operator.status.pods import PodProblem, pod_problem
from modelplane_operator.status.serving_inputs import (
    MESSAGE_LIMIT,
    ModelRefused,
    ModelWaiting,
    ObservedDeployment,
    ServeState,
    pods_worth_reading,
    replica_refusal,
    resolve_from_training,
    serve_oom,
    summarize_serve_message,
)
from modelplane_runtime.contract import GateFailure

# The reconcile and local mode import the observed types from here, with the verdict.
__all__ = [
    "ClusterActions",
    "DeploymentDecision",
    "ModelRefused",
    "ModelWaiting",
    "ObservedDeployment",
    "ServeState",
    "derive_deployment_status",
    "derive_invalid_deployment",
    "pods_worth_reading",
    "replica_refusal",
    "resolve_from_training",
    "summarize_serve_message",
]

Manifest = dict[str, Any]
DEFAULT_SETTINGS = Settings()


@dataclass(frozen=True)
class DeploymentDecision:
    status: ModelDeploymentStatus
    roll_out: bool
    """Apply (or keep) the Ray cluster: false while the model is missing or refused."""
    events: tuple[Event, ...] = ()
    actions: ClusterActions | None = None
    """None when nothing is rolled out."""


def _pod_problem(pods: tuple[Manifest, ...]) -> PodProblem | None:
    """The head's problem first (nothing serves without it), then the workers', by name."""

    def order(pod: Manifest) -> tuple[bool, str]:
        meta = pod.get("metadata") or {}
        return (meta.get("labels") or {}).get(c.LABEL_ROLE) != "head", str(meta.get("name"))

    return pod_problem(sorted(pods, key=order))


def _ready_replicas(manifest: Manifest | None) -> int:
    return int(((manifest or {}).get("status") or {}).get("readyReplicas") or 0)


def _gate_verdict(failures: Sequence[GateFailure]) -> tuple[DeploymentPhase, str, str]:
    missing = any(failure.value is None for failure in failures)
    return (
        "Rejected",
        c.REASON_METRIC_MISSING if missing else c.REASON_METRICS_BELOW_THRESHOLD,
        "spec.requireMetrics: the model does not meet them: "
        + "; ".join(str(failure) for failure in failures),
    )


def _phase(  # noqa: PLR0911  (one return per edge of the phase machine)
    observed: ObservedDeployment,
    *,
    failures: Sequence[GateFailure],
    desired: Desired | SpecError | None,
) -> tuple[DeploymentPhase, str, str]:
    """(phase, reason, message) of the Ready/Progressing conditions."""
    if isinstance(observed.model, ModelRefused):
        return "Rejected", observed.model.reason, observed.model.message
    if isinstance(desired, SpecError):
        # Before waiting: spec.generation on a training's classifier is known at once.
        return "Rejected", c.REASON_INVALID_SPEC, str(desired)
    if isinstance(observed.model, ModelWaiting):
        return "Pending", observed.model.reason, observed.model.message
    if failures:
        return _gate_verdict(failures)
    serve = observed.serve
    refusal = replica_refusal(serve.message) if serve is not None else None
    if (
        refusal is not None
        and desired is not None
        and head_hash(observed.head) == desired.spec_hash
    ):
        # Only a refusal of the config this spec renders: after a spec change the old
        # refusal stays in Serve's message until the new config is deployed.
        return (
            "Rejected",
            c.REASON_METRICS_BELOW_THRESHOLD,
            f"spec.requireMetrics: the replica refused the model's card: {refusal}",
        )
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


def _conditions(
    previous: Sequence[Any],
    *,
    phase: DeploymentPhase,
    reason: str,
    message: str,
    accepted: tuple[Literal["True", "False", "Unknown"], str, str] | None,
    generation: int,
    now: datetime,
) -> list[Any]:
    """Ready, Progressing, kstatus' Reconciling and Stalled, and ModelAccepted (when
    `accepted` is given) for one phase."""
    conditions = list(previous)

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
    if accepted is not None:
        condition(c.COND_MODEL_ACCEPTED, *accepted)
    return conditions


def _events(
    previous: ModelDeploymentStatus, phase: DeploymentPhase, reason: str, message: str
) -> tuple[Event, ...]:
    """An Event when the phase changes, or a Rejected deployment's reason does."""
    ready = next((cond for cond in previous.conditions if cond.type == c.COND_READY), None)
    was = ready.reason if ready is not None else None
    if phase == previous.phase and (phase != "Rejected" or reason == was):
        return ()
    kind: Literal["Normal", "Warning"] = (
        "Warning" if phase in ("Rejected", "Degraded") else "Normal"
    )
    return (Event(kind, reason, message[:MESSAGE_LIMIT]),)


def _accepted(
    deployment: ModelDeployment,
    model: ResolvedModel | ModelWaiting | ModelRefused,
    *,
    phase: DeploymentPhase,
    reason: str,
    message: str,
) -> tuple[Literal["True", "False", "Unknown"], str, str]:
    """The ModelAccepted condition: (status, reason, message)."""
    if not isinstance(model, ResolvedModel):
        return (
            ("False" if isinstance(model, ModelRefused) else "Unknown"),
            model.reason,
            model.message,
        )
    if reason in (c.REASON_METRICS_BELOW_THRESHOLD, c.REASON_METRIC_MISSING):
        return "False", reason, message
    if deployment.spec.model.uri is not None and deployment.spec.require_metrics:
        return (
            "True",
            c.REASON_MODEL_ACCEPTED,
            "the replica checks the model card against requireMetrics as it starts",
        )
    return "True", c.REASON_MODEL_ACCEPTED, "the model meets requireMetrics"


def _load(serve: ServeState, *, language: bool) -> Load:
    """status.load; the tokens and sequences only for a language model."""
    return Load(
        ongoing_requests=serve.ongoing_requests,
        requests_per_second=serve.requests_per_second,
        tokens_per_second=serve.tokens_per_second if language else None,
        running_sequences=serve.running_sequences if language else None,
        waiting_sequences=serve.waiting_sequences if language else None,
    )


def derive_deployment_status(
    deployment: ModelDeployment,
    observed: ObservedDeployment,
    *,
    now: datetime,
    settings: Settings = DEFAULT_SETTINGS,
) -> DeploymentDecision:
    """The status one pass writes, what to do to the Ray cluster (built with `settings`),
    and the Events of a change."""
    previous = deployment.status or ModelDeploymentStatus()
    generation = deployment.metadata.generation or 0
    model = observed.model
    task = None if isinstance(model, ModelRefused) else model.task
    failures: list[GateFailure] = []
    desired: Desired | SpecError | None = generation_problem(deployment, task)
    if isinstance(model, ResolvedModel) and desired is None:
        # A uri model's metrics are in its card, which only the replica reads: the
        # replica applies the same gate there (ServeArgs.require_metrics).
        if deployment.spec.model.from_training is not None:
            failures = gate(deployment, model)
        if not failures:
            desired = desired_cluster(deployment, model, settings)
    phase, reason, message = _phase(observed, failures=failures, desired=desired)
    roll_out = phase not in ("Pending", "Rejected")
    actions, scaled = None, ""
    if roll_out and isinstance(desired, Desired) and isinstance(model, ResolvedModel):
        actions, scaled = cluster_actions(
            deployment, observed, desired=desired, model_uri=model.uri
        )
    conditions = _conditions(
        previous.conditions,
        phase=phase,
        reason=reason,
        message=message,
        accepted=_accepted(deployment, model, phase=phase, reason=reason, message=message),
        generation=generation,
        now=now,
    )
    serve = observed.serve
    language = is_language_model(deployment, task)
    workers = Counts(
        desired=actions.workers
        if scaled and actions and actions.workers is not None
        else desired_replicas(observed.workers),
        ready=_ready_replicas(observed.workers),
    )
    status = ModelDeploymentStatus(
        observed_generation=generation,
        phase=phase,
        conditions=conditions,
        endpoint=observed.endpoint if roll_out else None,
        engine=engine(deployment, task) if roll_out else None,
        model=ModelInfo(uri=model.uri, digest=model.digest, metrics=model.metrics)
        if isinstance(model, ResolvedModel)
        else None,
        replicas=Counts(
            desired=serve.target_replicas if serve else 0,
            ready=serve.running_replicas if serve else 0,
        )
        if roll_out
        else None,
        workers=workers if roll_out else None,
        load=_load(serve, language=language) if roll_out and serve else None,
        last_scale_time=format_time(now) if scaled else previous.last_scale_time,
    )
    events = _events(previous, phase, reason, message)
    if scaled:
        events = (*events, Event("Normal", c.REASON_SCALED, scaled))
    return DeploymentDecision(status=status, roll_out=roll_out, events=events, actions=actions)


def derive_invalid_deployment(
    body: Manifest, problems: Sequence[str], *, now: datetime
) -> DeploymentDecision:
    """The status of a ModelDeployment whose body does not parse (`problems` name the
    fields): Rejected with reason InvalidSpec, nothing rolled out. The same body gives
    the same status, so a second pass writes nothing."""
    try:
        previous = ModelDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        previous = ModelDeploymentStatus()
    generation = (body.get("metadata") or {}).get("generation")
    generation = generation if isinstance(generation, int) else 0
    message = ("the spec is invalid: " + "; ".join(problems))[:MESSAGE_LIMIT]
    conditions = _conditions(
        previous.conditions,
        phase="Rejected",
        reason=c.REASON_INVALID_SPEC,
        message=message,
        accepted=None,
        generation=generation,
        now=now,
    )
    status = ModelDeploymentStatus(
        observed_generation=generation,
        phase="Rejected",
        conditions=conditions,
        last_scale_time=previous.last_scale_time,
    )
    events = _events(previous, "Rejected", c.REASON_INVALID_SPEC, message)
    return DeploymentDecision(status=status, roll_out=False, events=events)
