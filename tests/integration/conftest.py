"""Fixtures for tests against the local control plane.

Two clusters per test session, each started on first use and stopped at the end
(binaries and images are built or taken from the cache first): `cluster`, whose nodes
kwok simulates (fast, many nodes, GPUs), and `real_cluster`, whose one node is a real
kubelet running the images built from this tree. One namespace per test, and a dump of
the namespace's objects and events (and, on the real node, its pods' logs) when a test
fails.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import yaml

from modelplane_harness.cluster import ClusterError, LocalCluster, build_binaries, eprint
from modelplane_harness.images import ImageBuildError, build_images, import_image
from modelplane_harness.node import NodeError
from modelplane_harness.operator import (
    OperatorProcess,
    install_chart,
    service_account_kubeconfig,
)
from modelplane_harness.waiting import wait_for
from tests.factories import ROOT


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    binaries = build_binaries(ROOT)
    workdir = tmp_path_factory.mktemp("cluster")
    local = LocalCluster(workdir, binaries)
    try:
        local.start(log=eprint)
    except ClusterError as exc:
        pytest.fail(f"the local control plane did not start: {exc}\nlogs: {local.logs}")
    yield local
    local.stop()
    eprint(f"stopped; logs kept in {local.logs}")


@pytest.fixture(scope="session")
def crds(cluster: LocalCluster) -> LocalCluster:
    """The cluster with the chart installed as users install it (`helm install`): the CRDs
    Established, the operator's ServiceAccount and RBAC, its Deployment (whose pod kwok
    only pretends to run; the tests run the operator themselves with that identity)."""
    install_chart(cluster)
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/modeltrainings.modelplane.io",
        "crd/modeldeployments.modelplane.io",
    )
    return cluster


def _test_namespace(
    cluster: LocalCluster, request: pytest.FixtureRequest, *, logs: bool = False, kwok: bool = False
) -> Iterator[str]:
    """A fresh namespace for one test, dumped to stderr if the test fails (with every
    container's log when `logs`: pods that really ran have something to say)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        what=f"the default service account of {name}",
    )
    yield name
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        dump = cluster.kubectl(
            "get", "all,events,configmaps,pvc,modeltrainings,modeldeployments", "-n", name,
            "-o", "yaml", check=False,
        )  # fmt: skip
        text = dump.stdout + dump.stderr
        if logs:
            pods = cluster.kubectl("get", "pods", "-n", name, "-o", "name", check=False)
            for pod in pods.stdout.split():
                log = cluster.kubectl(
                    "logs", "-n", name, pod, "--all-containers", "--tail=60", check=False
                )
                text += f"\n--- logs of {pod} ---\n{log.stdout}{log.stderr}"
        path = Path(cluster.workdir) / f"dump-{name}.yaml"
        path.write_text(text)
        print(f"\n--- objects and events of {name} (also in {path}) ---\n{text}", file=sys.stderr)
    if kwok:
        _release_job_pods(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _release_job_pods(cluster: LocalCluster, namespace: str) -> None:
    """Let the namespace's Job pods go with it. A kubelet kills a deleted pod's containers
    and the Job controller then drops its tracking finalizer; kwok kills nothing, so a Job
    pod still running when its namespace was deleted kept the finalizer, and its node's
    GPUs, for the rest of the session (a later test's gang could not be scheduled). Drop
    the finalizer first, as the Job controller would once the pod ended."""
    listed = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False)
    pods = json.loads(listed.stdout).get("items", []) if listed.returncode == 0 else []
    for pod in pods:
        if pod["metadata"].get("finalizers"):
            cluster.kubectl(
                "patch", "pod", pod["metadata"]["name"], "-n", namespace, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the kwok cluster for one test."""
    yield from _test_namespace(cluster, request, kwok=True)


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster whose one node is real (containerd, the kubelet, kube-proxy and CoreDNS in
    a network namespace of their own) and holds the operator and runtime images built from
    this tree. Every test that runs our pods shares it: starting a node is cheap, but
    importing the runtime image into a fresh containerd is not."""
    images = build_images(["operator", "runtime"])
    local = LocalCluster(
        tmp_path_factory.mktemp("real-cluster"), build_binaries(ROOT), real_node=True
    )
    try:
        local.start(log=eprint)
        assert local.node is not None
        for image in images:
            began = time.monotonic()
            imported = import_image(image, containerd_address=local.node.containerd_address)
            state = "imported" if imported else "already held"
            eprint(f"{image.ref} {state} ({time.monotonic() - began:.1f} s)")
    except (ClusterError, NodeError, ImageBuildError) as exc:
        local.stop()
        pytest.fail(f"the real-node cluster did not start: {exc}\nlogs: {local.logs}")
    except BaseException:
        local.stop()
        raise
    yield local
    local.stop()
    eprint(f"real-node cluster stopped; logs kept in {local.logs}")


@pytest.fixture
def real_namespace(real_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the real-node cluster for one test."""
    yield from _test_namespace(real_cluster, request, logs=True)


@pytest.fixture(scope="session")
def operator(crds: LocalCluster) -> Iterator[OperatorProcess]:
    """The operator for the whole session, with only the chart's ServiceAccount's
    permissions, so a verb missing from the chart's RBAC fails the tests. Its log is beside
    the cluster's logs."""
    kubeconfig = service_account_kubeconfig(crds, crds.workdir / "operator.kubeconfig")
    process = OperatorProcess(kubeconfig, crds.logs / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def paused_operator(operator: OperatorProcess) -> Iterator[None]:
    """The session operator stopped for one test, which runs its own."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


@pytest.fixture
def models_pvc(cluster: LocalCluster, namespace: str) -> str:
    """A bound PersistentVolumeClaim `models` in the test namespace (pods need it)."""
    volume = f"{namespace}-models"[:63]
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "hostPath": {"path": f"/tmp/{volume}"},
                "claimRef": {"namespace": namespace, "name": "models"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    cluster.kubectl(
        "apply", "-f", "-", input_text="---\n".join(yaml.safe_dump(m) for m in manifests)
    )
    return "models"
