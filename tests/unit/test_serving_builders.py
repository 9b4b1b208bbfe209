"""The children of a ModelDeployment — a small Ray cluster — built without a cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.builders.serving import (
    CONFIG_FILE,
    REPLICA_RAY_CPUS,
    build_config_map,
    build_head,
    build_head_service,
    build_http_service,
    build_network_policies,
    build_token_secret,
    build_worker_disruption_budget,
    build_workers,
    cpu_cores,
    endpoint,
    names_for,
    replica_threads,
)
from modelplane_operator.builders.training import build_job
from modelplane_operator.constants import AGENT_PORT, DASHBOARD_PORT, GCS_PORT, METRICS_PORT
from modelplane_operator.judge import SpecError
from modelplane_operator.render import render_run_config
from modelplane_operator.serve_config import ResolvedModel, render_serve_config
from modelplane_operator.settings import Settings
from modelplane_operator.status.serving import resolve_from_training
from modelplane_runtime.contract import ENV_PVC_ROOT, SERVE_HTTP_PORT
from modelplane_runtime.storage import local_path
from tests.factories import ROOT, make_deployment, make_training

SETTINGS = Settings(runtime_image="registry.example/runtime:1")
MODEL = ResolvedModel(uri="pvc://models/sentiment/run-1", digest="sha256:ab", metrics={})


def deployment(changes: dict[str, Any] | None = None, name: str = "sentiment") -> ModelDeployment:
    obj = make_deployment(changes, name=name)
    obj["metadata"].update({"namespace": "ml", "uid": "uid-1", "generation": 1})
    return ModelDeployment.model_validate(obj)


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (only,) = manifest["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifest)["env"]}


def all_children(d: ModelDeployment) -> list[dict[str, Any]]:
    return [
        build_token_secret(d, "t0ken"),
        build_config_map(d, render_serve_config(d, MODEL)),
        build_head(d, settings=SETTINGS, model_uri=MODEL.uri),
        build_workers(d, settings=SETTINGS, model_uri=MODEL.uri, replicas=2),
        build_head_service(d),
        build_http_service(d),
        *build_network_policies(d),
        build_worker_disruption_budget(d),
    ]


def test_every_child_is_owned_labelled_and_named_from_the_deployment() -> None:
    d = deployment()
    children = all_children(d)
    names = [child["metadata"]["name"] for child in children]
    assert names == [
        "sentiment-ray-token",
        "sentiment-serve",
        "sentiment-ray-head",
        "sentiment-ray-worker",
        "sentiment-ray-head",
        "sentiment",
        "sentiment-ray-head",
        "sentiment-ray-worker",
        "sentiment-ray-worker",
    ]
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            c.KIND_DEPLOYMENT,
            "sentiment",
            "uid-1",
            True,
        )
        assert child["metadata"]["namespace"] == "ml"
        assert child["metadata"]["labels"][c.LABEL_DEPLOYMENT] == "sentiment"


def test_a_long_name_still_gives_dns_safe_child_names() -> None:
    names = names_for("a" * 60)
    for name in (names.head, names.worker, names.config_map, names.secret):
        assert len(name) <= 63
        assert name[0].isalpha()
    assert names_for("a" * 60) == names


def test_workers_offer_one_replica_each_with_the_spec_resources() -> None:
    d = deployment({"spec.resources": {"gpusPerReplica": 2, "cpu": "4", "memory": "16Gi"}})
    workers = build_workers(d, settings=SETTINGS, model_uri=MODEL.uri, replicas=3)
    assert workers["spec"]["replicas"] == 3
    resources = container(workers)["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert resources["limits"]["nvidia.com/gpu"] == 2
    command = container(workers)["command"][-1]
    assert "--address=sentiment-ray-head:6379" in command
    # Ray sees one replica slot per pod (and so prestarts one worker); the pod's CPUs
    # are the replica's torch threads.
    assert "--num-cpus=1 " in command
    assert "--num-gpus=2 " in command
    # What Ray reserves per replica in the Serve config is what a worker offers.
    config = render_serve_config(
        d, MODEL, replica_cpus=REPLICA_RAY_CPUS, threads=replica_threads(d)
    )
    options = config["applications"][0]["deployments"][0]["ray_actor_options"]
    assert options == {"num_cpus": 1.0, "num_gpus": 2}
    assert config["applications"][0]["args"]["threads"] == 4


@pytest.mark.parametrize(("cpu", "threads"), [(None, 1), ("500m", 1), ("2.5", 2), ("8", 8)])
def test_a_replica_gets_the_worker_pods_whole_cpus_as_threads(
    cpu: str | None, threads: int
) -> None:
    assert replica_threads(deployment({"spec.resources": {"cpu": cpu}})) == threads


def test_the_head_deploys_the_mounted_serve_config_and_holds_no_replicas() -> None:
    head = build_head(deployment(), settings=SETTINGS, model_uri=MODEL.uri)
    assert head["spec"]["replicas"] == 1
    command = container(head)["command"][-1]
    assert "--num-cpus=0" in command
    assert f"serve --config /etc/modelplane/{CONFIG_FILE} --address auto" in command
    mounts = {m["mountPath"]: m for m in container(head)["volumeMounts"]}
    assert mounts["/etc/modelplane"]["readOnly"] is True
    assert container(head)["startupProbe"]["httpGet"]["path"] == "/api/gcs_healthz"
    assert container(head)["readinessProbe"]["httpGet"] == {"path": "/-/healthz", "port": 8000}


def test_ray_pods_keep_token_auth_and_the_serving_environment() -> None:
    for manifest in (
        build_head(deployment(), settings=SETTINGS, model_uri=MODEL.uri),
        build_workers(deployment(), settings=SETTINGS, model_uri=MODEL.uri, replicas=1),
    ):
        variables = env(manifest)
        assert variables["RAY_AUTH_MODE"] == "token"
        assert variables["RAY_AUTH_TOKEN"] == {
            "secretKeyRef": {"name": "sentiment-ray-token", "key": "token"}
        }
        assert variables["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        pod = manifest["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        assert container(manifest)["securityContext"]["readOnlyRootFilesystem"] is True
        assert container(manifest)["image"] == "registry.example/runtime:1"


def test_with_spares_worker_pods_start_warm_workers_that_import_the_app() -> None:
    spared = deployment({"spec.autoscaling": {"spareWorkers": 1}})
    workers = env(build_workers(spared, settings=SETTINGS, model_uri=MODEL.uri, replicas=2))
    assert workers["RAY_enable_worker_prestart"] == "1"
    assert workers["RAY_prestart_worker_first_driver"] == "0"
    # the module of the Serve config's import path: a typo would only show in worker logs
    assert workers["RAY_preload_python_modules"] == "torch,modelplane_runtime.serve.app"
    head = env(build_head(spared, settings=SETTINGS, model_uri=MODEL.uri))
    assert "RAY_preload_python_modules" not in head  # no CPUs, no replicas, no torch
    # without spares a new replica waits for its pod anyway, and the memory is saved
    plain = env(build_workers(deployment(), settings=SETTINGS, model_uri=MODEL.uri, replicas=1))
    assert "RAY_preload_python_modules" not in plain


def test_the_secret_and_config_map_carry_what_they_are_given() -> None:
    d = deployment()
    assert build_token_secret(d, "t0ken")["stringData"] == {"token": "t0ken"}
    config = render_serve_config(d, MODEL)
    assert json.loads(build_config_map(d, config)["data"][CONFIG_FILE]) == config


def mounted_claims(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The claims a pod template mounts: claim name -> its volumeMount."""
    pod = manifest["spec"]["template"]["spec"]
    volumes = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    return {
        volumes[m["name"]]: m for m in pod["containers"][0]["volumeMounts"] if m["name"] in volumes
    }


