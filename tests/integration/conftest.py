"""Fixtures for tests against the local control plane.

One cluster per test session (started here, stopped at the end; binaries are built or
taken from the cache first), one namespace per test, and a dump of the namespace's
objects and events when a test fails.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import yaml

from modelplane_harness.cluster import ClusterError, LocalCluster, build_binaries, eprint
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


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, dumped to stderr if the test fails."""
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
            "get",
            "all,events,configmaps,modeltrainings,modeldeployments",
            "-n",
            name,
            "-o",
            "yaml",
            check=False,
        )
        path = Path(cluster.workdir) / f"dump-{name}.yaml"
        path.write_text(dump.stdout + dump.stderr)
        print(
            f"\n--- objects and events of {name} (also in {path}) ---\n{dump.stdout}",
            file=sys.stderr,
        )
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


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
