"""ModelDeployments on real pods: the getting-started deployment (fromTraining,
requireMetrics) becomes Ready on Ray pods the kubelet runs, answers through its Service
what local mode answers, shows its load, scales with it, rolls a new model in place,
survives losing a worker, the operator and the head, says OOMKilled when a worker runs
out of memory, and keeps the Ray cluster closed to anyone without its token.

Everything runs on `real_cluster` (containerd, the kubelet, kube-proxy, CoreDNS) with the
images built from this tree; the operator is the chart's pod and reaches each head's
dashboard through the head Service (the chart's default URL, no test seam). Load comes
from threads inside the node's network namespace, as from a pod. The tests share one
namespace, two trainings and one deployment, and run in file order; the last stands alone:
a language model trained here answers the OpenAI API through its Service.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch
import tritonclient.http as triton
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelplane.serving import start_server
from modelplane_harness.cluster import LocalCluster, free_port
from modelplane_harness.loadgen import BackgroundLoad, LoadResult, enter_netns, json_body
from modelplane_harness.node import RealNode
from modelplane_harness.operator import OPERATOR_NAMESPACE, RELEASE, install_chart
from modelplane_harness.realserving import load_step, netns_path, service_url
from modelplane_harness.waiting import wait_for
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.serve_config import ResolvedModel, render_serve_config
from modelplane_runtime.contract import GENERATION_ENGINE, DataConfig, OptimConfig
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.factories import EXAMPLES
from tests.integration.conftest import _test_namespace
from tests.runtime.conftest import TINY_LLAMA, make_lm_config

OPERATOR = f"{RELEASE}-operator"
NAME = "quickstart"
REVIEWS = ["what a wonderful film", "the plot was really boring", "the acting was not bad"]
BODY = json_body(lambda n: {"inputs": [REVIEWS[n % len(REVIEWS)]]})
# Small workers: the head (500m), up to three workers and two operator replicas fit the
# node's 2 CPUs.
WORKER_RESOURCES = {"cpu": "250m", "memory": "2Gi"}


@dataclass(frozen=True)
class Stack:
    cluster: LocalCluster
    namespace: str
    digests: dict[str, str]
    """training name -> artifact digest"""

    def md(self, name: str = NAME) -> dict[str, Any]:
        status: dict[str, Any] = self.cluster.get_json("md", name, "-n", self.namespace).get(
            "status", {}
        )
        return status

    def deployment_min(self, name: str = NAME) -> int:
        spec = self.cluster.get_json("md", name, "-n", self.namespace)["spec"]
        return int(spec["replicas"]["min"])

    def url(self, path: str = "/predict") -> str:
        return service_url(self.cluster, self.namespace, NAME, path)

    def load(self, clients: int, seconds: float = 600) -> BackgroundLoad:
        return BackgroundLoad(
            self.url(), BODY, clients=clients, seconds=seconds, netns=netns_path(self.cluster)
        )

    def pods(self, role: str, name: str = NAME) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = self.cluster.get_json(
            "pods", "-n", self.namespace, "-l",
            f"modelplane.io/deployment={name},modelplane.io/role={role}",
        )["items"]  # fmt: skip
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def patch(self, spec: dict[str, Any], name: str = NAME) -> None:
        self.cluster.kubectl(
            "patch", "md", name, "-n", self.namespace, "--type=merge",
            "-p", json.dumps({"spec": spec}),
        )  # fmt: skip

    def ready(self, *, replicas: int, timeout: float = 300, name: str = NAME) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.md(name)
            ok = (
                status.get("phase") == "Ready"
                and (status.get("replicas") or {}).get("ready") == replicas
                and status.get("observedGeneration")
                == self.cluster.get_json("md", name, "-n", self.namespace)["metadata"]["generation"]
            )
            return status if ok else None

        return wait_for(probe, timeout=timeout, what=f"{name} Ready with {replicas} replica(s)")

    def settled(self, *, replicas: int, timeout: float = 300) -> None:
        """Ready with `replicas`, each on its own worker pod, and no pod coming or going.

        Serve being Ready is not enough for a test that compares pods before and after:
        a replica lost with its pod is still listed while Serve notices, the operator
        gives it a worker meanwhile (scaling.py: never fewer workers than replicas
        listed), and that extra worker is scaled away a little later, legitimately."""
        self.ready(replicas=replicas, timeout=timeout)

        def steady() -> bool:
            workers = self.cluster.get_json(
                "deployment", f"{NAME}-ray-worker", "-n", self.namespace
            )
            pods = self.cluster.get_json(
                "pods", "-n", self.namespace, "-l", f"modelplane.io/deployment={NAME}"
            )["items"]
            running = [
                p
                for p in pods
                if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
            ]
            return (
                workers["spec"]["replicas"] == replicas
                and (workers.get("status") or {}).get("readyReplicas") == replicas
                and len(running) == len(pods) == replicas + 1  # and the head
            )

        wait_for(steady, timeout=timeout, what=f"{replicas} worker pod(s) and the head, settled")


def _training(name: str, **hyperparameters: Any) -> dict[str, Any]:
    training: dict[str, Any] = yaml.safe_load((EXAMPLES / "quickstart-training.yaml").read_text())
    training["metadata"]["name"] = name
    training["spec"]["output"]["uri"] = f"pvc://models/{name}"
    training["spec"]["hyperparameters"].update(hyperparameters)
    return training


def _deployment(**spec: Any) -> dict[str, Any]:
    """The getting-started deployment with small workers and quick scaling."""
    deployment: dict[str, Any] = yaml.safe_load(
        (EXAMPLES / "quickstart-deployment.yaml").read_text()
    )
    deployment["spec"].update(
        {
            "resources": WORKER_RESOURCES,
            "autoscaling": {
                "targetOngoingRequests": 2,
                "upscaleDelaySeconds": 1,
                "downscaleDelaySeconds": 5,
            },
        }
    )
    deployment["spec"].update(spec)
    return deployment


def _apply(cluster: LocalCluster, namespace: str, *documents: dict[str, Any]) -> None:
    text = "---\n".join(yaml.safe_dump(d) for d in documents)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=text)


def _operator_pods(cluster: LocalCluster) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get_json(
        "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


@pytest.fixture(scope="module")
def stack(real_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The chart's operator pod, the quickstart training and a second version of it, and
    the getting-started deployment Ready on real pods."""
    cluster = real_cluster
    install_chart(cluster)
    namespaces = _test_namespace(cluster, request, logs=True)
    namespace = next(namespaces)
    try:
        cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}",
            "--timeout=180s",
        )  # fmt: skip
        cluster.kubectl(
            "apply", "-n", namespace, "-f", str(EXAMPLES / "cluster" / "models-pvc.yaml")
        )
        # Another version: another seed, one rank (the same global batches), other
        # weights, the same accuracy (0.98), so it passes requireMetrics too.
        v2 = _training("quickstart-v2", seed=7)
        v2["spec"]["resources"] = {"nodes": 1}
        _apply(cluster, namespace, _training(NAME), v2)
        _apply(cluster, namespace, _deployment())

        def trained() -> dict[str, str] | None:
            statuses = {
                n: cluster.get_json("mt", n, "-n", namespace).get("status", {})
                for n in (NAME, "quickstart-v2")
            }
            failed = [n for n, s in statuses.items() if s.get("phase") == "Failed"]
            assert not failed, statuses
            if all(s.get("phase") == "Succeeded" for s in statuses.values()):
                return {n: s["artifact"]["digest"] for n, s in statuses.items()}
            return None

        digests = wait_for(trained, timeout=600, what="both trainings to succeed")
        stack = Stack(cluster, namespace, digests)
        began = time.monotonic()
        stack.ready(replicas=1, timeout=600)
        print(f"\n{NAME} Ready {time.monotonic() - began:.1f} s after its training succeeded")
        yield stack
    finally:
        # The namespace goes first (its deployments' pods with it), then the operator.
        for _ in namespaces:
            pass
        cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=180s",
                        check=False)  # fmt: skip
        cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)