def quickstart_training() -> ModelTraining:
    obj = make_training({"spec.output.uri": "pvc://models/quickstart"}, name="quickstart")
    obj["metadata"].update({"namespace": "ml", "uid": "uid-t", "generation": 1})
    obj["status"] = {
        "phase": "Succeeded",
        "artifact": {"uri": "pvc://models/quickstart/quickstart", "digest": "sha256:ab"},
    }
    return ModelTraining.model_validate(obj)


def test_a_from_training_model_is_mounted_where_its_training_wrote_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(runtime_image="registry.example/runtime:1", pvc_root="/var/lib/pvc")
    training = quickstart_training()
    d = deployment({"spec.model": {"fromTraining": "quickstart"}})
    model = resolve_from_training("quickstart", training)
    assert isinstance(model, ResolvedModel)
    trainer = build_job(training, render_run_config(training), attempt=0, settings=settings)
    written_at = mounted_claims(trainer)["models"]["mountPath"]
    config = render_serve_config(d, model)
    for manifest in (
        build_head(d, settings=settings, model_uri=model.uri),
        build_workers(d, settings=settings, model_uri=model.uri, replicas=1),
    ):
        mount = mounted_claims(manifest)["models"]
        assert (mount["mountPath"], mount["readOnly"]) == (written_at, True)
        # The runtime resolves the Serve config's URI under the pod's pvc root.
        monkeypatch.setenv(ENV_PVC_ROOT, env(manifest)["MODELPLANE_PVC_ROOT"])
        path = local_path(config["applications"][0]["args"]["model_uri"], field="model.uri")
        assert str(path) == f"{written_at}/quickstart/quickstart"


