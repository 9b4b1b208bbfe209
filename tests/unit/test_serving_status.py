"""The ModelDeployment phase machine: from the model, the gate and Serve's state to a
status, a roll-out decision and Events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.conditions import find_condition
from modelplane_operator.serve_config import ResolvedModel
from modelplane_operator.status.serving import (
    ModelRefused,
    ModelWaiting,
    ObservedDeployment,
    ServeState,
    derive_deployment_status,
    derive_invalid_deployment,
    pods_worth_reading,
    resolve_from_training,
    summarize_serve_message,
)
from modelplane_runtime.contract import GENERATION_ENGINE, GenerationArgs
from tests.factories import make_deployment, make_training
from tests.unit.pods import CRASH_BACKOFF, NO_SUCH_IMAGE, make_pod

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
MODEL = ResolvedModel(uri="pvc://models/s/s", digest="sha256:ab", metrics={"f1": 0.93})
WEAK_MODEL = ResolvedModel(uri="pvc://models/s/w", digest="sha256:cd", metrics={"f1": 0.7})
ENDPOINT = "http://sentiment.ml.svc:8000"
TRACEBACK = (
    "Failed to update the deployments ['model']. Error:\n"
    "ray::ServeReplica:sentiment:model.initialize_and_get_metadata()\n"
    '  File "replica.py", line 1, in initialize\n'
    "modelplane_runtime.errors.ConfigError: /mnt/pvc/models/s/s: weights digest "
    "sha256:00 does not match sha256:ab; the artifact was changed or is incomplete"
)


def deployment(status: dict[str, Any] | None = None, **changes: Any) -> ModelDeployment:
    """A fromTraining deployment that requires f1 >= 0.9 (MODEL meets it)."""
    changes = {"requireMetrics": {"f1": 0.9}, **changes}
    obj = make_deployment({f"spec.{k}": v for k, v in changes.items()}, name="sentiment")
    obj["metadata"].update({"namespace": "ml", "uid": "u", "generation": 3})
    if status:
        obj["status"] = status
    return ModelDeployment.model_validate(obj)


def observe(**fields: Any) -> ObservedDeployment:
    return ObservedDeployment(**{"model": MODEL, "endpoint": ENDPOINT, **fields})


def ray_pod(role: str, suffix: str, **state: Any) -> dict[str, Any]:
    labels = {c.LABEL_DEPLOYMENT: "sentiment", c.LABEL_ROLE: role}
    return make_pod(
        f"sentiment-ray-{role}-{suffix}", labels=labels, container=f"ray-{role}", **state
    )


HEAD_CANNOT_PULL = ray_pod("head", "7d9f", waiting=("ImagePullBackOff", NO_SUCH_IMAGE))
WORKER_CRASHING = ray_pod(
    "worker",
    "x2kq",
    phase="Running",
    waiting=("CrashLoopBackOff", CRASH_BACKOFF),
    last_exit=(1, "Error"),
)


def with_memory_limit(pod: dict[str, Any], limit: str) -> dict[str, Any]:
    name = pod["status"]["containerStatuses"][0]["name"]
    pod["spec"] = {"containers": [{"name": name, "resources": {"limits": {"memory": limit}}}]}
    return pod


WORKER_OOM_LOOPING = with_memory_limit(
    ray_pod(
        "worker",
        "m3m3",
        phase="Running",
        waiting=("CrashLoopBackOff", CRASH_BACKOFF),
        last_exit=(137, "OOMKilled"),
    ),
    "300Mi",
)
RAY_OOM_ADVICE = (
    "Refer to the documentation on how to address the out of memory issue: "
    "https://docs.ray.io/en/latest/ray-observability/user-guides/debug-apps/debug-memory.html. "
    "To adjust the kill threshold, set the environment variable `RAY_memory_usage_threshold` "
    "when starting Ray."
)
REPLICA_KILLED_BY_RAY = (
    "A replica failed to start with exception. Retrying 2 more time(s). Error:\n"
    "ray::ServeReplica:sentiment:model.initialize_and_get_metadata() (pid=412, "
    "ip=10.244.1.7, actor_id=8c3f0b5e, repr=<ServeReplica object at 0x7f3a>)\n"
    "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: ServeReplica:sentiment:model\n"
    "\tactor_id: 8c3f0b5e\n"
    "\tpid: 412\n"
    "\tip: 10.244.1.7\n"
    "1 worker(s) were killed due to the node running low on memory. Memory on the node "
    "(IP: 10.244.1.7, ID: 5f2e9a) was 0.29GB used / 0.30GB limit (0.966). " + RAY_OOM_ADVICE
)
"""Serve's message when Ray's memory monitor killed a starting replica (Ray 2.60)."""
TASK_KILLED_BY_RAY = (
    "Failed to update the deployments ['model']. Error:\n"
    "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n"
    "Memory on the node (IP: 10.244.1.7, ID: 5f2e9a) was 0.29GB / 0.30GB (0.966), which "
    "exceeds the memory usage threshold of 0.95.\n" + RAY_OOM_ADVICE
)
"""The older wording: ray.exceptions.OutOfMemoryError for a killed task."""
REPLICA_DIED_UNSEEN = (
    "A replica failed to start with exception. Retrying 2 more time(s). Error:\n"
    "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task. "
    "Worker exit type: SYSTEM_ERROR. Some common causes include: (1) the process was killed "
    "by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) "
    "the worker crashed unexpectedly due to SIGSEGV or another unexpected error."
)
"""A replica that died of a cause Ray did not see: it lists the OOM killer as a guess."""
HEALTH_CHECK_FAILED = (
    "A replica's health check failed. This deployment will be UNHEALTHY until the replica "
    "recovers or a new deploy happens."
)


CASES = [
    (
        "a missing training keeps it pending",
        observe(model=ModelWaiting(c.REASON_WAITING_FOR_TRAINING, "waiting for X")),
        "Pending",
        False,
        c.REASON_WAITING_FOR_TRAINING,
    ),
    (
        "a model below the gate is rejected",
        observe(model=WEAK_MODEL),
        "Rejected",
        False,
        c.REASON_METRICS_BELOW_THRESHOLD,
    ),
    (
        "no word from the head yet is progressing",
        observe(),
        "Progressing",
        True,
        c.REASON_ROLLING_OUT,
    ),
    (
        "a deploying application is progressing",
        observe(serve=ServeState(status="DEPLOYING")),
        "Progressing",
        True,
        c.REASON_ROLLING_OUT,
    ),
    (
        "a running application with replicas is ready",
        observe(serve=ServeState(status="RUNNING", target_replicas=2, running_replicas=2)),
        "Ready",
        True,
        c.REASON_SERVING,
    ),
    (
        "a head pod that cannot pull its image keeps it progressing and says so",
        observe(pods=(HEAD_CANNOT_PULL,)),
        "Progressing",
        True,
        c.REASON_IMAGE_PULL,
    ),
    (
        "a crash-looping worker while Serve deploys keeps it progressing and says so",
        observe(serve=ServeState(status="DEPLOYING"), pods=(WORKER_CRASHING,)),
        "Progressing",
        True,
        c.REASON_CRASH_LOOP,
    ),
    (
        "a failed deployment is degraded and keeps the cluster",
        observe(serve=ServeState(status="DEPLOY_FAILED", message=TRACEBACK)),
        "Degraded",
        True,
        c.REASON_APPLICATION_ERROR,
    ),
    (
        "a worker OOM-killed while Serve deploys keeps it progressing and says so",
        observe(serve=ServeState(status="DEPLOYING"), pods=(WORKER_OOM_LOOPING,)),
        "Progressing",
        True,
        c.REASON_OOM_KILLED,
    ),
    (
        "a replica Ray killed for memory while Serve retries keeps it progressing",
        observe(serve=ServeState(status="DEPLOYING", message=REPLICA_KILLED_BY_RAY)),
        "Progressing",
        True,
        c.REASON_OOM_KILLED,
    ),
    (
        "Serve giving up on replicas Ray killed for memory is degraded for that reason",
        observe(serve=ServeState(status="DEPLOY_FAILED", message=TASK_KILLED_BY_RAY)),
        "Degraded",
        True,
        c.REASON_OOM_KILLED,
    ),
    (
        "an unhealthy application with an OOM-killed worker pod is degraded for that reason",
        observe(
            serve=ServeState(status="UNHEALTHY", message=HEALTH_CHECK_FAILED),
            pods=(WORKER_OOM_LOOPING,),
        ),
        "Degraded",
        True,
        c.REASON_OOM_KILLED,
    ),
    (
        "a replica that died of an unseen cause is no OOM kill, whatever Ray guesses",
        observe(serve=ServeState(status="DEPLOY_FAILED", message=REPLICA_DIED_UNSEEN)),
        "Degraded",
        True,
        c.REASON_APPLICATION_ERROR,
    ),
]


@pytest.mark.parametrize(
    ("observed", "phase", "roll_out", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_observation_has_one_phase_and_decision(
    observed: ObservedDeployment, phase: str, roll_out: bool, reason: str
) -> None:
    decision = derive_deployment_status(deployment(), observed, now=NOW)
    assert (decision.status.phase, decision.roll_out) == (phase, roll_out)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert (ready.status, ready.reason) == ("True" if phase == "Ready" else "False", reason)
    assert ready.observed_generation == 3
    assert decision.status.observed_generation == 3
    assert (decision.status.endpoint == ENDPOINT) is roll_out
    # kstatus: Reconciling while working toward the spec, Stalled when it cannot.
    reconciling = find_condition(decision.status.conditions, c.COND_RECONCILING)
    stalled = find_condition(decision.status.conditions, c.COND_STALLED)
    assert reconciling is not None
    assert stalled is not None
    assert reconciling.status == ("True" if phase in ("Pending", "Progressing") else "False")
    assert stalled.status == ("True" if phase in ("Rejected", "Degraded") else "False")
    if stalled.status == "True":
        assert stalled.reason == reason


def test_a_rejection_names_metric_value_and_threshold_and_warns() -> None:
    decision = derive_deployment_status(deployment(), observe(model=WEAK_MODEL), now=NOW)
    accepted = find_condition(decision.status.conditions, c.COND_MODEL_ACCEPTED)
    assert accepted is not None
    assert accepted.status == "False"
    assert "f1 is 0.7, below the required 0.9" in accepted.message
    (event,) = decision.events
    assert (event.type, event.reason) == ("Warning", c.REASON_METRICS_BELOW_THRESHOLD)


def test_serves_own_reason_reaches_the_condition_without_the_traceback() -> None:
    decision = derive_deployment_status(
        deployment(), observe(serve=ServeState(status="DEPLOY_FAILED", message=TRACEBACK)), now=NOW
    )
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert "weights digest sha256:00 does not match sha256:ab" in ready.message
    assert 'File "replica.py"' not in ready.message
    assert ready.message.startswith("Serve reports DEPLOY_FAILED: Failed to update")


def test_status_carries_the_model_replicas_workers_and_load() -> None:
    workers = {"spec": {"replicas": 3}, "status": {"readyReplicas": 2}}
    serve = ServeState(
        status="RUNNING",
        target_replicas=3,
        running_replicas=2,
        ongoing_requests=11.5,
        requests_per_second=240,
    )
    status = derive_deployment_status(
        deployment(replicas={"min": 1, "max": 3}), observe(serve=serve, workers=workers), now=NOW
    ).status
    assert status.model is not None
    assert (status.model.uri, status.model.digest, status.model.metrics) == (
        MODEL.uri,
        MODEL.digest,
        MODEL.metrics,
    )
    assert status.replicas is not None
    assert (status.replicas.desired, status.replicas.ready) == (3, 2)
    assert status.workers is not None
    assert (status.workers.desired, status.workers.ready) == (3, 2)
    assert status.load is not None
    assert (status.load.ongoing_requests, status.load.requests_per_second) == (11.5, 240)


def test_an_unchanged_phase_writes_no_event() -> None:
    ready = observe(serve=ServeState(status="RUNNING", running_replicas=1))
    first = derive_deployment_status(deployment(), ready, now=NOW)
    again = derive_deployment_status(
        deployment(status=first.status.model_dump(by_alias=True, exclude_none=True)), ready, now=NOW
    )
    assert first.events
    assert again.events == ()
    assert again.status == first.status


def training(status: dict[str, Any] | None) -> ModelTraining:
    obj = make_training(name="sentiment")
    if status is not None:
        obj["status"] = status
    return ModelTraining.model_validate(obj)


@pytest.mark.parametrize(
    ("status", "waiting_for"),
    [
        (None, "to succeed (it is new)"),
        ({"phase": "Running"}, "to succeed (it is Running)"),
    ],
    ids=["a new training", "a running training"],
)
def test_from_training_waits_until_it_succeeded(
    status: dict[str, Any] | None, waiting_for: str
) -> None:
    resolved = resolve_from_training("sentiment", training(status))
    assert isinstance(resolved, ModelWaiting)
    assert waiting_for in resolved.message


def test_a_missing_training_is_named() -> None:
    resolved = resolve_from_training("ghost", None)
    assert isinstance(resolved, ModelWaiting)
    assert "'ghost'" in resolved.message


def test_a_succeeded_training_gives_its_artifact_and_metrics() -> None:
    resolved = resolve_from_training(
        "sentiment",
        training(
            {
                "phase": "Succeeded",
                "metrics": {"f1": 0.91},
                "artifact": {"uri": "pvc://models/s/s", "digest": "sha256:ab"},
            }
        ),
    )
    assert resolved == ResolvedModel(
        uri="pvc://models/s/s",
        digest="sha256:ab",
        metrics={"f1": 0.91},
        task="tabular-classification",
    )


def test_a_message_without_a_traceback_is_kept() -> None:
    assert summarize_serve_message("replica died\n") == "replica died"
    assert summarize_serve_message("") == ""


def test_a_pod_problem_names_the_pod_and_the_kubelets_message_head_first() -> None:
    decision = derive_deployment_status(
        deployment(), observe(pods=(WORKER_CRASHING, HEAD_CANNOT_PULL)), now=NOW
    )
    conditions = {cond.type: cond for cond in decision.status.conditions}
    for type_ in (c.COND_READY, c.COND_PROGRESSING, c.COND_RECONCILING):
        assert conditions[type_].reason == c.REASON_IMAGE_PULL
        assert "pod sentiment-ray-head-7d9f cannot pull its image" in conditions[type_].message
        assert NO_SUCH_IMAGE in conditions[type_].message
    assert conditions[c.COND_STALLED].status == "False"  # the kubelet keeps retrying


def test_a_crash_loop_says_how_the_container_last_ended() -> None:
    decision = derive_deployment_status(deployment(), observe(pods=(WORKER_CRASHING,)), now=NOW)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert ready.reason == c.REASON_CRASH_LOOP
    assert "pod sentiment-ray-worker-x2kq: container ray-worker keeps crashing" in ready.message
    assert "last exit code 1 (Error)" in ready.message
    assert CRASH_BACKOFF in ready.message


def test_a_serving_deployment_stays_ready_and_names_the_worker_that_cannot_start() -> None:
    stuck = ray_pod("worker", "9zz1", waiting=("ErrImagePull", NO_SUCH_IMAGE))
    serve = ServeState(status="RUNNING", target_replicas=3, running_replicas=2)
    decision = derive_deployment_status(deployment(), observe(serve=serve, pods=(stuck,)), now=NOW)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert (decision.status.phase, ready.status, ready.reason) == ("Ready", "True", "Serving")
    assert ready.message.startswith("serving with 2 replica(s); pod sentiment-ray-worker-9zz1")


def ray_deployment(
    replicas: int, ready: int, *, updated: int | None = None, stale: bool = False
) -> dict[str, Any]:
    updated = ready if updated is None else updated
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1 if stale else 2,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            **({"unavailableReplicas": replicas - ready} if ready < replicas else {}),
        },
    }


@pytest.mark.parametrize(
    ("head", "workers", "worth"),
    [
        (None, None, False),
        (ray_deployment(1, 1), ray_deployment(2, 2), False),
        (ray_deployment(1, 0), ray_deployment(2, 2), True),
        (ray_deployment(1, 1), ray_deployment(3, 2), True),
        (ray_deployment(1, 1, updated=0), ray_deployment(2, 2), True),
        (ray_deployment(1, 1, stale=True), ray_deployment(2, 2), True),
        (ray_deployment(1, 1), ray_deployment(0, 0), False),
    ],
    ids=[
        "no cluster yet has no pods to read",
        "a settled cluster is not listed every second",
        "a head that is not ready is looked at",
        "a worker that is not ready is looked at",
        "a rollout still replacing the head is looked at",
        "a Deployment its controller has not seen yet is looked at",
        "workers scaled to zero are settled",
    ],
)
def test_pods_are_read_only_while_some_are_not_ready(
    head: dict[str, Any] | None, workers: dict[str, Any] | None, worth: bool
) -> None:
    assert pods_worth_reading(head, workers) is worth


@pytest.mark.parametrize(
    ("serve", "says"),
    [
        (
            ServeState(status="DEPLOYING", message=REPLICA_KILLED_BY_RAY),
            [
                "Serve application deploying: a replica ran out of memory: 1 worker(s) were "
                "killed due to the node running low on memory. Memory on the node "
                "(IP: 10.244.1.7, ID: 5f2e9a) was 0.29GB used / 0.30GB limit (0.966); "
                "raise spec.resources.memory"
            ],
        ),
        (
            ServeState(status="DEPLOY_FAILED", message=TASK_KILLED_BY_RAY),
            [
                "Serve reports DEPLOY_FAILED: a replica ran out of memory: "
                "ray.exceptions.OutOfMemoryError: Task was killed",
                "Memory on the node (IP: 10.244.1.7, ID: 5f2e9a) was 0.29GB / 0.30GB",
                "raise spec.resources.memory",
            ],
        ),
    ],
    ids=["Ray 2.60's words for a killed replica", "the older words for a killed task"],
)
def test_a_replica_ray_killed_for_memory_is_named_without_rays_advice(
    serve: ServeState, says: list[str]
) -> None:
    decision = derive_deployment_status(deployment(), observe(serve=serve), now=NOW)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert ready.reason == c.REASON_OOM_KILLED
    for text in says:
        assert text in ready.message, ready.message
    assert "RAY_memory_usage_threshold" not in ready.message
    assert "actor_id" not in ready.message


def test_an_oom_killed_worker_names_its_pod_and_memory_limit() -> None:
    decision = derive_deployment_status(
        deployment(),
        observe(serve=ServeState(status="DEPLOYING"), pods=(WORKER_OOM_LOOPING,)),
        now=NOW,
    )
    conditions = {cond.type: cond for cond in decision.status.conditions}
    for type_ in (c.COND_READY, c.COND_PROGRESSING, c.COND_RECONCILING):
        assert conditions[type_].reason == c.REASON_OOM_KILLED
        assert conditions[type_].message == (
            "pod sentiment-ray-worker-m3m3: container ray-worker was OOM-killed "
            "(memory limit 300Mi); raise spec.resources.memory"
        )
    assert conditions[c.COND_STALLED].status == "False"  # the kubelet keeps restarting it


def test_an_unhealthy_application_says_both_serves_words_and_the_oom_killed_pod() -> None:
    decision = derive_deployment_status(
        deployment(),
        observe(
            serve=ServeState(status="UNHEALTHY", message=HEALTH_CHECK_FAILED),
            pods=(WORKER_OOM_LOOPING,),
        ),
        now=NOW,
    )
    stalled = find_condition(decision.status.conditions, c.COND_STALLED)
    assert stalled is not None
    assert (stalled.status, stalled.reason) == ("True", c.REASON_OOM_KILLED)
    assert stalled.message.startswith("Serve reports UNHEALTHY: A replica's health check failed")
    assert "pod sentiment-ray-worker-m3m3: container ray-worker was OOM-killed" in stalled.message
    (event,) = decision.events
    assert (event.type, event.reason) == ("Warning", c.REASON_OOM_KILLED)


def test_a_serving_deployment_with_an_oom_killed_worker_stays_ready_and_names_it() -> None:
    serve = ServeState(status="RUNNING", target_replicas=2, running_replicas=1)
    decision = derive_deployment_status(
        deployment(), observe(serve=serve, pods=(WORKER_OOM_LOOPING,)), now=NOW
    )
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert (decision.status.phase, ready.status, ready.reason) == ("Ready", "True", "Serving")
    assert ready.message == (
        "serving with 1 replica(s); pod sentiment-ray-worker-m3m3: container ray-worker was "
        "OOM-killed (memory limit 300Mi); raise spec.resources.memory"
    )


def training_with(task: str = "text-classification", **status: Any) -> ModelTraining:
    architecture = "llama" if task == "text-generation" else "bert"
    obj = make_training(
        {
            "spec.model": {"architecture": architecture, "task": task},
            "spec.data.train.uri": "builtin://sentiment",
        },
        name="sentiment",
    )
    if status:
        obj["status"] = status
    return ModelTraining.model_validate(obj)


def stalled(status: Any) -> tuple[str | None, str, str, str]:
    ready = find_condition(status.conditions, c.COND_READY)
    stall = find_condition(status.conditions, c.COND_STALLED)
    assert ready is not None
    assert stall is not None
    return status.phase, ready.status, stall.status, stall.reason


@pytest.mark.parametrize(
    ("training", "reason", "named"),
    [
        (training_with(phase="Failed"), c.REASON_TRAINING_FAILED, "'sentiment' failed"),
        (training_with("masked-lm"), c.REASON_UNSERVABLE_MODEL, "task masked-lm"),
        (
            training_with("masked-lm", phase="Succeeded", artifact={"uri": "pvc://m/m"}),
            c.REASON_UNSERVABLE_MODEL,
            "task masked-lm",
        ),
    ],
    ids=[
        "a failed training rejects the deployment",
        "a masked-lm training is refused before it ends",
        "a succeeded masked-lm training is refused too",
    ],
)
def test_a_training_that_can_never_give_a_servable_model_is_terminal(
    training: ModelTraining, reason: str, named: str
) -> None:
    refused = resolve_from_training("sentiment", training)
    assert isinstance(refused, ModelRefused)
    decision = derive_deployment_status(deployment(), observe(model=refused), now=NOW)
    assert stalled(decision.status) == ("Rejected", "False", "True", reason)
    assert "spec.model.fromTraining" in refused.message
    assert named in refused.message
    assert (decision.roll_out, decision.actions) == (False, None)
    (event,) = decision.events
    assert (event.type, event.reason) == ("Warning", reason)


def test_a_recreated_training_that_succeeds_lifts_the_rejection() -> None:
    refused = resolve_from_training("sentiment", training_with(phase="Failed"))
    rejected = derive_deployment_status(deployment(), observe(model=refused), now=NOW).status
    previous = rejected.model_dump(by_alias=True, exclude_none=True)
    recovered = derive_deployment_status(deployment(status=previous), observe(), now=NOW)
    assert recovered.status.phase == "Progressing"
    assert recovered.actions is not None
    assert recovered.actions.apply_cluster


def test_a_required_metric_the_training_did_not_compute_is_missing_not_low() -> None:
    decision = derive_deployment_status(
        deployment(requireMetrics={"recall": 0.8}), observe(), now=NOW
    )
    assert stalled(decision.status) == ("Rejected", "False", "True", c.REASON_METRIC_MISSING)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert "spec.requireMetrics" in ready.message
    assert "reports no recall (it reports: f1)" in ready.message
    assert decision.actions is None


def _bypassing_validation(**resources: Any) -> ModelDeployment:
    """A deployment whose resources the API's rules no longer refuse, as if it had
    been stored before they existed."""
    md = deployment()
    spec = md.spec.model_copy(update={"resources": md.spec.resources.model_copy(update=resources)})
    return md.model_copy(update={"spec": spec})


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"memory": "100Mi"}, "spec.resources.memory: 100Mi is below the 250Mi"),
        ({"memory": "200e6"}, "spec.resources.memory"),
        ({"cpu": "2Gi"}, "spec.resources.cpu: '2Gi'"),
    ],
    ids=[
        "a worker with less memory than Ray starts in",
        "the same in exponent notation",
        "a cpu quantity the builders cannot read",
    ],
)
def test_a_spec_the_builders_cannot_build_is_invalid_and_rolls_nothing_out(
    resources: dict[str, Any], field: str
) -> None:
    decision = derive_deployment_status(_bypassing_validation(**resources), observe(), now=NOW)
    assert stalled(decision.status) == ("Rejected", "False", "True", c.REASON_INVALID_SPEC)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert ready.message.startswith(field)
    assert decision.actions is None


def test_enough_worker_memory_rolls_out() -> None:
    decision = derive_deployment_status(_bypassing_validation(memory="600Mi"), observe(), now=NOW)
    assert decision.status.phase == "Progressing"


URI_MODEL = ResolvedModel(uri="pvc://models/s/s", digest="", metrics={})
REFUSAL = (
    "Failed to update the deployments ['model']. Error:\n"
    "ray::ServeReplica:sentiment:model.initialize_and_get_metadata()\n"
    '  File "predictor.py", line 1, in __init__\n'
    "modelplane_runtime.errors.ConfigError: modelplane: the model does not meet "
    "requireMetrics: f1 is 0.7, below the required 0.9"
)


def uri_deployment(status: dict[str, Any] | None = None) -> ModelDeployment:
    return deployment(status, model={"uri": URI_MODEL.uri})


def test_a_uri_model_is_gated_by_its_replica_not_by_missing_metrics() -> None:
    decision = derive_deployment_status(uri_deployment(), observe(model=URI_MODEL), now=NOW)
    assert decision.status.phase == "Progressing"
    assert decision.actions is not None
    (application,) = decision.actions.config["applications"]
    assert application["args"]["require_metrics"] == {"f1": 0.9}


def test_the_replicas_refusal_of_the_current_config_rejects_the_deployment() -> None:
    first = derive_deployment_status(uri_deployment(), observe(model=URI_MODEL), now=NOW)
    assert first.actions is not None
    head = {"metadata": {"annotations": {c.ANNOTATION_SPEC_HASH: first.actions.spec_hash}}}
    refused = observe(
        model=URI_MODEL,
        head=head,
        workers={"spec": {"replicas": 1}},
        token_exists=True,
        serve=ServeState(status="DEPLOY_FAILED", message=REFUSAL),
    )
    decision = derive_deployment_status(uri_deployment(), refused, now=NOW)
    assert stalled(decision.status) == (
        "Rejected",
        "False",
        "True",
        c.REASON_METRICS_BELOW_THRESHOLD,
    )
    accepted = find_condition(decision.status.conditions, c.COND_MODEL_ACCEPTED)
    assert accepted is not None
    assert accepted.status == "False"
    assert accepted.message.endswith("f1 is 0.7, below the required 0.9")
    assert decision.actions is None

    # A new spec (a lower threshold) renders a new config: the old refusal in Serve's
    # message is about the old one, so the new one rolls out.
    lowered = deployment(model={"uri": URI_MODEL.uri}, requireMetrics={"f1": 0.5})
    again = derive_deployment_status(lowered, refused, now=NOW)
    assert again.status.phase == "Degraded"
    assert again.actions is not None
    assert (again.actions.apply_cluster, again.actions.push_config) == (True, True)


def test_scaling_is_decided_in_the_derivation_with_its_time_and_event() -> None:
    md = deployment(replicas={"min": 1, "max": 4})
    first = derive_deployment_status(md, observe(), now=NOW)
    assert first.actions is not None
    head = {"metadata": {"annotations": {c.ANNOTATION_SPEC_HASH: first.actions.spec_hash}}}
    serve = ServeState(status="RUNNING", target_replicas=3, running_replicas=1, listed_replicas=1)
    observed = observe(
        head=head,
        workers={"spec": {"replicas": 1}, "status": {"readyReplicas": 1}},
        token_exists=True,
        serve=serve,
    )
    decision = derive_deployment_status(md, observed, now=NOW)
    assert decision.actions is not None
    assert (decision.actions.workers, decision.actions.scaled) == (3, "up")
    assert decision.actions.apply_cluster is False
    assert decision.status.workers is not None
    assert (decision.status.workers.desired, decision.status.workers.ready) == (3, 1)
    assert decision.status.last_scale_time == "2026-11-29T12:00:00Z"
    assert decision.events[-1].reason == c.REASON_SCALED
    assert "from 1 to 3" in decision.events[-1].message


def test_a_body_that_does_not_parse_is_rejected_once_naming_its_fields() -> None:
    body = make_deployment({"spec.replicas": {"min": 3, "max": 1}}, name="sentiment")
    body["metadata"]["generation"] = 2
    problems = ["spec.replicas.min: min must be less than or equal to max"]
    first = derive_invalid_deployment(body, problems, now=NOW)
    assert stalled(first.status) == ("Rejected", "False", "True", c.REASON_INVALID_SPEC)
    ready = find_condition(first.status.conditions, c.COND_READY)
    assert ready is not None
    assert "spec.replicas.min" in ready.message
    assert first.status.observed_generation == 2
    (event,) = first.events
    assert (event.type, event.reason) == ("Warning", c.REASON_INVALID_SPEC)

    body["status"] = first.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    later = derive_invalid_deployment(body, problems, now=datetime(2026, 11, 30, tzinfo=UTC))
    assert later.status == first.status
    assert later.events == ()


# Language models: served with the OpenAI API, judged against the training's task.

LLM_ARTIFACT = {"uri": "pvc://models/chat/chat", "digest": "sha256:ef"}


def served_training(task: str, **status: Any) -> ResolvedModel | ModelWaiting | ModelRefused:
    return resolve_from_training("sentiment", training_with(task, **status))


def test_a_text_generation_training_is_served_with_continuous_batching() -> None:
    model = served_training(
        "text-generation", phase="Succeeded", artifact=LLM_ARTIFACT, metrics={"perplexity": 9.5}
    )
    assert isinstance(model, ResolvedModel)
    assert model.task == "text-generation"
    decision = derive_deployment_status(
        deployment(requireMetrics={"perplexity": 12.0}), observe(model=model), now=NOW
    )
    assert decision.status.phase == "Progressing"
    assert decision.status.engine == GENERATION_ENGINE
    assert decision.actions is not None
    (application,) = decision.actions.config["applications"]
    assert application["args"]["generation"] is None  # the replica's defaults
    (options,) = application["deployments"]
    assert options["max_ongoing_requests"] == GenerationArgs().max_sequences + (
        GenerationArgs().max_waiting
    )


def test_a_language_model_above_the_perplexity_allowed_is_rejected_before_rolling_out() -> None:
    model = served_training(
        "text-generation", phase="Succeeded", artifact=LLM_ARTIFACT, metrics={"perplexity": 15.0}
    )
    decision = derive_deployment_status(
        deployment(requireMetrics={"perplexity": 12.0}), observe(model=model), now=NOW
    )
    assert stalled(decision.status) == (
        "Rejected",
        "False",
        "True",
        c.REASON_METRICS_BELOW_THRESHOLD,
    )
    assert decision.actions is None


@pytest.mark.parametrize(
    "status",
    [{}, {"phase": "Running"}, {"phase": "Succeeded", "artifact": {"uri": "pvc://m/s"}}],
    ids=[
        "while the classifier's training is new",
        "while it runs",
        "once it succeeded",
    ],
)
def test_generation_settings_on_a_classifier_are_an_invalid_spec(status: dict[str, Any]) -> None:
    model = served_training("text-classification", **status)
    decision = derive_deployment_status(
        deployment(generation={"maxSequences": 8}), observe(model=model), now=NOW
    )
    assert stalled(decision.status) == ("Rejected", "False", "True", c.REASON_INVALID_SPEC)
    ready = find_condition(decision.status.conditions, c.COND_READY)
    assert ready is not None
    assert ready.message.startswith("spec.generation: the model of ModelTraining 'demo' is a ")
    assert "text-classification model" in ready.message
    assert "remove spec.generation" in ready.message
    assert (decision.roll_out, decision.actions, decision.status.engine) == (False, None, None)


def test_generation_settings_wait_for_a_training_that_does_not_exist_yet() -> None:
    waiting = resolve_from_training("later", None)
    decision = derive_deployment_status(deployment(generation={}), observe(model=waiting), now=NOW)
    assert decision.status.phase == "Pending"


def test_generation_settings_on_a_language_model_training_roll_out() -> None:
    model = served_training("text-generation", phase="Succeeded", artifact=LLM_ARTIFACT)
    decision = derive_deployment_status(
        deployment(requireMetrics={}, generation={"maxSequences": 4, "maxWaiting": 2}),
        observe(model=model),
        now=NOW,
    )
    assert decision.status.phase == "Progressing"
    assert decision.actions is not None
    (application,) = decision.actions.config["applications"]
    assert application["args"]["generation"]["max_sequences"] == 4
    assert application["deployments"][0]["max_ongoing_requests"] == 6


RUNNING_SERVE = ServeState(
    status="RUNNING",
    target_replicas=2,
    running_replicas=2,
    ongoing_requests=21.0,
    requests_per_second=3.5,
    tokens_per_second=180.25,
    running_sequences=16,
    waiting_sequences=5,
)
BUILTIN_LLM = ResolvedModel(uri="builtin://smollm2-135m-instruct", digest="", metrics={})


@pytest.mark.parametrize(
    ("spec", "model", "engine", "load"),
    [
        (
            {"model": {"uri": "builtin://smollm2-135m-instruct"}, "requireMetrics": {}},
            BUILTIN_LLM,
            GENERATION_ENGINE,
            {
                "ongoingRequests": 21.0,
                "requestsPerSecond": 3.5,
                "tokensPerSecond": 180.25,
                "runningSequences": 16,
                "waitingSequences": 5,
            },
        ),
        (
            {"model": {"uri": "pvc://models/chat/chat"}, "requireMetrics": {}, "generation": {}},
            ResolvedModel(uri="pvc://models/chat/chat", digest="", metrics={}),
            GENERATION_ENGINE,
            {
                "ongoingRequests": 21.0,
                "requestsPerSecond": 3.5,
                "tokensPerSecond": 180.25,
                "runningSequences": 16,
                "waitingSequences": 5,
            },
        ),
        (
            {},
            MODEL,
            "torch-dynamic-batching",
            {"ongoingRequests": 21.0, "requestsPerSecond": 3.5},
        ),
    ],
    ids=[
        "a built-in language model reports tokens and sequences",
        "a uri model with generation settings is a language model",
        "a classifier reports requests only",
    ],
)
def test_the_status_names_the_engine_and_the_load_it_measures(
    spec: dict[str, Any], model: ResolvedModel, engine: str, load: dict[str, Any]
) -> None:
    decision = derive_deployment_status(
        deployment(**spec), observe(model=model, serve=RUNNING_SERVE), now=NOW
    )
    written = decision.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert written["phase"] == "Ready"
    assert written["engine"] == engine
    assert written["load"] == load