def _exec(stack: Stack, pod: dict[str, Any], code: str) -> Any:
    return stack.cluster.kubectl(
        "exec", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], "--",
        "python", "-c", code, check=False,
    )  # fmt: skip


@pytest.mark.timeout(900)
def test_the_getting_started_deployment_is_ready_on_ray_pods_with_token_auth(
    stack: Stack,
) -> None:
    status = stack.md()
    assert status["model"]["digest"] == stack.digests[NAME]
    assert status["model"]["metrics"]["accuracy"] >= 0.8
    (head,) = stack.pods("head")
    workers = stack.pods("worker")
    assert len(workers) == 1
    for pod in [head, *workers]:
        assert pod["spec"]["nodeName"] == "real-node"
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == f"{NAME}-ray-token"
        # Non-root on a read-only root filesystem, for real.
        ids = _exec(stack, pod, "import os; print(os.getuid(), os.getgid())")
        assert ids.stdout.split() == ["1000", "1000"], ids.stderr
        write = _exec(stack, pod, "open('/written-by-ray', 'w')")
        assert "Read-only file system" in write.stderr
    # The operator pod reached the head's dashboard through the head Service with the
    # chart's default URL: replicas.ready above came from there, and nothing overrode it.
    (operator,) = _operator_pods(stack.cluster)
    (container,) = operator["spec"]["containers"]
    assert "MODELPLANE_DASHBOARD_URL" not in {e["name"] for e in container.get("env", [])}
    # The guard objects the builders render are on the cluster.
    kinds = stack.cluster.get_json("networkpolicy,pdb", "-n", stack.namespace)["items"]
    assert sorted((k["kind"], k["metadata"]["name"]) for k in kinds) == [
        ("NetworkPolicy", f"{NAME}-ray-head"),
        ("NetworkPolicy", f"{NAME}-ray-worker"),
        ("PodDisruptionBudget", f"{NAME}-ray-worker"),
    ]