def test_a_pvc_model_is_mounted_read_only_in_every_ray_pod() -> None:
    d = deployment({"spec.model": {"uri": "pvc://models/sentiment/run-1"}})
    for manifest in (
        build_head(d, settings=SETTINGS, model_uri=MODEL.uri),
        build_workers(d, settings=SETTINGS, model_uri=MODEL.uri, replicas=1),
    ):
        pod = manifest["spec"]["template"]["spec"]
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["models"]
        mounts = {m["mountPath"]: m for m in container(manifest)["volumeMounts"]}
        assert mounts["/mnt/pvc/models"]["readOnly"] is True


def test_a_builtin_model_mounts_nothing_and_its_adapters_claims_are_mounted_read_only() -> None:
    d = deployment(
        {
            "spec.model": {"uri": "builtin://smollm2-135m-instruct"},
            "spec.generation.adapters": [
                {"name": "support", "uri": "pvc://adapters/support/support"},
                {"name": "sales", "uri": "pvc://adapters/sales/sales"},
                {"name": "legal", "uri": "pvc://legal-adapters/legal"},
            ],
        }
    )
    uri = "builtin://smollm2-135m-instruct"
    for manifest in (
        build_head(d, settings=SETTINGS, model_uri=uri),
        build_workers(d, settings=SETTINGS, model_uri=uri, replicas=1),
    ):
        pod = manifest["spec"]["template"]["spec"]
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["adapters", "legal-adapters"]
        mounts = {m["mountPath"]: m for m in container(manifest)["volumeMounts"]}
        assert mounts["/mnt/pvc/adapters"]["readOnly"] is True
        assert mounts["/mnt/pvc/legal-adapters"]["readOnly"] is True


def test_an_adapter_on_a_claim_no_pod_can_mount_is_refused_by_its_field() -> None:
    d = deployment(
        {"spec.generation.adapters": [{"name": "support", "uri": "pvc://Adapters_X/support"}]}
    )
    with pytest.raises(SpecError) as raised:
        build_workers(d, settings=SETTINGS, model_uri=MODEL.uri, replicas=1)
    assert raised.value.problem.field == "spec.generation.adapters[0].uri"
    assert "'Adapters_X' is not a PersistentVolumeClaim name" in raised.value.problem.message


def test_the_http_service_is_the_endpoint_over_every_ray_pod() -> None:
    d = deployment()
    service = build_http_service(d)
    assert service["spec"]["selector"] == {
        c.LABEL_COMPONENT: "serving",
        c.LABEL_DEPLOYMENT: "sentiment",
    }
    assert service["spec"]["ports"][0]["port"] == 8000
    assert endpoint(d) == "http://sentiment.ml.svc:8000"
    head_ports = {p["name"] for p in build_head_service(d)["spec"]["ports"]}
    assert head_ports == {"gcs", "dashboard", "metrics"}


@pytest.mark.parametrize(
    ("quantity", "cores"),
    [(None, 1.0), ("4", 4.0), (2, 2.0), ("500m", 0.5), ("1.5", 1.5)],
    ids=["unset means one core", "whole cores", "an integer", "millicores", "a fraction"],
)
def test_cpu_quantities_become_cores(quantity: int | str | None, cores: float) -> None:
    assert cpu_cores(quantity) == cores


def test_a_cpu_quantity_ray_cannot_use_is_refused() -> None:
    with pytest.raises(ValueError, match="not a CPU quantity"):
        cpu_cores("2Gi")


