"""The Helm chart: lint, render, schema, install, least privilege, uninstall.

The session's `crds` fixture installs the chart (release `modelplane` in
`modelplane-system`) and the session operator runs with a token of the chart's
ServiceAccount, so every integration test doubles as proof that the chart's RBAC is
enough. The tests here show it is no broader than needed, that the namespaced variant
works, and that uninstalling leaves nothing behind but the CRDs.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_harness.cluster import LocalCluster
from modelplane_harness.operator import (
    OPERATOR_NAMESPACE,
    RELEASE,
    OperatorProcess,
    chart_path,
    install_chart,
    service_account_kubeconfig,
)
from modelplane_harness.waiting import wait_for
from tests.factories import EXAMPLES, ROOT, make_training

CHART = chart_path()
NAMESPACED_VALUES = CHART / "values-namespaced.yaml"
SA = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}-operator"


def template(cluster: LocalCluster, *values: str) -> list[dict[str, Any]]:
    rendered = cluster.helm("template", "mp", str(CHART), "-n", OPERATOR_NAMESPACE, *values)
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.mark.parametrize(
    "values", [[], ["-f", str(NAMESPACED_VALUES)]], ids=["default", "namespaced"]
)
def test_helm_lint_passes(cluster: LocalCluster, values: list[str]) -> None:
    result = cluster.helm("lint", "--strict", str(CHART), *values, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "values", [[], ["-f", str(NAMESPACED_VALUES)]], ids=["default", "namespaced"]
)
def test_rendered_manifests_pass_the_api_servers_schema(
    crds: LocalCluster, values: list[str]
) -> None:
    docs = template(crds, *values)
    for namespace in {d["metadata"].get("namespace") for d in docs} - {None}:
        crds.kubectl("create", "namespace", namespace, check=False)
    # Strict field validation: an unknown or misplaced field is an error, not a warning.
    result = crds.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input_text=yaml.safe_dump_all(docs),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in docs}
    if values:
        assert {"Role", "RoleBinding", "KopfPeering"} <= kinds
    else:
        assert {"ClusterRole", "ClusterRoleBinding", "Deployment", "Service"} <= kinds


def test_the_namespaced_values_grant_roles_in_the_listed_namespaces_only(
    cluster: LocalCluster,
) -> None:
    docs = template(cluster, "-f", str(NAMESPACED_VALUES))
    roles = {(d["kind"], d["metadata"].get("namespace")) for d in docs if "Role" in d["kind"]}
    assert ("Role", "ml-team-a") in roles
    assert ("Role", "ml-team-b") in roles
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    # Only what cannot be namespaced: listing CRDs and the cluster-wide peering object.
    assert [r["resources"] for r in cluster_role["rules"]] == [["customresourcedefinitions"]]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml-team-a" in args
    assert "--namespace=ml-team-b" in args
    assert any(a.startswith("--peering=") for a in args)
    assert "--peering-lifetime=15" in args
    assert deployment["spec"]["replicas"] == 2


def test_the_operator_pod_is_non_root_read_only_and_probed(cluster: LocalCluster) -> None:
    (deployment,) = [d for d in template(cluster) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODELPLANE_RUNTIME_IMAGE"] == "ghcr.io/modelplane/runtime:0.1.0-cuda"
    cpu = template(cluster, "--set", "runtime.image.flavor=cpu")
    (cpu_deployment,) = [d for d in cpu if d["kind"] == "Deployment"]
    env = {
        e["name"]: e["value"]
        for e in cpu_deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELPLANE_RUNTIME_IMAGE"].endswith(":0.1.0-cpu")


def test_peered_replicas_name_themselves_after_their_pod_and_share_the_lifetime(
    cluster: LocalCluster,
) -> None:
    """POD_ID is kopf's peering identity: a container restarted in its pod replaces its
    dead predecessor's record at once instead of blocking the standby for a lifetime."""
    values = ["--set", "peering.enabled=true,peering.lifetime=20"]
    (deployment,) = [d for d in template(cluster, *values) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--peering-lifetime=20" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (single,) = [d for d in template(cluster) if d["kind"] == "Deployment"]
    (container,) = single["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--peering") for a in container["args"])
    assert "POD_ID" not in {e["name"] for e in container["env"]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "imagee.tag=1"], "imagee"),
        (["--set", "runtime.image.flavor=rocm"], "flavor"),
        (["--set", "replicaCount=2"], "needs peering.enabled=true"),
        (["--set", "peering.enabled=true,peering.lifetime=10"], "peering/lifetime"),
        (["--set", "watchNamespaces[0]=Not_A_Namespace"], "watchNamespaces"),
        (
            ["--set", "metrics.serviceMonitor.enabled=true,metrics.service.enabled=false"],
            "metrics.service.enabled",
        ),
    ],
    ids=[
        "misspelt-key",
        "unknown-flavor",
        "replicas-without-peering",
        "peering-lifetime-too-short-for-kopfs-keepalive",
        "bad-namespace",
        "monitor-without-service",
    ],
)
def test_bad_values_are_refused_with_the_reason(
    cluster: LocalCluster, values: list[str], message: str
) -> None:
    result = cluster.helm("template", "mp", str(CHART), *values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_service_monitor_renders_when_asked(cluster: LocalCluster) -> None:
    docs = template(cluster, "--set", "metrics.serviceMonitor.enabled=true")
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_helm_install_created_the_operator_and_its_rbac(crds: LocalCluster) -> None:
    deployment = crds.get_json("deployment", f"{RELEASE}-operator", "-n", OPERATOR_NAMESPACE)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    role = crds.get_json("clusterrole", f"{RELEASE}-operator")
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert ("modelplane.io", "modeltrainings/status") in granted
    release = crds.helm("status", RELEASE, "-n", OPERATOR_NAMESPACE, "-o", "json").stdout
    assert json.loads(release)["info"]["status"] == "deployed"


def can_i(cluster: LocalCluster, *args: str, account: str = SA) -> bool:
    result = cluster.kubectl("auth", "can-i", *args, f"--as={account}", check=False)
    return result.stdout.strip() == "yes"


def test_the_operator_account_can_do_what_the_code_does_and_nothing_more(
    crds: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    assert can_i(
        crds, "patch", "modeltrainings.modelplane.io", "--subresource=status", "-n", namespace
    )
    assert can_i(crds, "create", "jobs.batch", "-n", namespace)
    # The operator never writes spec (GitOps sees no drift), never reads ConfigMaps back,
    # never deletes Secrets or Deployments, and has no business with nodes.
    assert not can_i(crds, "update", "modeltrainings.modelplane.io", "-n", namespace)
    assert not can_i(crds, "patch", "modeldeployments.modelplane.io", "-n", namespace)
    assert not can_i(crds, "delete", "secrets", "-n", namespace)
    assert not can_i(crds, "list", "secrets", "-n", namespace)
    assert not can_i(crds, "delete", "deployments.apps", "-n", namespace)
    assert not can_i(crds, "create", "pods", "-n", namespace)
    assert not can_i(crds, "list", "nodes")
    # And a real request with the account's own token is refused by the API server.
    kubeconfig = service_account_kubeconfig(crds, tmp_path / "sa.kubeconfig")
    crds.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(make_training(name="t"))
    )
    refused = crds.kubectl(
        f"--kubeconfig={kubeconfig}",
        "patch", "modeltraining", "t", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"resources": {"nodes": 2}}}),
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr.lower(), refused.stderr


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_the_session_operator_reconciles_every_example_with_the_charts_account(
    crds: LocalCluster, operator: OperatorProcess, namespace: str, models_pvc: str
) -> None:
    # (phase, Ready's reason) of each example on kwok, whose pods run but never finish:
    # trainings stay Running; deployments from a training wait for it; a uri deployment
    # (a built-in model's too) rolls out (its model card is the replica's to judge, not
    # the operator's) and waits for the Ray head's dashboard, which kwok's head never
    # serves.
    expected = {
        "ModelTraining/bert-base": ("Running", "Training"),
        "ModelTraining/bert-sentiment": ("Running", "Training"),
        "ModelTraining/cancer": ("Running", "Searching"),
        "ModelTraining/digits": ("Running", "Training"),
        "ModelTraining/quickstart": ("Running", "Training"),
        "ModelTraining/sentiment": ("Running", "Training"),
        "ModelTraining/smollm2-chat": ("Running", "Training"),
        "ModelTraining/tiny-llama": ("Running", "Training"),
        "ModelDeployment/cancer": ("Pending", "WaitingForTraining"),
        "ModelDeployment/digits": ("Progressing", "RollingOut"),
        "ModelDeployment/quickstart": ("Pending", "WaitingForTraining"),
        "ModelDeployment/sentiment": ("Pending", "WaitingForTraining"),
        "ModelDeployment/smollm2": ("Progressing", "RollingOut"),
    }
    examples = sorted(EXAMPLES.glob("*.yaml"))
    for path in examples:
        crds.kubectl("apply", "-n", namespace, "-f", str(path))

    def phases() -> dict[str, tuple[str, str]] | None:
        got = {}
        for kind in ("modeltrainings", "modeldeployments"):
            for item in crds.get_json(kind, "-n", namespace)["items"]:
                status = item.get("status") or {}
                if status.get("observedGeneration") != item["metadata"]["generation"]:
                    return None
                ready = next(c for c in status["conditions"] if c["type"] == "Ready")
                got[f"{item['kind']}/{item['metadata']['name']}"] = (
                    status["phase"],
                    ready["reason"],
                )
        return got if len(got) == len(examples) else None

    # Phases move on (a training's pods start running): wait for the expected ones; on a
    # timeout, the failure shows how the last phases seen differ.
    seen: dict[str, tuple[str, str]] = {}

    def arrived() -> bool:
        seen.update(phases() or {})
        return seen == expected

    try:
        wait_for(arrived, timeout=90, what="every example's expected phase")
    except AssertionError:
        assert seen == expected
        raise
    text = metrics(operator.metrics_port)
    assert 'modelplane_reconcile_duration_seconds_count{kind="ModelTraining"}' in text
    assert 'modelplane_resources{kind="ModelDeployment"' in text
    # Structured logs: JSON lines, and the ones written during a pass name the resource.
    lines = [
        json.loads(line)
        for line in operator.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    assert lines, "the operator wrote no JSON log lines"


@pytest.fixture
def scoped_release(crds: LocalCluster, paused_operator: None) -> Iterator[tuple[str, str]]:
    """A second release watching one namespace, in its own operator namespace."""
    watched, other = "scoped-watched", "scoped-other"
    for name in (watched, other):
        crds.kubectl("create", "namespace", name, check=False)
    install_chart(
        crds, "--set", f"watchNamespaces[0]={watched}", release="scoped", namespace="scoped-system"
    )
    yield watched, other
    crds.helm("uninstall", "scoped", "-n", "scoped-system", check=False)
    for name in (watched, other):
        crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_a_namespaced_release_reconciles_its_namespace_only_and_uninstalls_cleanly(
    crds: LocalCluster, scoped_release: tuple[str, str], tmp_path: Path
) -> None:
    watched, other = scoped_release
    account = "system:serviceaccount:scoped-system:scoped-operator"
    assert can_i(crds, "list", "jobs", "-n", watched, account=account)
    assert not can_i(crds, "list", "jobs", "-n", other, account=account)
    kubeconfig = service_account_kubeconfig(
        crds, tmp_path / "scoped.kubeconfig", namespace="scoped-system", account="scoped-operator"
    )
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", f"--namespace={watched}")
    operator.start()
    try:
        for name in (watched, other):
            crds.kubectl(
                "apply", "-n", name, "-f", "-", input_text=yaml.safe_dump(make_training(name="t"))
            )
        wait_for(
            lambda: (crds.get_json("mt", "t", "-n", watched).get("status") or {}).get("phase"),
            timeout=60,
            what="the watched namespace's training to get a phase",
        )
        assert crds.get_json("job", "-n", watched)["items"], "no Job in the watched namespace"
        assert not crds.get_json("mt", "t", "-n", other).get("status")
        assert not crds.get_json("job", "-n", other)["items"]
    finally:
        operator.stop()
    crds.helm("uninstall", "scoped", "-n", "scoped-system")
    selector = "app.kubernetes.io/instance=scoped"

    def left() -> list[str]:
        return crds.kubectl(
            "get", "all,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings",
            "-A", "-l", selector, "-o", "name",
        ).stdout.split()  # fmt: skip

    # The pods go last: the garbage collector removes them after their ReplicaSet.
    wait_for(lambda: left() == [], timeout=60, what="nothing left of the scoped release")
    # CRDs stay (Helm never deletes a chart's crds/), and so do the users' resources.
    assert crds.get_json("mt", "t", "-n", watched)["metadata"]["name"] == "t"
    assert crds.kubectl("get", "crd", "modeltrainings.modelplane.io", check=False).returncode == 0


def test_the_gitops_example_builds_and_the_api_server_accepts_it(crds: LocalCluster) -> None:
    rendered = crds.kubectl("kustomize", str(ROOT / "examples" / "gitops")).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    assert sorted(kinds) == [
        "ModelDeployment",
        "ModelTraining",
        "Namespace",
        "PersistentVolumeClaim",
    ]
    crds.kubectl("create", "namespace", "ml-sentiment", check=False)
    result = crds.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-",
        input_text=rendered, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def active(operator: OperatorProcess) -> bool:
    """Whether kopf's peering lets this operator reconcile: it logs "Resuming" when it
    starts unopposed or takes over, "Pausing" when a higher priority appears; one that
    meets a higher priority at start stays paused without a word."""
    text = operator.log_path.read_text() if operator.log_path.exists() else ""
    return text.rfind("Resuming operations") > text.rfind("Pausing operations in favour of")


def one_active(replicas: list[OperatorProcess]) -> OperatorProcess | None:
    running = [r for r in replicas if active(r)]
    return running[0] if len(running) == 1 else None


def transitions(operator: OperatorProcess) -> int:
    text = operator.log_path.read_text() if operator.log_path.exists() else ""
    return text.count("Resuming operations") + text.count("Pausing operations")


def settled_leader(replicas: list[OperatorProcess], *, quiet_s: float = 10.0) -> OperatorProcess:
    """The one active replica once every replica logs and none has resumed or paused for
    `quiet_s`: at start one may resume alone and pause when its peer's record appears a
    few seconds later (on 2 busy cores, more than 3 s later was seen)."""
    last: tuple[int, ...] = ()
    since = time.monotonic()

    def settled() -> OperatorProcess | None:
        nonlocal last, since
        state = tuple(transitions(r) for r in replicas)
        if state != last:
            last, since = state, time.monotonic()
        started = all(r.log_path.exists() and r.log_path.stat().st_size for r in replicas)
        leader = one_active(replicas)
        return leader if started and time.monotonic() - since >= quiet_s else None

    return wait_for(settled, timeout=120, what="one settled active replica")


def test_two_peered_replicas_reconcile_once_and_the_standby_takes_over(
    crds: LocalCluster, paused_operator: None, namespace: str, tmp_path: Path
) -> None:
    install_chart(crds, "--set", "peering.enabled=true", release="ha", namespace="ha-system")
    try:
        kubeconfig = service_account_kubeconfig(
            crds, tmp_path / "ha.kubeconfig", namespace="ha-system", account="ha-operator"
        )
        replicas = [
            OperatorProcess(kubeconfig, tmp_path / f"operator-{i}.log", "--peering=ha-operator")
            for i in range(2)
        ]
        for replica in replicas:
            replica.start()
        try:
            leader = settled_leader(replicas)
            (standby,) = [r for r in replicas if r is not leader]

            def phase_of(name: str) -> str | None:
                status = crds.get_json("mt", name, "-n", namespace).get("status") or {}
                return status.get("phase")

            crds.kubectl(
                "apply", "-n", namespace, "-f", "-",
                input_text=yaml.safe_dump(make_training(name="first")),
            )  # fmt: skip
            wait_for(lambda: phase_of("first"), timeout=60, what="the active replica")
            leader.stop()  # graceful: kopf marks its peering record expired at once
            crds.kubectl(
                "apply", "-n", namespace, "-f", "-",
                input_text=yaml.safe_dump(make_training(name="second")),
            )  # fmt: skip
            wait_for(lambda: phase_of("second"), timeout=60, what="the standby taking over")
            assert active(standby)
        finally:
            for replica in replicas:
                replica.stop()
    finally:
        crds.helm("uninstall", "ha", "-n", "ha-system", check=False)
