"""Our pods on a real node: the operator as the chart's pod, a two-rank training that loses
a rank three ways and still ends where an uninterrupted run ends, and images that do not
exist saying so in the status.

Everything here runs for real on `real_cluster` (containerd, the kubelet, kube-proxy,
CoreDNS) with the images built from this tree; the operator is the chart's Deployment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from modelplane_harness.cluster import LocalCluster
from modelplane_harness.operator import OPERATOR_NAMESPACE, RELEASE, install_chart
from modelplane_harness.waiting import wait_for
from tests.factories import EXAMPLES

OPERATOR = f"{RELEASE}-operator"


@pytest.fixture(scope="module")
def operator_pod(real_cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    """`helm install` of the chart with the operator image built here; the operator's pod."""
    install_chart(real_cluster)
    try:
        real_cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}",
            "--timeout=180s",
        )  # fmt: skip
        pods = real_cluster.get_json(
            "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"
        )["items"]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        yield pods[0]
    finally:
        real_cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)


def _exec(cluster: LocalCluster, pod: dict[str, Any], code: str) -> Any:
    result = cluster.kubectl(
        "exec", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "--",
        "python", "-c", code, check=False,
    )  # fmt: skip
    return result


def test_the_operator_runs_as_the_charts_pod_non_root_on_a_read_only_root(
    real_cluster: LocalCluster, operator_pod: dict[str, Any]
) -> None:
    assert operator_pod["spec"]["serviceAccountName"] == OPERATOR
    ready = {c["type"]: c["status"] for c in operator_pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    ids = _exec(real_cluster, operator_pod, "import os; print(os.getuid(), os.getgid())")
    assert ids.stdout.split() == ["1000", "1000"], ids.stderr
    write = _exec(real_cluster, operator_pod, "open('/written-by-the-operator', 'w')")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    # Its liveness and metrics endpoints answer on the pod network, where the kubelet and
    # Prometheus reach them.
    assert real_cluster.node is not None
    ip = operator_pod["status"]["podIP"]
    health = real_cluster.node.exec_in_netns(["curl", "-sf", f"http://{ip}:8081/healthz"])
    assert health.returncode == 0, health.stderr
    metrics = real_cluster.node.exec_in_netns(["curl", "-sf", f"http://{ip}:9090/metrics"])
    assert metrics.returncode == 0, metrics.stderr
    assert "modelplane_" in metrics.stdout


def _claim(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "cluster" / "models-pvc.yaml"))


def _quickstart(name: str) -> dict[str, Any]:
    """The quickstart training (two ranks, a checkpoint every 50 of its 200 steps)."""
    training: dict[str, Any] = yaml.safe_load((EXAMPLES / "quickstart-training.yaml").read_text())
    training["metadata"]["name"] = name
    training["spec"]["output"]["uri"] = f"pvc://models/{name}"
    assert training["spec"]["resources"]["nodes"] == 2
    return training


def _status(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get_json("mt", name, "-n", namespace).get("status", {})
    return status


def _pod_of_rank(cluster: LocalCluster, namespace: str, name: str, rank: int) -> str:
    pods = cluster.get_json(
        "pods", "-n", namespace, "-l", f"modelplane.io/training={name}",
        "--field-selector=status.phase=Running",
    )["items"]  # fmt: skip
    for pod in pods:
        index = pod["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index")
        if index == str(rank):
            return str(pod["metadata"]["name"])
    raise AssertionError(f"no running pod of rank {rank} of {name}")


KILL_WORKER = (
    "import os, signal\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
    "    if int(pid) not in (1, os.getpid()) and b'modelplane_runtime' in cmd:\n"
    "        os.kill(int(pid), signal.SIGKILL); print('killed', pid)\n"
)


def _delete(cluster: LocalCluster, namespace: str, pod: str) -> None:
    cluster.kubectl("delete", "pod", "-n", namespace, pod, "--wait=false")


def _kill_worker(cluster: LocalCluster, namespace: str, pod: str) -> None:
    """SIGKILL the training process under torchrun, as the kernel's OOM killer would."""
    result = cluster.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", KILL_WORKER)
    assert "killed" in result.stdout, result.stdout


def _evict(cluster: LocalCluster, namespace: str, pod: str) -> None:
    """The eviction API, as `kubectl drain` calls it: the pod gets DisruptionTarget."""
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace},
    }
    cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction",
        "-f", "-", input_text=json.dumps(eviction),
    )  # fmt: skip


FAULTS = {"deleted": _delete, "killed": _kill_worker, "evicted": _evict}