def test_ray_pods_run_the_operators_image_unless_the_deployment_names_its_own() -> None:
    default = deployment()
    assert (
        container(build_head(default, settings=SETTINGS, model_uri=MODEL.uri))["image"]
        == SETTINGS.runtime_image
    )
    own = deployment({"spec.resources.image": "registry.example/runtime:1-cpu"})
    for manifest in (
        build_head(own, settings=SETTINGS, model_uri=MODEL.uri),
        build_workers(own, settings=SETTINGS, model_uri=MODEL.uri, replicas=1),
    ):
        assert container(manifest)["image"] == "registry.example/runtime:1-cpu"


HELPERS = ROOT / "helm" / "modelplane" / "templates" / "_helpers.tpl"
RBAC = ROOT / "helm" / "modelplane" / "templates" / "rbac.yaml"


def chart_define(path: Path, name: str) -> Any:
    """The YAML a named template of the chart defines, its template actions dropped: the
    lines that only branch or include go, and values rendered inline become a word."""
    marker = f'{{{{- define "{name}" -}}}}\n'
    assert marker in path.read_text(), f"{path.name} defines no {name}"
    lines = []
    for line in path.read_text().split(marker, 1)[1].splitlines():
        if line.strip() == "{{- end -}}":
            break
        if not line.strip().startswith("{{"):
            lines.append(re.sub(r"\{\{.*?\}\}", "rendered", line))
    return yaml.safe_load("\n".join(lines))


