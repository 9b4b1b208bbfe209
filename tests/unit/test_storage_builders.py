"""s3:// in the pods: the Secret's keys as environment and a cache, for every pod that
reads or writes object storage, and nothing at all for a pod that does not."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelDeployment, ModelTraining
from modelplane_operator.builders.serving import build_head, build_workers
from modelplane_operator.builders.training import build_job
from modelplane_operator.judge import SpecError
from modelplane_operator.render import render_run_config
from modelplane_operator.settings import Settings
from modelplane_runtime.contract import (
    ENV_STORAGE_CACHE,
    S3_SECRET_KEYS_OPTIONAL,
    S3_SECRET_KEYS_REQUIRED,
)
from tests.factories import ROOT, make_deployment, make_training

SETTINGS = Settings(runtime_image="registry.example/runtime:1")
WITH_DEFAULT = Settings(runtime_image="registry.example/runtime:1", storage_secret="team-s3")
OWN_SECRET = {"spec.storage": {"secretRef": {"name": "s3-credentials"}}}
S3_MODEL = "s3://models/sentiment/run-1"


def training(changes: dict[str, Any] | None = None) -> ModelTraining:
    obj = make_training(changes)
    obj["metadata"].update({"namespace": "ml", "uid": "uid-1", "generation": 1})
    return ModelTraining.model_validate(obj)


def deployment(changes: dict[str, Any] | None = None) -> ModelDeployment:
    obj = make_deployment(changes)
    obj["metadata"].update({"namespace": "ml", "uid": "uid-1", "generation": 1})
    return ModelDeployment.model_validate(obj)


def job_pod(t: ModelTraining, settings: Settings = SETTINGS) -> dict[str, Any]:
    job = build_job(t, render_run_config(t), attempt=0, settings=settings)
    return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def ray_pods(d: ModelDeployment, model_uri: str, settings: Settings = SETTINGS) -> list[Any]:
    return [
        build_head(d, settings=settings, model_uri=model_uri)["spec"]["template"]["spec"],
        build_workers(d, settings=settings, model_uri=model_uri, replicas=2)["spec"]["template"][
            "spec"
        ],
    ]


def secret_env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's env drawn from Secrets, by name: the secretKeyRef of each."""
    (container,) = pod["containers"]
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {}) and e["name"] != "RAY_AUTH_TOKEN"
    }


