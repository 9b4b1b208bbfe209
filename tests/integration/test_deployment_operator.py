"""The operator turns ModelDeployments into a Ray cluster on a real API server: it waits
for the training, refuses a model below requireMetrics, and creates owned children.
(kwok plays the kubelet, so the Ray pods do not really run: Serve's state stays
unknown here and the phase stops at Progressing; the scaling loop is tested against a
real local Ray elsewhere.)"""

from __future__ import annotations

import json
from typing import Any

import yaml

from modelplane_harness.cluster import LocalCluster
from modelplane_harness.operator import OperatorProcess
from modelplane_harness.waiting import wait_for
from modelplane_runtime.contract import ServeArgs
from tests.factories import make_deployment
from tests.integration.test_training_operator import (
    RESULT,
    apply_training,
    end_pods,
    running_pods,
    wait_phase,
)


def apply_deployment(
    cluster: LocalCluster, namespace: str, name: str, changes: dict[str, Any]
) -> None:
    obj = make_deployment(changes, name=name)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(obj))


def deployment_status(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    obj = cluster.get_json("modeldeployment", name, "-n", namespace)
    return obj.get("status") or {}


def wait_deployment_phase(
    cluster: LocalCluster, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        current = deployment_status(cluster, namespace, name)
        return current if current.get("phase") == phase else None

    return wait_for(probe, timeout=timeout, what=f"deployment {name} to be {phase}")


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def ray_deployments(cluster: LocalCluster, namespace: str, name: str) -> list[str]:
    items = cluster.get_json(
        "deployments", "-n", namespace, "-l", f"modelplane.io/deployment={name}"
    )["items"]
    return sorted(d["metadata"]["name"] for d in items)


def succeed_training(cluster: LocalCluster, namespace: str, name: str) -> None:
    pods = running_pods(cluster, namespace, name, 0, 1)
    end_pods(cluster, namespace, pods, code=0, rank0_message=json.dumps(RESULT))
    wait_phase(cluster, namespace, name, "Succeeded")


def test_a_deployment_waits_for_its_training_then_rolls_out_owned_children(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(crds, namespace, "sentiment")
    apply_deployment(
        crds,
        namespace,
        "sentiment-api",
        {
            "spec.model": {"fromTraining": "sentiment"},
            "spec.requireMetrics": {"f1": 0.9},
            "spec.replicas": {"min": 2, "max": 4},
            "spec.autoscaling": {"spareWorkers": 1},
            "spec.resources": {"gpusPerReplica": 1, "cpu": "4", "memory": "16Gi"},
        },
    )
    waiting = wait_deployment_phase(crds, namespace, "sentiment-api", "Pending")
    accepted = condition(waiting, "ModelAccepted")
    assert (accepted["status"], accepted["reason"]) == ("Unknown", "WaitingForTraining")
    assert "'sentiment'" in accepted["message"]
    assert ray_deployments(crds, namespace, "sentiment-api") == []

    succeed_training(crds, namespace, "sentiment")
    rolled = wait_deployment_phase(crds, namespace, "sentiment-api", "Progressing")
    assert rolled["model"] == {
        "uri": RESULT["artifact_uri"],
        "digest": RESULT["digest"],
        "metrics": RESULT["metrics"],
    }
    assert rolled["endpoint"] == f"http://sentiment-api.{namespace}.svc:8000"
    assert condition(rolled, "ModelAccepted")["status"] == "True"

    wait_for(
        lambda: len(ray_deployments(crds, namespace, "sentiment-api")) == 2,
        what="the Ray head and worker Deployments",
    )
    uid = crds.get_json("md", "sentiment-api", "-n", namespace)["metadata"]["uid"]
    head = crds.get_json("deployment", "sentiment-api-ray-head", "-n", namespace)
    workers = crds.get_json("deployment", "sentiment-api-ray-worker", "-n", namespace)
    config_map = crds.get_json("configmap", "sentiment-api-serve", "-n", namespace)
    children = [
        head,
        workers,
        config_map,
        crds.get_json("service", "sentiment-api", "-n", namespace),
        crds.get_json("service", "sentiment-api-ray-head", "-n", namespace),
        crds.get_json("secret", "sentiment-api-ray-token", "-n", namespace),
    ]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    assert workers["spec"]["replicas"] == 3  # room for min (2) replicas and one spare
    limits = workers["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (limits["nvidia.com/gpu"], limits["cpu"], limits["memory"]) == ("1", "4", "16Gi")
    (application,) = json.loads(config_map["data"]["serve-config.json"])["applications"]
    args = ServeArgs.model_validate(application["args"])
    assert (args.model_uri, args.expected_digest, args.device) == (
        RESULT["artifact_uri"],
        RESULT["digest"],
        "cuda",
    )


def test_a_model_below_require_metrics_is_rejected_with_nothing_rolled_out(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(crds, namespace, "weak")
    succeed_training(crds, namespace, "weak")
    apply_deployment(
        crds,
        namespace,
        "weak-api",
        {"spec.model": {"fromTraining": "weak"}, "spec.requireMetrics": {"f1": 0.95}},
    )
    rejected = wait_deployment_phase(crds, namespace, "weak-api", "Rejected")
    ready = condition(rejected, "Ready")
    assert ready["reason"] == "MetricsBelowThreshold"
    assert "f1 is 0.92, below the required 0.95" in ready["message"]
    assert ray_deployments(crds, namespace, "weak-api") == []
    secrets = crds.get_json("secrets", "-n", namespace)["items"]
    assert not [s for s in secrets if s["metadata"]["name"].startswith("weak-api")]
    events = crds.get_json(
        "events", "-n", namespace, "--field-selector", "involvedObject.name=weak-api"
    )["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "MetricsBelowThreshold" for e in events)