@pytest.mark.timeout(1200)
def test_a_rank_lost_mid_run_restarts_the_gang_from_its_checkpoint_and_ends_as_if_not(
    real_cluster: LocalCluster, operator_pod: dict[str, Any], real_namespace: str
) -> None:
    ns = real_namespace
    _claim(real_cluster, ns)
    names = ["straight", *FAULTS]
    # Half the quickstart (2 epochs, 100 steps, a checkpoint every 25): four two-rank
    # runs share the node's 2 CPUs.
    trainings = [_quickstart(name) for name in names]
    for training in trainings:
        training["spec"]["hyperparameters"]["epochs"] = 2
        training["spec"]["checkpoint"]["everySteps"] = 25
    documents = [yaml.safe_dump(training) for training in trainings]
    real_cluster.kubectl("apply", "-n", ns, "-f", "-", input_text="---\n".join(documents))
    # Each fault strikes rank 1 after the first checkpoint (step 25), well before the end.
    pending = dict(FAULTS)

    def strike() -> bool:
        for name, fault in list(pending.items()):
            progress = _status(real_cluster, ns, name).get("progress") or {}
            step = progress.get("step") or 0
            assert step < 75, f"{name} got to step {step} before its fault could strike"
            if step >= 30:
                fault(real_cluster, ns, _pod_of_rank(real_cluster, ns, name, rank=1))
                del pending[name]
        return not pending

    wait_for(strike, timeout=480, what="every training to pass its first checkpoint")

    def ended() -> dict[str, dict[str, Any]] | None:
        statuses = {name: _status(real_cluster, ns, name) for name in names}
        done = all(s.get("phase") in ("Succeeded", "Failed") for s in statuses.values())
        return statuses if done else None

    statuses = wait_for(ended, timeout=720, what="every training to end")
    for name, status in statuses.items():
        assert status["phase"] == "Succeeded", (name, status.get("conditions"))
    reference = statuses["straight"]
    assert reference.get("restarts", 0) == reference.get("disruptions", 0) == 0
    # A deleted pod or a killed process is a failure: one restart of maxRestarts. An
    # eviction is Kubernetes' doing: the gang restarts without spending a restart.
    assert statuses["deleted"]["restarts"] == 1
    assert statuses["killed"]["restarts"] == 1
    assert statuses["evicted"].get("restarts", 0) == 0
    assert statuses["evicted"]["disruptions"] == 1
    for name in FAULTS:
        # The second attempt resumed from a checkpoint (25 or 50 of 100 steps; it did not
        # start over, which the seed would also have brought to these metrics) and ended
        # with the uninterrupted run's weights: the same metrics to the last bit.
        logs = real_cluster.kubectl(
            "logs", "-n", ns, "-l", f"modelplane.io/training={name},modelplane.io/attempt=1",
            "--tail=-1",
        ).stdout  # fmt: skip
        assert re.search(r"resumed from \S+ \(step (25|50)\)", logs), (name, logs[-2000:])
        assert statuses[name]["metrics"] == reference["metrics"], name


@pytest.mark.timeout(300)
def test_an_image_that_does_not_exist_says_so_in_the_status_of_both_kinds(
    real_cluster: LocalCluster, operator_pod: dict[str, Any], real_namespace: str
) -> None:
    ns = real_namespace
    _claim(real_cluster, ns)
    missing = "localhost/modelplane/no-such-image:0.0.0"
    training = _quickstart("no-image")
    training["spec"]["resources"]["image"] = missing
    deployment: dict[str, Any] = yaml.safe_load(
        (EXAMPLES / "quickstart-deployment.yaml").read_text()
    )
    deployment["metadata"]["name"] = "no-image"
    deployment["spec"]["model"] = {"uri": "pvc://models/absent"}
    deployment["spec"].pop("requireMetrics", None)
    deployment["spec"]["resources"] = {"image": missing}
    real_cluster.kubectl(
        "apply", "-n", ns, "-f", "-",
        input_text=yaml.safe_dump(training) + "---\n" + yaml.safe_dump(deployment),
    )  # fmt: skip

    def reason(kind: str) -> str | None:
        status = real_cluster.get_json(kind, "no-image", "-n", ns).get("status", {})
        for condition in status.get("conditions", []):
            if condition.get("reason") == "ImagePullFailed":
                return str(condition.get("message", ""))
        return None

    message = wait_for(lambda: reason("mt"), timeout=120, what="the training's ImagePullFailed")
    assert missing in message, message
    assert _status(real_cluster, ns, "no-image")["phase"] == "Pending"
    message = wait_for(lambda: reason("md"), timeout=120, what="the deployment's ImagePullFailed")
    assert missing in message, message