def cache(pod: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(MODELPLANE_STORAGE_CACHE, the cache volume, where it is mounted)."""
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    volume = next((v for v in pod["volumes"] if v["name"] == c.STORAGE_CACHE_VOLUME), None)
    mount = next(
        (m["mountPath"] for m in container["volumeMounts"] if m["name"] == c.STORAGE_CACHE_VOLUME),
        None,
    )
    return env.get(ENV_STORAGE_CACHE), volume, mount


def assert_wired_to(pod: dict[str, Any], secret: str) -> None:
    refs = secret_env(pod)
    assert list(refs) == [*S3_SECRET_KEYS_REQUIRED, *S3_SECRET_KEYS_OPTIONAL]
    for key in S3_SECRET_KEYS_REQUIRED:
        assert refs[key] == {"name": secret, "key": key}
    for key in S3_SECRET_KEYS_OPTIONAL:
        assert refs[key] == {"name": secret, "key": key, "optional": True}
    path, volume, mount = cache(pod)
    assert path == mount == c.STORAGE_CACHE_PATH
    assert volume == {"name": c.STORAGE_CACHE_VOLUME, "emptyDir": {"sizeLimit": "50Gi"}}


@pytest.mark.parametrize(
    "changes",
    [
        {"spec.output.uri": "s3://models/runs"},
        {"spec.data.train.uri": "s3://data/train.csv"},
        {"spec.data.validation": {"uri": "s3://data/valid.csv"}},
        {"spec.model.init": {"uri": "s3://models/pretrained/run-1"}},
    ],
    ids=["output", "training data", "validation data", "initial weights"],
)
def test_any_s3_uri_of_a_training_gives_every_rank_the_secrets_keys_and_a_cache(
    changes: dict[str, Any],
) -> None:
    t = training({**changes, **OWN_SECRET, "spec.resources.nodes": 2})
    assert_wired_to(job_pod(t), "s3-credentials")


def test_a_training_without_its_own_secret_uses_the_operators_default() -> None:
    assert_wired_to(
        job_pod(training({"spec.output.uri": "s3://models/runs"}), WITH_DEFAULT), "team-s3"
    )


def test_a_trainings_own_secret_wins_over_the_default() -> None:
    t = training({"spec.output.uri": "s3://models/runs", **OWN_SECRET})
    assert_wired_to(job_pod(t, WITH_DEFAULT), "s3-credentials")


def test_an_s3_training_with_no_secret_and_no_default_is_refused_naming_both_fixes() -> None:
    t = training({"spec.data.train.uri": "s3://data/train.csv"})
    with pytest.raises(SpecError) as raised:
        job_pod(t)
    problem = raised.value.problem
    assert problem.field == "spec.data.train.uri"
    assert "spec.storage.secretRef.name" in problem.message
    assert "storage.defaultSecretName" in problem.message
    assert "AWS_ACCESS_KEY_ID" in problem.message


def test_the_cache_size_limit_is_the_operators_setting_and_empty_means_none() -> None:
    t = training({"spec.output.uri": "s3://models/runs", **OWN_SECRET})
    _, volume, _ = cache(job_pod(t, Settings(storage_cache_limit="5Gi")))
    assert volume == {"name": c.STORAGE_CACHE_VOLUME, "emptyDir": {"sizeLimit": "5Gi"}}
    _, volume, _ = cache(job_pod(t, Settings(storage_cache_limit="")))
    assert volume == {"name": c.STORAGE_CACHE_VOLUME, "emptyDir": {}}


def test_a_training_without_s3_has_the_same_pods_with_or_without_a_default_secret() -> None:
    t = training({"spec.data.validation": {"uri": "pvc://data/valid.csv"}})
    pod = job_pod(t)
    assert pod == job_pod(t, WITH_DEFAULT)
    assert secret_env(pod) == {}
    assert cache(pod) == (None, None, None)


def test_an_s3_model_gives_the_head_and_every_worker_the_secrets_keys_and_a_cache() -> None:
    d = deployment({"spec.model": {"uri": S3_MODEL}, **OWN_SECRET})
    for pod in ray_pods(d, S3_MODEL):
        assert_wired_to(pod, "s3-credentials")


def test_a_from_training_model_that_landed_in_s3_uses_the_deployments_secret() -> None:
    d = deployment(OWN_SECRET)  # fromTraining: demo, whose artifact is in s3://
    for pod in ray_pods(d, S3_MODEL):
        assert_wired_to(pod, "s3-credentials")
    for pod in ray_pods(deployment(), S3_MODEL, WITH_DEFAULT):
        assert_wired_to(pod, "team-s3")


def test_an_s3_model_with_no_secret_and_no_default_is_refused() -> None:
    with pytest.raises(SpecError) as raised:
        ray_pods(deployment({"spec.model": {"uri": S3_MODEL}}), S3_MODEL)
    assert raised.value.problem.field == "spec.model.uri"
    assert "storage.defaultSecretName" in raised.value.problem.message


def test_an_s3_adapter_gives_the_ray_pods_the_secrets_keys_and_a_cache() -> None:
    adapters = [{"name": "support", "uri": "s3://adapters/support"}]
    d = deployment(
        {
            "spec.model": {"uri": "builtin://smollm2-135m-instruct"},
            "spec.generation.adapters": adapters,
            **OWN_SECRET,
        }
    )
    for pod in ray_pods(d, "builtin://smollm2-135m-instruct"):
        assert_wired_to(pod, "s3-credentials")


def test_an_s3_adapter_with_no_secret_and_no_default_is_refused_by_its_field() -> None:
    d = deployment(
        {
            "spec.model": {"uri": "pvc://models/chat/chat"},
            "spec.generation.adapters": [{"name": "support", "uri": "s3://adapters/support"}],
        }
    )
    with pytest.raises(SpecError) as raised:
        ray_pods(d, "pvc://models/chat/chat")
    assert raised.value.problem.field == "spec.generation.adapters[0].uri"


def test_a_claim_model_has_the_same_ray_pods_with_or_without_a_default_secret() -> None:
    d = deployment()
    pods = ray_pods(d, "pvc://models/demo/run-1")
    assert pods == ray_pods(d, "pvc://models/demo/run-1", WITH_DEFAULT)
    for pod in pods:
        assert secret_env(pod) == {}
        assert cache(pod) == (None, None, None)


def test_the_default_secret_and_cache_limit_come_from_the_operators_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(c.ENV_STORAGE_SECRET, raising=False)
    monkeypatch.delenv(c.ENV_STORAGE_CACHE_LIMIT, raising=False)
    defaults = Settings.from_environ()
    assert (defaults.storage_secret, defaults.storage_cache_limit) == ("", "50Gi")
    monkeypatch.setenv(c.ENV_STORAGE_SECRET, "team-s3")
    monkeypatch.setenv(c.ENV_STORAGE_CACHE_LIMIT, "8Gi")
    settings = Settings.from_environ()
    assert (settings.storage_secret, settings.storage_cache_limit) == ("team-s3", "8Gi")


def test_the_chart_sets_the_operators_storage_environment_from_its_values() -> None:
    template = (ROOT / "helm/modelplane/templates/deployment.yaml").read_text()
    values = yaml.safe_load((ROOT / "helm/modelplane/values.yaml").read_text())
    assert values["storage"] == {"defaultSecretName": "", "cacheSizeLimit": "50Gi"}
    for env, value in (
        (c.ENV_STORAGE_SECRET, ".Values.storage.defaultSecretName"),
        (c.ENV_STORAGE_CACHE_LIMIT, ".Values.storage.cacheSizeLimit"),
    ):
        assert f"- name: {env}\n              value: {{{{ {value} | quote }}}}" in template
