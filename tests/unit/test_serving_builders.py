"""The children of a ModelDeployment — a small Ray cluster — built without a cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.builders.serving import (
    CONFIG_FILE,
    REPLICA_RAY_CPUS,
    build_config_map,
    build_head,
    build_head_service,
    build_http_service,
    build_token_secret,
    build_workers,
    cpu_cores,
    endpoint,
    names_for,
    replica_threads,
)
from modelplane_operator.builders.training import build_job
from modelplane_operator.render import render_run_config
from modelplane_operator.serve_config import ResolvedModel, render_serve_config
from modelplane_operator.settings import Settings
from modelplane_operator.status.serving import resolve_from_training
from modelplane_runtime.storage import ENV_PVC_ROOT, local_path
from tests.factories import make_deployment, make_training

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
    d = deployment({"spec.resources": {"gpusPerReplica": 0.5, "cpu": "4", "memory": "16Gi"}})
    workers = build_workers(d, settings=SETTINGS, model_uri=MODEL.uri, replicas=3)
    assert workers["spec"]["replicas"] == 3
    resources = container(workers)["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert resources["limits"]["nvidia.com/gpu"] == 1  # half a GPU still needs a device
    command = container(workers)["command"][-1]
    assert "--address=sentiment-ray-head:6379" in command
    # Ray sees one replica slot per pod (and so prestarts one worker); the pod's CPUs
    # are the replica's torch threads.
    assert "--num-cpus=1 " in command
    assert "--num-gpus=0.5 " in command
    # What Ray reserves per replica in the Serve config is what a worker offers.
    config = render_serve_config(
        d, MODEL, replica_cpus=REPLICA_RAY_CPUS, threads=replica_threads(d)
    )
    options = config["applications"][0]["deployments"][0]["ray_actor_options"]
    assert options == {"num_cpus": 1.0, "num_gpus": 0.5}
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
