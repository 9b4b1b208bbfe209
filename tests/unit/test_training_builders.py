"""The children of a ModelTraining, built without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelTraining
from modelplane_operator.builders.training import (
    CONFIG_DIR,
    CONFIG_FILE,
    JOB_NAME_MAX,
    RUN_CONFIG_MAX,
    build_job,
    build_service,
    names_for,
    needs_service,
)
from modelplane_operator.judge import SpecError
from modelplane_operator.render import render_run_config
from modelplane_operator.settings import Settings
from modelplane_runtime.contract import RunConfig
from tests.factories import make_training

SETTINGS = Settings(runtime_image="registry.example/runtime:1")


def training(changes: dict[str, Any] | None = None, name: str = "demo") -> ModelTraining:
    obj = make_training(changes, name=name)
    obj["metadata"].update({"namespace": "ml", "uid": "uid-1", "generation": 1})
    return ModelTraining.model_validate(obj)


def job_for(t: ModelTraining, attempt: int = 0) -> dict[str, Any]:
    return build_job(t, render_run_config(t), attempt=attempt, settings=SETTINGS)


def test_a_gang_job_has_one_indexed_pod_per_node_and_gpu_limits() -> None:
    t = training({"spec.resources": {"nodes": 2, "gpusPerNode": 4, "cpu": "8", "memory": "32Gi"}})
    job = job_for(t)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 4}
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert "--nnodes=2" in container["command"]
    assert "--nproc-per-node=4" in container["command"]
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in container["command"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MASTER_ADDR"] == "demo-train-0.demo-train"
    assert container["image"] == "registry.example/runtime:1"


def test_pods_run_as_non_root_without_credentials_and_address_rank_0_by_dns() -> None:
    pod = job_for(training({"spec.resources.nodes": 3}))["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["subdomain"] == names_for("demo", 0).service
    assert pod["restartPolicy"] == "Never"


def test_a_single_node_job_needs_no_service_and_meets_itself_on_loopback() -> None:
    t = training()
    assert not needs_service(t)
    pod = job_for(t)["spec"]["template"]["spec"]
    assert "subdomain" not in pod
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "127.0.0.1"


def test_config_errors_fail_the_job_without_retry() -> None:
    rules = job_for(training())["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [42]


@pytest.mark.parametrize(
    ("nodes", "action"),
    [(1, "Ignore"), (2, "FailJob"), (4, "FailJob")],
    ids=[
        "one node: the Job replaces an evicted pod in place",
        "a gang of two: an evicted rank ends the attempt",
        "a gang of four: an evicted rank ends the attempt",
    ],
)
def test_a_disrupted_pod_ends_a_gangs_attempt_but_not_a_single_pods(
    nodes: int, action: str
) -> None:
    spec = job_for(training({"spec.resources.nodes": nodes}))["spec"]
    (disruption,) = [r for r in spec["podFailurePolicy"]["rules"] if "onPodConditions" in r]
    assert disruption == {"action": action, "onPodConditions": [{"type": "DisruptionTarget"}]}
    # Why a gang cannot replace one rank: torchrun's rendezvous is static and its agent
    # never restarts workers, so a new pod cannot join the ranks that stayed.
    command = spec["template"]["spec"]["containers"][0]["command"]
    assert "--master-addr=$(MASTER_ADDR)" in command
    assert not [arg for arg in command if arg.startswith(("--max-restarts", "--rdzv"))]
    assert spec["backoffLimit"] == 0


def test_pvc_uris_become_mounts_under_the_pvc_root() -> None:
    t = training(
        {
            "spec.data.train.uri": "pvc://datasets/reviews/train.jsonl",
            "spec.output.uri": "pvc://models/out",
        }
    )
    pod = job_for(t)["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/mnt/pvc/datasets", "/mnt/pvc/models", "/etc/modelplane"} <= mounts
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"datasets", "models"}


def test_placement_is_copied_to_the_pods() -> None:
    t = training(
        {
            "spec.resources": {
                "nodeSelector": {"pool": "a100"},
                "priorityClassName": "high",
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            }
        }
    )
    pod = job_for(t)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["priorityClassName"] == "high"
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_every_child_is_owned_by_the_training() -> None:
    t = training()
    for child in (job_for(t), build_service(t, attempt=0, settings=SETTINGS)):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "ModelTraining",
            "uid-1",
            True,
        )


def test_the_pods_read_the_run_config_from_their_own_annotation() -> None:
    t = training({"spec.resources.nodes": 2})
    run = render_run_config(t, run_name="demo-t3", hyperparameters={"learningRate": 0.01})
    template = build_job(t, run, attempt=1, settings=SETTINGS)["spec"]["template"]
    text = template["metadata"]["annotations"][c.ANNOTATION_RUN_CONFIG]
    assert text == run.to_json()  # byte for byte the file the runtime reads
    assert RunConfig.from_json(text).optim.learning_rate == 0.01
    pod = template["spec"]
    (volume,) = [v for v in pod["volumes"] if "downwardAPI" in v]
    assert volume["downwardAPI"]["items"] == [
        {
            "path": CONFIG_FILE,
            "fieldRef": {"fieldPath": "metadata.annotations['modelplane.io/run-config']"},
        }
    ]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert (mount["mountPath"], mount["readOnly"]) == (CONFIG_DIR, True)
    assert pod["containers"][0]["command"][-2:] == ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    assert not [v for v in pod["volumes"] if "configMap" in v]


LANGUAGE_MODEL = {
    "spec.model": {
        "architecture": "huggingface",
        "task": "text-generation",
        "init": {"uri": "builtin://smollm2-135m-instruct"},
    },
    "spec.data.train.uri": "builtin://chat",
}


@pytest.mark.parametrize(
    ("module_length", "refused"),
    [(16, False), (1000, False), (2100, True)],
    ids=[
        "a usual adapter's run config fits the annotation",
        "64 module names of 1,000 characters still fit under the bound",
        "64 module names of 2,100 characters are refused, naming targetModules",
    ],
)
def test_a_run_config_too_long_for_a_pod_annotation_is_a_spec_error(
    module_length: int, refused: bool
) -> None:
    modules = [f"m{i}_".ljust(module_length, "x") for i in range(64)]
    t = training({**LANGUAGE_MODEL, "spec.model.adapter": {"targetModules": modules}})
    if not refused:
        annotations = job_for(t)["spec"]["template"]["metadata"]["annotations"]
        assert len(annotations[c.ANNOTATION_RUN_CONFIG].encode()) <= RUN_CONFIG_MAX
        return
    with pytest.raises(SpecError) as refusal:
        job_for(t)
    assert refusal.value.problem.field == "spec.model.adapter.targetModules"
    assert f"more than the {RUN_CONFIG_MAX} a pod annotation may carry" in str(refusal.value)


def test_the_service_is_headless_and_selects_this_attempt() -> None:
    service = build_service(training(), attempt=2, settings=SETTINGS)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"]["modelplane.io/attempt"] == "2"


def test_attempts_have_distinct_deterministic_names_short_enough_for_pods() -> None:
    assert names_for("demo", 0).job == "demo-train"
    assert names_for("demo", 1).job == "demo-train-1"
    long = names_for("x" * 63, 3)
    assert len(long.job) <= JOB_NAME_MAX
    assert long == names_for("x" * 63, 3)


def test_settings_come_from_the_environment_with_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELPLANE_RUNTIME_IMAGE", "r.example/rt:2")
    monkeypatch.setenv("MODELPLANE_PROGRESS_PORT", "9100")
    settings = Settings.from_environ()
    assert (settings.runtime_image, settings.progress_port) == ("r.example/rt:2", 9100)
    assert settings.pvc_root == "/mnt/pvc"
    env = {
        e["name"]: e["value"]
        for e in job_for(training())["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELPLANE_PVC_ROOT"] == "/mnt/pvc"


def test_the_collective_timeout_reaches_every_rank_from_the_operators_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def pod_env(settings: Settings) -> dict[str, str]:
        job = build_job(training(), render_run_config(training()), attempt=0, settings=settings)
        container = job["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"]}

    assert pod_env(Settings())["MODELPLANE_DIST_TIMEOUT_S"] == "600"
    monkeypatch.setenv("MODELPLANE_DIST_TIMEOUT_S", "90")
    assert pod_env(Settings.from_environ())["MODELPLANE_DIST_TIMEOUT_S"] == "90"


def test_pods_run_the_operators_image_unless_the_training_names_its_own() -> None:
    pod = job_for(training())["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == SETTINGS.runtime_image
    own = job_for(training({"spec.resources.image": "registry.example/runtime:1-cpu"}))
    assert own["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/runtime:1-cpu"
    )