def pod_labels(manifest: dict[str, Any]) -> dict[str, str]:
    return manifest["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


Peer = tuple[str, dict[str, str]]
"""A pod that opens a connection: its namespace and labels."""


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "this reading knows matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict[str, Any], namespace: str, pod: Peer) -> bool:
    assert set(peer) <= {"namespaceSelector", "podSelector"}, peer
    if "namespaceSelector" in peer:
        assert peer["namespaceSelector"] == {}, "namespaces carry no labels in these tests"
    elif pod[0] != namespace:
        return False  # a podSelector alone means the policy's own namespace
    return _selects(peer.get("podSelector", {}), pod[1])


def admits(policy: dict[str, Any], pod: Peer, port: int) -> bool:
    """Whether `policy` lets `pod` open a TCP connection to `port` on the pods it selects:
    NetworkPolicy's ingress rules read as the API defines them (rules are ORed; within a
    rule a missing or empty `from` or `ports` matches everything)."""
    namespace = policy["metadata"]["namespace"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        peers = rule.get("from") or []
        ports = rule.get("ports") or []
        if (not peers or any(_peer_matches(p, namespace, pod) for p in peers)) and (
            not ports or any(q == {"protocol": "TCP", "port": port} for q in ports)
        ):
            return True
    return False


def peers() -> dict[str, Peer]:
    """Who might connect to the `sentiment` deployment's Ray pods in namespace ml."""
    own, other = deployment(), deployment(name="other")
    operator = chart_define(HELPERS, "modelplane.selectorLabels")
    return {
        "head": ("ml", pod_labels(build_head(own, settings=SETTINGS, model_uri=MODEL.uri))),
        "worker": (
            "ml",
            pod_labels(build_workers(own, settings=SETTINGS, model_uri=MODEL.uri, replicas=1)),
        ),
        "other worker": (
            "ml",
            pod_labels(build_workers(other, settings=SETTINGS, model_uri=MODEL.uri, replicas=1)),
        ),
        "operator": ("modelplane-system", operator),
        "stranger": ("ml", {"app": "curl"}),
        # A training pod shares the Ray pods' app.kubernetes.io/name (modelplane), not the
        # operator's (modelplane-operator).
        "trainer": ("ml", {c.LABEL_NAME: "modelplane", c.LABEL_COMPONENT: "training"}),
    }


RAY_DYNAMIC_PORT = 10_002
"""One of the ports Ray picks at start (a worker process's)."""

ADMISSIONS = [
    ("head", "head", GCS_PORT, True),
    ("head", "worker", GCS_PORT, True),
    ("head", "worker", RAY_DYNAMIC_PORT, True),
    ("head", "other worker", GCS_PORT, False),
    ("head", "other worker", SERVE_HTTP_PORT, True),
    ("head", "operator", DASHBOARD_PORT, True),
    ("head", "operator", GCS_PORT, False),
    ("head", "trainer", DASHBOARD_PORT, False),
    ("head", "stranger", DASHBOARD_PORT, False),
    ("head", "stranger", GCS_PORT, False),
    ("head", "stranger", SERVE_HTTP_PORT, True),
    ("head", "stranger", METRICS_PORT, True),
    ("worker", "head", RAY_DYNAMIC_PORT, True),
    ("worker", "worker", AGENT_PORT, True),
    ("worker", "other worker", RAY_DYNAMIC_PORT, False),
    ("worker", "operator", DASHBOARD_PORT, False),
    ("worker", "stranger", RAY_DYNAMIC_PORT, False),
    ("worker", "stranger", SERVE_HTTP_PORT, True),
    ("worker", "stranger", METRICS_PORT, True),
]


@pytest.mark.parametrize(
    ("guarded", "peer", "port", "admitted"),
    ADMISSIONS,
    ids=[
        f"the {g} {'admits' if ok else 'refuses'} the {p} on {port}"
        for g, p, port, ok in ADMISSIONS
    ],
)
def test_the_network_policies_admit_the_ray_cluster_the_operator_and_requests_only(
    guarded: str, peer: str, port: int, admitted: bool
) -> None:
    d = deployment()
    policies = {p["metadata"]["name"]: p for p in build_network_policies(d)}
    name = {"head": "sentiment-ray-head", "worker": "sentiment-ray-worker"}[guarded]
    assert admits(policies[name], peers()[peer], port) is admitted


def test_each_network_policy_selects_the_pods_it_guards_and_no_others() -> None:
    d = deployment()
    head = pod_labels(build_head(d, settings=SETTINGS, model_uri=MODEL.uri))
    workers = pod_labels(build_workers(d, settings=SETTINGS, model_uri=MODEL.uri, replicas=1))
    head_policy, worker_policy = build_network_policies(d)
    assert head_policy["spec"]["podSelector"] == {"matchLabels": head}
    assert worker_policy["spec"]["podSelector"] == {"matchLabels": workers}
    assert (head_policy["kind"], head_policy["apiVersion"]) == (
        "NetworkPolicy",
        "networking.k8s.io/v1",
    )


def test_the_operator_is_admitted_by_the_label_the_chart_gives_its_pod() -> None:
    labels = chart_define(HELPERS, "modelplane.selectorLabels")
    assert labels[c.LABEL_NAME] == c.OPERATOR_NAME
    # The operator's Deployment puts the selector labels on its pods' template.
    deployment_template = (HELPERS.parent / "deployment.yaml").read_text()
    template = deployment_template.split("  template:\n", 1)[1]
    assert 'include "modelplane.selectorLabels"' in template.split("    spec:\n", 1)[0]


def test_a_drain_takes_one_worker_at_a_time_and_never_the_head_by_budget() -> None:
    d = deployment()
    budget = build_worker_disruption_budget(d)
    assert (budget["apiVersion"], budget["kind"]) == ("policy/v1", "PodDisruptionBudget")
    workers = build_workers(d, settings=SETTINGS, model_uri=MODEL.uri, replicas=3)
    assert budget["spec"]["selector"] == {"matchLabels": pod_labels(workers)}
    # The worker count moves with autoscaling: a budget in workers that may go, not in
    # workers that must stay.
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
    # A worker that is not ready holds no replica; it must not stall a drain.
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    head = pod_labels(build_head(d, settings=SETTINGS, model_uri=MODEL.uri))
    assert not _selects(budget["spec"]["selector"], head)


def _plural(kind: str) -> str:
    lower = kind.lower()
    return f"{lower[:-1]}ies" if lower.endswith("y") else f"{lower}s"


def test_the_charts_rbac_lets_the_operator_apply_every_serving_child() -> None:
    rules = [
        *chart_define(HELPERS, "modelplane.namespacedRules"),
        *chart_define(RBAC, "modelplane.servingGuardRules"),
    ]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    for child in all_children(deployment()):
        group = child["apiVersion"].rpartition("/")[0]
        resource = (group, _plural(child["kind"]))
        # Server-side apply creates the object the first time and patches it after.
        assert {"create", "patch"} <= granted.get(resource, set()), resource
    # Both kinds of grant (one ClusterRole, or a Role per watched namespace) carry both.
    rbac = [line.strip() for line in RBAC.read_text().splitlines()]
    includes = [i for i, line in enumerate(rbac) if 'include "modelplane.namespacedRules"' in line]
    assert len(includes) == 2
    for i in includes:
        assert 'include "modelplane.servingGuardRules"' in rbac[i + 1]