def _claim_path(stack: Stack) -> Path:
    """Where the `models` claim's hostPath volume keeps its files on this machine."""
    volume = stack.cluster.kubectl(
        "get", "pvc", "models", "-n", stack.namespace, "-o", "jsonpath={.spec.volumeName}"
    ).stdout.strip()
    path = stack.cluster.kubectl(
        "get", "pv", volume, "-o", "jsonpath={.spec.hostPath.path}"
    ).stdout.strip()
    return Path(path)


def _probabilities(answer: dict[str, Any]) -> np.ndarray[Any, Any]:
    labels = answer["labels"]
    rows = [[row["probabilities"][label] for label in labels] for row in answer["predictions"]]
    return np.array(rows, dtype=np.float64)


@pytest.mark.timeout(600)
def test_queries_through_the_service_answer_what_local_mode_answers(
    stack: Stack, tmp_path: Path
) -> None:
    cluster, node = stack.cluster, stack.cluster.node
    assert node is not None
    # /predict through the Service's ClusterIP, from inside the cluster's network.
    curl = node.exec_in_netns(
        ["curl", "-sf", "-X", "POST", stack.url(), "-H", "content-type: application/json",
         "-d", json.dumps({"inputs": REVIEWS})],
    )  # fmt: skip
    assert curl.returncode == 0, curl.stderr
    cluster_answer = json.loads(curl.stdout)
    # Open Inference Protocol v2 with a third-party client, through `kubectl
    # port-forward service/<name>` as a user would.
    port = free_port()
    forward = subprocess.Popen(
        [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.kubeconfig}", "port-forward",
         "-n", stack.namespace, f"service/{NAME}", f"{port}:8000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")

        def forwarded() -> bool:
            try:
                return bool(client.is_server_ready())
            except OSError:  # kubectl is not listening yet
                return False

        wait_for(forwarded, timeout=30, what="the port-forward")
        assert client.is_model_ready(NAME)
        tensor = triton.InferInput("text", [len(REVIEWS)], "BYTES")
        tensor.set_data_from_numpy(
            np.array([r.encode() for r in REVIEWS], dtype=np.object_), binary_data=False
        )
        result = client.infer(
            NAME, [tensor], outputs=[triton.InferRequestedOutput("probabilities", False)]
        )
        oip = result.as_numpy("probabilities")
    finally:
        forward.terminate()
        forward.wait(10)
    # Local mode on the same artifact (the claim's files on this machine).
    artifact = _claim_path(stack) / NAME / NAME
    manifest = _deployment()
    manifest["spec"]["model"] = {"uri": f"file://{artifact}"}
    manifest["spec"].pop("requireMetrics")
    local_port = free_port()
    config = render_serve_config(
        ModelDeployment.model_validate(manifest),
        ResolvedModel(uri=f"file://{artifact}", digest=stack.digests[NAME], metrics={}),
        replica_cpus=1.0,
        http_host="127.0.0.1",
        http_port=local_port,
    )
    server = start_server(config, workdir=tmp_path / "local", num_cpus=1)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{local_port}/predict",
            data=json.dumps({"inputs": REVIEWS}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            local_answer = json.load(response)
    finally:
        server.stop()
    local = _probabilities(local_answer)
    np.testing.assert_allclose(_probabilities(cluster_answer), local, atol=1e-5)
    np.testing.assert_allclose(oip, local, atol=1e-5)
    labels = [row["label"] for row in cluster_answer["predictions"]]
    assert labels == [row["label"] for row in local_answer["predictions"]]


@pytest.mark.timeout(300)
def test_the_load_is_in_the_status_and_in_kubectl_get(stack: Stack) -> None:
    rates: list[float] = []
    with stack.load(clients=4) as load:

        def column() -> float | None:
            table = stack.cluster.kubectl("get", "md", NAME, "-n", stack.namespace).stdout
            header, row = table.splitlines()[:2]
            value = float(row.split()[header.split().index("LOAD")])
            return value if value > 0 else None

        seen = wait_for(column, timeout=60, what="a non-zero LOAD column under load")
        # The rate is Serve's own request count, which Ray exports every 10 s, taken over
        # about 30 s: read it once the window holds only this load.
        began = time.monotonic()
        while time.monotonic() - began < 45:
            rates.append(float((stack.md().get("load") or {}).get("requestsPerSecond") or 0))
            time.sleep(1)
    sent = load.result.throughput
    print(f"\nLOAD column {seen}; requests/s in the status {rates[-1]}, {sent:.0f}/s sent")
    assert load.result.failed == 0, load.result.statuses
    assert 0 < seen <= 4 + 1e-6
    assert 0.5 * sent <= rates[-1] <= 1.5 * sent, (rates, sent)
    wait_for(
        lambda: (stack.md().get("load") or {}).get("ongoingRequests", 1) == 0,
        timeout=60,
        what="the load back to 0 once the clients stopped",
    )


@pytest.mark.timeout(300)
def test_the_ray_cluster_refuses_requests_without_its_token(stack: Stack) -> None:
    cluster, ns = stack.cluster, stack.namespace
    head = f"http://{NAME}-ray-head.{ns}.svc:8265/api/serve/applications/"
    probe = (
        "import json, os, subprocess, urllib.request, urllib.error\n"
        "def get(headers):\n"
        "    try:\n"
        f"        request = urllib.request.Request({head!r}, headers=headers)\n"
        "        return urllib.request.urlopen(request, timeout=10).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code\n"
        "token = os.environ['RAY_AUTH_TOKEN']\n"
        "def gcs(token):\n"
        "    return subprocess.run(['ray', 'status', '--address', "
        f"'{NAME}-ray-head:6379'], capture_output=True, text=True, timeout=90,\n"
        "        env={**os.environ, 'RAY_AUTH_TOKEN': token})\n"
        "wrong, right = gcs('not-the-token'), gcs(token)\n"
        "print(json.dumps({'none': get({}), 'wrong': get({'Authorization': 'Bearer nope'}),\n"
        "    'right': get({'Authorization': f'Bearer {token}'}), 'gcs_wrong': wrong.returncode,\n"
        "    'gcs_right': right.returncode, 'gcs_says': (wrong.stdout + wrong.stderr)[-600:]}))\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stranger", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "containers": [
                {
                    "name": "probe",
                    "image": cluster.get_json("pods", "-n", ns, "-l", "modelplane.io/role=head")[
                        "items"
                    ][0]["spec"]["containers"][0]["image"],
                    "command": ["python", "-c", probe],
                    "env": [
                        {"name": "HOME", "value": "/tmp"},
                        {"name": "RAY_AUTH_MODE", "value": "token"},
                        {
                            "name": "RAY_AUTH_TOKEN",
                            "valueFrom": {
                                "secretKeyRef": {"name": f"{NAME}-ray-token", "key": "token"}
                            },
                        },
                    ],
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(pod))
    wait_for(
        lambda: (
            cluster.get_json("pod", "stranger", "-n", ns)["status"].get("phase")
            in ("Succeeded", "Failed")
        ),
        timeout=240,
        what="the stranger pod",
    )
    out = cluster.kubectl("logs", "stranger", "-n", ns).stdout
    answers = json.loads(out.strip().splitlines()[-1])
    assert answers["none"] in (401, 403), answers
    assert answers["wrong"] in (401, 403), answers
    assert answers["right"] == 200, answers
    # The same GCS client: with the token it reads the cluster, with another it is refused.
    assert answers["gcs_right"] == 0, answers
    assert answers["gcs_wrong"] != 0, answers
    # The operator's metrics endpoint reads, and takes no writes.
    node = cluster.node
    assert node is not None
    (operator,) = _operator_pods(cluster)
    metrics = f"http://{operator['status']['podIP']}:9090/metrics"
    for method in ("POST", "PUT", "DELETE"):
        answer = node.exec_in_netns(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                     "-X", method, metrics])  # fmt: skip
        assert answer.stdout not in ("200", "201", "204"), (method, answer.stdout)
    assert node.exec_in_netns(["curl", "-sf", metrics]).returncode == 0


@pytest.mark.timeout(600)
def test_a_worker_short_of_memory_says_oomkilled(stack: Stack) -> None:
    tiny = _deployment(resources={"cpu": "250m", "memory": "600Mi"}, replicas={"min": 1, "max": 1})
    tiny["metadata"]["name"] = "tiny"
    _apply(stack.cluster, stack.namespace, tiny)

    def oom() -> dict[str, Any] | None:
        for condition in stack.md("tiny").get("conditions", []):
            if condition.get("reason") == "OOMKilled":
                return dict(condition)
        return None

    try:
        condition = wait_for(oom, timeout=300, what="tiny's OOMKilled condition")
    finally:
        stack.cluster.kubectl("delete", "md", "tiny", "-n", stack.namespace, "--wait=false")
    print(f"\nOOMKilled: {condition['message'][:300]}")
    assert re.search(r"memory", condition["message"], re.IGNORECASE), condition


def _print_figures(title: str, figures: dict[str, Any]) -> None:
    print(f"\n{title}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in figures.items()))  # fmt: skip


@pytest.mark.timeout(900)
def test_a_load_step_adds_worker_pods_and_the_calm_removes_the_idle_one(stack: Stack) -> None:
    step = load_step(
        stack.cluster, stack.namespace, NAME, body=BODY, minimum=1, maximum=2, step_s=45
    )
    _print_figures("scaling on real pods (no spare)", step.figures)
    figures = step.figures
    assert figures["failed"] == 0, (step.step.statuses, step.calm.statuses)
    for key in ("decision_s", "workers_wanted_s", "pod_running_s", "replica_running_s"):
        assert figures[key] is not None, figures
    assert figures["decision_s"] <= figures["workers_wanted_s"] <= figures["replica_running_s"]
    assert figures["max_load_seen"] > 0
    # The scale-down removed a worker pod the operator had marked idle first.
    assert len(step.removed) == 1, step.removed
    assert step.removed <= step.idle_marked, (step.removed, step.idle_marked)
    stack.ready(replicas=1)


@pytest.mark.timeout(600)
def test_a_new_model_rolls_out_in_place_and_a_broken_one_leaves_the_old_serving(
    stack: Stack,
) -> None:
    head = stack.pods("head")[0]["metadata"]["uid"]
    with stack.load(clients=2) as load:
        stack.patch({"model": {"fromTraining": "quickstart-v2"}})
        wait_for(
            lambda: stack.md().get("model", {}).get("digest") == stack.digests["quickstart-v2"],
            timeout=120,
            what="the new model in the status",
        )
        stack.ready(replicas=1)
        stack.patch(
            {"model": {"uri": "pvc://models/absent", "fromTraining": None}, "requireMetrics": None}
        )

        def degraded() -> dict[str, Any] | None:
            status = stack.md()
            ready = next(c for c in status.get("conditions", []) if c["type"] == "Ready")
            return ready if status.get("phase") == "Degraded" else None

        condition = wait_for(degraded, timeout=300, what="the broken model's Degraded")
        time.sleep(3)  # requests keep flowing to the old model meanwhile
    assert load.result.failed == 0, load.result.statuses
    assert condition["reason"] == "ApplicationError", condition
    assert "absent" in condition["message"], condition
    assert stack.pods("head")[0]["metadata"]["uid"] == head  # in place: same Ray cluster
    stack.patch({"model": {"fromTraining": NAME, "uri": None}, "requireMetrics": {"accuracy": 0.8}})
    stack.ready(replicas=1)


def _no_reset(result: LoadResult) -> None:
    """Every request succeeded or got our 503 with Retry-After: no connection reset, no
    hang (the load's 30 s timeout counts as status 0), no ingress 503."""
    assert result.statuses.get(0, 0) == 0, result.statuses
    assert result.bare_503 == 0, result.statuses
    assert set(result.statuses) <= {200, 503}, result.statuses


@pytest.mark.timeout(600)
def test_a_worker_pod_deleted_under_load_loses_no_request(stack: Stack) -> None:
    stack.patch({"replicas": {"min": 2, "max": 2}})
    stack.ready(replicas=2)
    victim = stack.pods("worker")[0]["metadata"]["name"]
    with stack.load(clients=8) as load:
        time.sleep(3)
        stack.cluster.kubectl("delete", "pod", victim, "-n", stack.namespace, "--wait=false")
        wait_for(
            lambda: victim not in {p["metadata"]["name"] for p in stack.pods("worker")},
            timeout=120,
            what=f"{victim} gone",
        )
        stack.ready(replicas=2)
    print(f"\nworker deleted under load: {load.result.statuses}")
    stack.settled(replicas=2)  # the next test compares pods before and after
    _no_reset(load.result)
    assert load.result.ok > 0


def _container_pid(stack: Stack, pod: dict[str, Any]) -> int:
    """The host pid of the pod's container's main process (for a SIGKILL from outside, as
    the kernel's OOM killer would deliver it: PID 1 ignores SIGKILL from inside)."""
    node = stack.cluster.node
    assert node is not None
    (status,) = pod["status"]["containerStatuses"]
    container = status["containerID"].removeprefix("containerd://")
    tasks = node.ctr("tasks", "ls").stdout.decode()
    for line in tasks.splitlines():
        fields = line.split()
        if fields and fields[0] == container:
            return int(fields[1])
    raise AssertionError(f"no task for container {container} in {tasks}")


def _active_operator(stack: Stack) -> tuple[str, dict[str, Any]]:
    """(pod name, peers) of the replica that leads: the highest priority in the peering
    object (kopf's identity is the pod's name, POD_ID)."""
    peering = stack.cluster.get_json("clusterkopfpeering", OPERATOR)
    peers: dict[str, Any] = peering.get("status") or {}
    return max(peers, key=lambda p: peers[p]["priority"]), peers


def _log_time(line: str) -> float:
    stamp = line.split(" ", 1)[0]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.timeout(900)
def test_the_active_operator_sigkilled_under_load_the_standby_takes_over_without_churn(
    stack: Stack,
) -> None:
    cluster = stack.cluster
    stack.settled(replicas=2)
    install_chart(cluster, "--set", "replicaCount=2", "--set", "peering.enabled=true")
    try:
        _take_over_without_churn(stack)
    finally:
        # One operator again whatever happened above, so the next test starts from the
        # chart's defaults rather than from this test's failure.
        install_chart(cluster, "--set", "replicaCount=1")
        cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}",
            "--timeout=300s",
        )  # fmt: skip


def _take_over_without_churn(stack: Stack) -> None:
    cluster = stack.cluster
    cluster.kubectl(
        "-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}", "--timeout=300s"
    )
    wait_for(
        lambda: len(_operator_pods(cluster)) == 2 and len(_active_operator(stack)[1]) == 2,
        timeout=120,
        what="two operator replicas in the peering object",
    )
    active, _ = _active_operator(stack)
    (standby,) = [
        p["metadata"]["name"] for p in _operator_pods(cluster) if p["metadata"]["name"] != active
    ]
    pods = {p["metadata"]["name"]: p for p in _operator_pods(cluster)}

    def templates() -> dict[str, Any]:
        return {
            kind: cluster.get_json("deployment", f"{NAME}-ray-{kind}", "-n", stack.namespace)[
                "spec"
            ]["template"]
            for kind in ("head", "worker")
        }

    before = templates()
    head_generation = cluster.get_json("deployment", f"{NAME}-ray-head", "-n", stack.namespace)[
        "metadata"
    ]["generation"]
    ray_pods = {p["metadata"]["uid"] for p in stack.pods("head") + stack.pods("worker")}
    with stack.load(clients=4) as load:
        time.sleep(3)
        killed_at = time.time()
        os.kill(_container_pid(stack, pods[active]), signal.SIGKILL)

        def resumed() -> float | None:
            logs = cluster.kubectl(
                "logs", "-n", OPERATOR_NAMESPACE, standby, "--timestamps", check=False
            ).stdout
            for line in logs.splitlines():
                if "Resuming operations" in line and _log_time(line) > killed_at:
                    return _log_time(line)
            return None

        took_over = wait_for(resumed, timeout=120, what=f"{standby} to resume") - killed_at
        time.sleep(5)  # the new leader's first passes over the deployment
        # Adopted without churn: the head not re-applied (a Deployment's generation moves
        # with any change to its spec or annotations), no pod template changed, no Ray pod
        # replaced. The workers may grow meanwhile: the load is real and Serve scales on it.
        head = cluster.get_json("deployment", f"{NAME}-ray-head", "-n", stack.namespace)
        assert head["metadata"]["generation"] == head_generation
        assert templates() == before
        assert ray_pods <= {p["metadata"]["uid"] for p in stack.pods("head") + stack.pods("worker")}
        # The new leader acts: a spec change reaches the worker Deployment.
        stack.patch({"replicas": {"min": 1, "max": 2}})
        stack.ready(replicas=1, timeout=180)
    print(f"\noperator takeover after SIGKILL of the active replica: {took_over:.1f} s")
    assert took_over < 15 + 5, took_over  # within the peering lifetime, and in fact the restart
    assert load.result.failed == 0, load.result.statuses


@pytest.mark.timeout(600)
def test_the_head_pod_deleted_the_deployment_recovers_to_ready(stack: Stack) -> None:
    # The previous test's load has ended: what it scaled up scales down first, so the
    # count to come back to is the settled one, not whatever the load left running.
    replicas = stack.deployment_min()
    stack.settled(replicas=replicas)
    (head,) = stack.pods("head")
    began = time.monotonic()
    stack.cluster.kubectl("delete", "pod", head["metadata"]["name"], "-n", stack.namespace,
                          "--wait=false")  # fmt: skip
    wait_for(lambda: stack.md().get("phase") != "Ready", timeout=60, what="the loss seen")
    stack.ready(replicas=replicas, timeout=420)
    took = time.monotonic() - began
    print(f"\nhead pod deleted: Ready again with {replicas} replica(s) after {took:.1f} s")
    curl = stack.cluster.node.exec_in_netns(  # type: ignore[union-attr]
        ["curl", "-sf", "-X", "POST", stack.url(), "-H", "content-type: application/json",
         "-d", json.dumps({"inputs": REVIEWS})],
    )  # fmt: skip
    assert curl.returncode == 0, curl.stderr


# -- a language model --------------------------------------------------------------------

LM = "tiny-lm"
CHAT = {
    "what does the cat do": "the cat sat on a mat",
    "what does the dog do": "the dog ran far away",
    "what does the fox do": "the red fox jumps",
}
"""What the tiny llama learns to answer."""
POD_UID = 1000
"""The user our pods run as (the chart's runAsUser), who owns what a training pod writes."""


def _train_chat_llama(claim: Path, tmp_path: Path) -> Path:
    """tests/runtime's tiny llama, trained in this process (about 3 s) until it answers
    CHAT word for word, with the byte-level BPE it trains and ChatML's chat template.
    Its artifact goes into the claim's folder at `claim/LM`, owned by the pods' user as a
    ModelTraining's pod would have left it (the trainer writes the weights 0600)."""
    data = tmp_path / "chat.jsonl"
    turns = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for _ in range(16)
        for q, a in CHAT.items()
    ]
    data.write_text("".join(json.dumps(t) + "\n" for t in turns))
    config = make_lm_config(
        tmp_path,
        name=LM,
        params={**TINY_LLAMA, "max_length": 64},
        data=DataConfig(train_uri=f"file://{data}", validation_split=0.25),
        optim=OptimConfig(epochs=30, batch_size=8, learning_rate=1e-2, seed=1),
        output_uri=f"file://{claim}",
    )
    Trainer(config, env=DistEnv()).fit()
    artifact = claim / LM
    for path in [artifact, *artifact.rglob("*")]:
        os.chown(path, POD_UID, POD_UID)
    return artifact


