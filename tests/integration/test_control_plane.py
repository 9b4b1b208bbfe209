"""The local control plane behaves like a real cluster: scheduling, Jobs, garbage collection."""

from __future__ import annotations

import json
from typing import Any

import yaml

from modelplane_harness.cluster import EXIT_CODE_ANNOTATION, KUBERNETES_VERSION, LocalCluster
from modelplane_harness.waiting import wait_for


def gpu_job(name: str, gpus: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    # the fake kubelet ends the pod with exit code 0 (stages/pod-exit.yaml)
                    "metadata": {"annotations": {EXIT_CODE_ANNOTATION: "0"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "train",
                                "image": "example.invalid/train:1",
                                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                            }
                        ],
                    },
                },
            },
        }
    )


def pods_of(cluster: LocalCluster, namespace: str, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "pods", "-n", namespace, "-l", f"job-name={job}"
    )["items"]
    return items


def test_the_api_server_reports_the_version_it_was_built_as(cluster: LocalCluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_a_gpu_job_is_scheduled_onto_a_gpu_node_and_completes(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=gpu_job("fits", 4))
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Complete", "--timeout=60s", "job/fits"
    )
    (pod,) = pods_of(cluster, namespace, "fits")
    assert pod["spec"]["nodeName"].startswith("gpu-node-")
    assert pod["status"]["phase"] == "Succeeded"


def test_a_job_wanting_more_gpus_than_any_node_has_stays_pending(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=gpu_job("too-big", 16))

    def unschedulable() -> dict[str, Any] | None:
        pods = pods_of(cluster, namespace, "too-big")
        for cond in pods[0]["status"].get("conditions", []) if pods else []:
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return cond  # type: ignore[no-any-return]
        return None

    cond = wait_for(unschedulable, what="the scheduler to refuse the pod")
    assert "nvidia.com/gpu" in cond["message"]
    (pod,) = pods_of(cluster, namespace, "too-big")
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]


def test_deleting_an_owner_garbage_collects_its_children(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.get_json("configmap", "owner", "-n", namespace)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(child))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: (
            cluster.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode
            != 0
        ),
        what="the garbage collector to delete the child",
    )
