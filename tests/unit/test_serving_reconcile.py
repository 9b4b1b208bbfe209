"""reconcile_deployment against an in-memory client: what reaches the Ray cluster it
applies and the status it patches, whichever way the model was named."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.builders.serving import CONFIG_FILE, names_for
from modelplane_operator.dashboard import Dashboard
from modelplane_operator.reconcile.serving import reconcile_deployment
from modelplane_operator.settings import Settings
from modelplane_operator.status.serving import ServeState
from tests.factories import make_deployment, make_training
from tests.unit.fake_client import FakeClient
from tests.unit.pods import NO_SUCH_IMAGE, make_pod

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SETTINGS = Settings(runtime_image="registry.example/runtime:1", pvc_root="/var/lib/pvc")
ARTIFACT = "pvc://models/quickstart/quickstart"
NAMES = names_for("quickstart")


class SilentHead(Dashboard):
    """A head whose dashboard does not answer yet."""

    def __init__(self) -> None:
        self.pushed: list[dict[str, Any]] = []

    async def application(self, name: str, *, timeout: float = 3.0) -> ServeState | None:
        return None

    async def deploy(self, config: dict[str, Any]) -> bool:
        self.pushed.append(config)
        return False


def deployment_body(model: dict[str, str]) -> dict[str, Any]:
    obj = make_deployment({"spec.model": model}, name="quickstart")
    obj["metadata"].update({"namespace": "ml", "uid": "uid-d", "generation": 1})
    return obj


def succeeded_training() -> dict[str, Any]:
    obj = make_training({"spec.output.uri": "pvc://models/quickstart"}, name="quickstart")
    obj["metadata"].update({"namespace": "ml", "uid": "uid-t", "generation": 1})
    obj["status"] = {
        "phase": "Succeeded",
        "artifact": {"uri": ARTIFACT, "digest": "sha256:ab"},
        "metrics": {"f1": 0.9},
    }
    return obj


def one_pass(client: FakeClient, body: dict[str, Any]) -> str | None:
    head = SilentHead()

    def dashboard_for(url: str, token: str) -> Dashboard:
        return head

    return asyncio.run(
        reconcile_deployment(client, body, settings=SETTINGS, now=NOW, dashboard_for=dashboard_for)
    )


@pytest.mark.parametrize(
    "model",
    [{"uri": ARTIFACT}, {"fromTraining": "quickstart"}],
    ids=["a model named by its uri", "a model named by the training that made it"],
)
def test_the_ray_pods_mount_the_claim_of_the_resolved_artifact(model: dict[str, str]) -> None:
    client = FakeClient(trainings=(succeeded_training(),))
    assert one_pass(client, deployment_body(model)) == "Progressing"
    for name in (NAMES.head, NAMES.worker):
        pod = client.applied("Deployment", name)["spec"]["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert list(claims.values()) == ["models"], name
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert [mounts[volume] for volume in claims] == ["/var/lib/pvc/models"]
    config = json.loads(client.applied("ConfigMap", NAMES.config_map)["data"][CONFIG_FILE])
    assert config["applications"][0]["args"]["model_uri"] == ARTIFACT


def _with_status(manifest: dict[str, Any], ready: int) -> None:
    replicas = manifest["spec"]["replicas"]
    manifest["metadata"]["generation"] = 1
    manifest["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
    }


def test_a_head_that_cannot_pull_its_image_reaches_the_status() -> None:
    labels = {c.LABEL_COMPONENT: "serving", c.LABEL_DEPLOYMENT: "quickstart"}
    stuck = make_pod(
        "quickstart-ray-head-7d9f",
        labels={**labels, c.LABEL_ROLE: "head"},
        waiting=("ImagePullBackOff", NO_SUCH_IMAGE),
    )
    elsewhere = make_pod(
        "other-ray-head-1",
        labels={c.LABEL_COMPONENT: "serving", c.LABEL_DEPLOYMENT: "other"},
        waiting=("CrashLoopBackOff", "back-off"),
    )
    client = FakeClient(trainings=(succeeded_training(),), pods=(stuck, elsewhere))
    body = deployment_body({"fromTraining": "quickstart"})
    one_pass(client, body)  # creates the cluster
    _with_status(client.applied("Deployment", NAMES.head), ready=0)
    _with_status(client.applied("Deployment", NAMES.worker), ready=1)
    client.status_patches.clear()

    assert one_pass(client, body) == "Progressing"
    assert client.pod_queries[-1] == labels
    (patch,) = client.status_patches
    ready = next(cond for cond in patch["conditions"] if cond["type"] == "Ready")
    assert ready["reason"] == "ImagePullFailed"
    assert "pod quickstart-ray-head-7d9f cannot pull its image" in ready["message"]
    assert NO_SUCH_IMAGE in ready["message"]


def test_a_settled_cluster_lists_no_pods() -> None:
    client = FakeClient(trainings=(succeeded_training(),))
    body = deployment_body({"fromTraining": "quickstart"})
    one_pass(client, body)
    _with_status(client.applied("Deployment", NAMES.head), ready=1)
    _with_status(client.applied("Deployment", NAMES.worker), ready=1)
    queries = len(client.pod_queries)
    one_pass(client, body)
    assert len(client.pod_queries) == queries


def test_the_first_pass_guards_the_ray_cluster_with_policies_and_a_budget() -> None:
    client = FakeClient(trainings=(succeeded_training(),))
    one_pass(client, deployment_body({"fromTraining": "quickstart"}))
    head_policy = client.applied("NetworkPolicy", NAMES.head)
    worker_policy = client.applied("NetworkPolicy", NAMES.worker)
    budget = client.applied("PodDisruptionBudget", NAMES.worker)
    head = client.applied("Deployment", NAMES.head)["spec"]["template"]["metadata"]["labels"]
    workers = client.applied("Deployment", NAMES.worker)["spec"]["template"]["metadata"]
    assert head_policy["spec"]["podSelector"]["matchLabels"] == head
    assert worker_policy["spec"]["podSelector"]["matchLabels"] == workers["labels"]
    assert budget["spec"]["selector"]["matchLabels"] == workers["labels"]


def test_a_body_that_does_not_parse_is_rejected_once_and_then_left_alone() -> None:
    body = deployment_body({"fromTraining": "quickstart"})
    body["spec"]["replicas"] = {"min": 3, "max": 1}
    client = FakeClient(trainings=(succeeded_training(),))
    assert one_pass(client, body) == "Rejected"
    (patch,) = client.status_patches
    ready = next(cond for cond in patch["conditions"] if cond["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", c.REASON_INVALID_SPEC)
    assert "spec.replicas" in ready["message"]
    assert [event[1] for event in client.events] == [c.REASON_INVALID_SPEC]
    assert client.objects == {}

    writes = client.writes
    body["status"] = patch
    for _ in range(3):
        assert one_pass(client, body) == "Rejected"
    assert (client.writes, len(client.events)) == (writes, 1)


def test_a_spec_the_builders_refuse_is_rejected_with_nothing_applied() -> None:
    body = deployment_body({"fromTraining": "quickstart"})
    body["spec"]["resources"] = {"memory": "100Mi"}
    client = FakeClient(trainings=(succeeded_training(),))
    assert one_pass(client, body) == "Rejected"
    (patch,) = client.status_patches
    stalled = next(cond for cond in patch["conditions"] if cond["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", c.REASON_INVALID_SPEC)
    assert stalled["message"].startswith("spec.resources.memory")
    assert client.objects == {}
    body["status"] = patch
    writes = client.writes
    one_pass(client, body)
    assert client.writes == writes


def test_a_failed_training_rejects_until_it_is_recreated_and_succeeds() -> None:
    failed = succeeded_training()
    failed["status"] = {"phase": "Failed"}
    client = FakeClient(trainings=(failed,))
    body = deployment_body({"fromTraining": "quickstart"})
    assert one_pass(client, body) == "Rejected"
    (patch,) = client.status_patches
    assert next(x for x in patch["conditions"] if x["type"] == "Ready")["reason"] == (
        c.REASON_TRAINING_FAILED
    )
    assert client.objects == {}
    body["status"] = patch
    client.trainings["quickstart"] = succeeded_training()
    assert one_pass(client, body) == "Progressing"
    assert ("Deployment", NAMES.head) in client.objects


def test_an_s3_model_with_no_secret_and_no_default_is_rejected_with_nothing_applied() -> None:
    client = FakeClient()
    body = deployment_body({"uri": "s3://models/sentiment/run-1"})
    assert one_pass(client, body) == "Rejected"
    (patch,) = client.status_patches
    stalled = next(cond for cond in patch["conditions"] if cond["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", c.REASON_INVALID_SPEC)
    assert stalled["message"].startswith("spec.model.uri")
    assert "storage.defaultSecretName" in stalled["message"]
    assert client.objects == {}