@torch.no_grad()
def _generate(model: Any, tokenizer: Any, ids: list[int], max_new_tokens: int) -> str:
    """transformers' own greedy `generate`: the reference the replica must match."""
    inputs = torch.tensor([ids])
    output = model.generate(
        inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    text: str = tokenizer.decode(output[0][len(ids) :], skip_special_tokens=True)
    return text


def _ask_with_openai(base_url: str, question: str, prompt: str) -> dict[str, Any]:
    """The official client's calls, made from the thread they run in: the model list, a
    chat answer whole and streamed (greedy), and a completion of `prompt`."""
    with openai.OpenAI(
        base_url=base_url, api_key="unused", max_retries=0, timeout=120
    ) as client:  # closed: an open client's sockets warn, and warnings are errors here
        return _openai_calls(client, question, prompt)


def _openai_calls(client: openai.OpenAI, question: str, prompt: str) -> dict[str, Any]:
    messages: list[Any] = [{"role": "user", "content": question}]
    whole = client.chat.completions.create(
        model=LM, messages=messages, temperature=0, max_tokens=24
    )
    chunks = list(
        client.chat.completions.create(
            model=LM, messages=messages, temperature=0, max_tokens=24, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    completion = client.completions.create(model=LM, prompt=prompt, temperature=0, max_tokens=24)
    return {
        "models": [m.id for m in client.models.list()],
        "whole": whole,
        "chunks": chunks,
        "completion": completion,
    }


@pytest.mark.timeout(900)
def test_a_language_model_answers_the_openai_api_on_real_pods(
    real_cluster: LocalCluster, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A tiny llama trained here, on the `models` claim, deployed with spec.generation:
    the official `openai` client (whole and streamed) and `curl -N` reach it through its
    Service from inside the cluster's network, and get what transformers' `generate`
    gives on the same artifact."""
    cluster, node = real_cluster, real_cluster.node
    assert node is not None
    # The module's other tests may hold the chart already; only what this test installed
    # goes with it.
    ours = cluster.helm("status", RELEASE, "-n", OPERATOR_NAMESPACE, check=False).returncode != 0
    install_chart(cluster)
    namespaces = _test_namespace(cluster, request, logs=True)
    namespace = next(namespaces)
    try:
        cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}",
            "--timeout=180s",
        )  # fmt: skip
        cluster.kubectl(
            "apply", "-n", namespace, "-f", str(EXAMPLES / "cluster" / "models-pvc.yaml")
        )
        stack = Stack(cluster, namespace, digests={})
        wait_for(
            lambda: (
                cluster.get_json("pvc", "models", "-n", namespace)["status"].get("phase") == "Bound"
            ),
            timeout=60,
            what="the models claim bound",
        )
        began = time.monotonic()
        artifact = _train_chat_llama(_claim_path(stack), tmp_path)
        print(f"\n{LM} trained here in {time.monotonic() - began:.1f} s")
        manifest: dict[str, Any] = yaml.safe_load((EXAMPLES / "llm-deployment.yaml").read_text())
        manifest["metadata"]["name"] = LM
        manifest["spec"].update(
            {
                "model": {"uri": f"pvc://models/{LM}"},
                "generation": {"maxSequences": 4, "maxTokens": 32},
                "replicas": {"min": 1, "max": 1},
                "resources": WORKER_RESOURCES,
            }
        )
        manifest["spec"].pop("autoscaling", None)
        began = time.monotonic()
        _apply(cluster, namespace, manifest)
        status = stack.ready(replicas=1, timeout=600, name=LM)
        print(f"{LM} Ready on real pods {time.monotonic() - began:.1f} s after it was applied")
        assert status["engine"] == GENERATION_ENGINE, status
        _answers_the_openai_api(stack, artifact, node)
    finally:
        for _ in namespaces:
            pass
        cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=180s",
                        check=False)  # fmt: skip
        if ours:
            cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)


def _answers_the_openai_api(stack: Stack, artifact: Path, node: RealNode) -> None:
    tokenizer: Any = AutoTokenizer.from_pretrained(artifact)
    model: Any = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32)
    model.eval()
    question, answer = "what does the dog do", CHAT["what does the dog do"]
    messages = [{"role": "user", "content": question}]
    chat_ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    expected = _generate(model, tokenizer, list(chat_ids), 24)
    assert expected == answer  # the model learnt it: the texts compared below mean something
    # A completion of the chat template's text for another question, as a client that
    # formats its own prompts sends it.
    prompt = str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "what does the cat do"}],
            add_generation_prompt=True,
            tokenize=False,
        )
    )
    completed = _generate(model, tokenizer, tokenizer.encode(prompt), 24)
    assert completed == CHAT["what does the cat do"]

    base_url = service_url(stack.cluster, stack.namespace, LM, "/v1")
    with ThreadPoolExecutor(
        1, initializer=enter_netns, initargs=(netns_path(stack.cluster),)
    ) as pool:
        got = pool.submit(_ask_with_openai, base_url, question, prompt).result()
    assert got["models"] == [LM]
    whole = got["whole"].choices[0]
    assert whole.message.content == expected
    assert whole.finish_reason == "stop"
    assert got["whole"].usage.prompt_tokens == len(chat_ids)
    chunks = got["chunks"]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == expected
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # by token
    assert chunks[-1].usage.completion_tokens == got["whole"].usage.completion_tokens
    assert got["completion"].choices[0].text == completed

    # curl -N from inside the node's network namespace, as from a pod.
    body = {"model": LM, "messages": messages, "temperature": 0, "max_tokens": 24, "stream": True}
    curl = node.exec_in_netns(
        ["curl", "-sN", "--fail-with-body", f"{base_url}/chat/completions",
         "-H", "content-type: application/json", "-d", json.dumps(body)],
        timeout=120,
    )  # fmt: skip
    assert curl.returncode == 0, curl.stdout + curl.stderr
    events = [e for e in curl.stdout.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), curl.stdout
    assert events[-1] == "data: [DONE]", curl.stdout
    deltas = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert deltas[0]["choices"][0]["delta"]["role"] == "assistant"
    assert deltas[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in deltas) == expected
    print(f"{LM} answered {question!r} with {expected!r}, whole, streamed and through curl -N")
