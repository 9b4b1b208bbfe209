"""The getting-started journey with object storage instead of a claim, on the real node.

A real S3-compatible server (SeaweedFS, harness/s3.py) runs in the node's network
namespace at the node's address, where pods reach it as they would a store in the cluster
or beside it; nothing else changes: the chart's operator, the runtime image built from
this tree, the quickstart training and deployment with `s3://` URIs and a Secret of
credentials. Then two faults: the store stopped while a training writes to it (the
training retries, says why, and completes from the checkpoint the bucket holds once the
store is back), and a served object whose bytes changed (refused, the condition naming
the object, the old model serving meanwhile).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from modelplane_harness.cluster import LocalCluster
from modelplane_harness.operator import OPERATOR_NAMESPACE, RELEASE, install_chart
from modelplane_harness.realserving import service_url
from modelplane_harness.s3 import S3Server, build_weed
from modelplane_harness.waiting import wait_for
from tests.factories import EXAMPLES
from tests.integration.conftest import _test_namespace

OPERATOR = f"{RELEASE}-operator"
NAME = "quickstart"
SECRET = "s3-credentials"
REVIEWS = ["what a wonderful film", "the plot was really boring"]
pytestmark = pytest.mark.timeout(900)


@dataclass
class Store:
    cluster: LocalCluster
    namespace: str
    server: S3Server
    bucket: str

    def training(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.cluster.get_json("mt", name, "-n", self.namespace).get(
            "status", {}
        )
        return status

    def deployment(self) -> dict[str, Any]:
        status: dict[str, Any] = self.cluster.get_json("md", NAME, "-n", self.namespace).get(
            "status", {}
        )
        return status

    def keys(self, prefix: str) -> list[str]:
        listed = self.server.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def apply(self, *documents: dict[str, Any]) -> None:
        text = "---\n".join(yaml.safe_dump(d) for d in documents)
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input_text=text)

    def query(self) -> dict[str, Any]:
        node = self.cluster.node
        assert node is not None
        body = json.dumps({"inputs": REVIEWS})
        curl = node.exec_in_netns(
            ["curl", "-sf", "-X", "POST", service_url(self.cluster, self.namespace, NAME),
             "-H", "content-type: application/json", "-d", body],
        )  # fmt: skip
        assert curl.returncode == 0, curl.stderr
        answer: dict[str, Any] = json.loads(curl.stdout)
        return answer


def _secret(server: S3Server, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "Opaque",
        "stringData": server.env(ip=ip),
    }


def _training(bucket: str, name: str, **spec: Any) -> dict[str, Any]:
    training: dict[str, Any] = yaml.safe_load((EXAMPLES / "quickstart-training.yaml").read_text())
    training["metadata"]["name"] = name
    training["spec"]["output"]["uri"] = f"s3://{bucket}/models"
    training["spec"]["storage"] = {"secretRef": {"name": SECRET}}
    training["spec"].update(spec)
    return training


@pytest.fixture(scope="module")
def store(real_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[Store]:
    """The chart's operator, a bucket in a store inside the node's network, and the
    namespace's Secret of credentials for it."""
    node = real_cluster.node
    assert node is not None
    assert node.network is not None
    # Pods have routes only to their subnet and Services: they reach the store at their
    # gateway (the bridge's address in the node's namespace), the host at the node's.
    network = node.network
    server = S3Server(build_weed(), ip=network.node_ip, bind="0.0.0.0", netns=network.netns)
    server.start()
    install_chart(real_cluster)
    namespaces = _test_namespace(real_cluster, request, logs=True)
    namespace = next(namespaces)
    try:
        real_cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}",
            "--timeout=180s",
        )  # fmt: skip
        store = Store(real_cluster, namespace, server, server.fresh_bucket("journey"))
        store.apply(_secret(server, network.pod_gateway))
        yield store
    finally:
        for _ in namespaces:
            pass
        real_cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=180s",
                             check=False)  # fmt: skip
        real_cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)
        server.cleanup()


def test_the_getting_started_journey_trains_into_a_bucket_and_serves_from_it(
    store: Store,
) -> None:
    deployment: dict[str, Any] = yaml.safe_load(
        (EXAMPLES / "quickstart-deployment.yaml").read_text()
    )
    deployment["spec"]["storage"] = {"secretRef": {"name": SECRET}}
    deployment["spec"]["resources"] = {"cpu": "250m", "memory": "2Gi"}
    store.apply(_training(store.bucket, NAME), deployment)

    def succeeded() -> dict[str, Any] | None:
        status = store.training(NAME)
        assert status.get("phase") != "Failed", status
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(succeeded, timeout=600, what=f"{NAME} to succeed")
    artifact = status["artifact"]
    assert artifact["uri"] == f"s3://{store.bucket}/models/{NAME}", artifact
    keys = store.keys(f"models/{NAME}/")
    for name in ("model.safetensors", "model_card.json", "tokenizer.json", "result.json"):
        assert f"models/{NAME}/{name}" in keys, keys
    card = json.loads(
        store.server.client()
        .get_object(Bucket=store.bucket, Key=f"models/{NAME}/model_card.json")["Body"]
        .read()
    )
    assert card["digest"] == artifact["digest"]
    assert status["metrics"]["accuracy"] >= 0.8, status["metrics"]

    def ready() -> dict[str, Any] | None:
        md: dict[str, Any] = store.deployment()
        return md if md.get("phase") == "Ready" else None

    md = wait_for(ready, timeout=420, what=f"{NAME} Ready from the bucket")
    assert md["model"]["uri"] == artifact["uri"], md["model"]
    assert md["model"]["digest"] == artifact["digest"], md["model"]
    answer = store.query()
    assert len(answer["predictions"]) == len(REVIEWS), answer


def test_a_served_object_whose_bytes_changed_is_refused_naming_it(store: Store) -> None:
    """Another prefix holds the same artifact with one byte of its weights changed: the
    rollout to it is refused with a condition naming the object, and the model that
    served before serves on."""
    wait_for(lambda: store.deployment().get("phase") == "Ready", timeout=300, what="Ready")
    client = store.server.client()
    source, target = f"models/{NAME}/", "models/tampered/"
    for key in store.keys(source):
        if "/checkpoints/" in key:
            continue
        data = client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
        if key.endswith("model.safetensors"):
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        client.put_object(Bucket=store.bucket, Key=target + key.removeprefix(source), Body=data)
    uri = f"s3://{store.bucket}/models/tampered"
    store.cluster.kubectl(
        "patch", "md", NAME, "-n", store.namespace, "--type=merge", "-p",
        json.dumps({"spec": {"model": {"uri": uri, "fromTraining": None}}}),
    )  # fmt: skip

    def refused() -> dict[str, Any] | None:
        md = store.deployment()
        ready: dict[str, Any] = next(
            (c for c in md.get("conditions", []) if c["type"] == "Ready"), {}
        )
        return ready if md.get("phase") == "Degraded" else None

    condition = wait_for(refused, timeout=300, what="the tampered model refused")
    assert f"{uri}/model.safetensors" in condition["message"], condition
    assert "digest" in condition["message"], condition
    assert len(store.query()["predictions"]) == len(REVIEWS)  # the old model serves on


def test_the_store_stopped_mid_run_the_training_retries_says_why_and_completes(
    store: Store,
) -> None:
    """One rank, a checkpoint every 25 steps. Once the bucket holds the first checkpoint
    the store stops: the next upload fails after its retries, the attempt ends, the
    status says which object could not be written; the store comes back and the next
    attempt resumes from the checkpoint in the bucket and completes."""
    name = "stalled"
    store.apply(
        _training(
            store.bucket,
            name,
            resources={"nodes": 1},
            checkpoint={"everySteps": 25, "keep": 2},
            maxRestarts=5,
        )
    )
    first = f"models/{name}/checkpoints/step-000000025.pt"
    wait_for(lambda: first in store.keys(f"models/{name}/"), timeout=300, what=first)
    store.server.stop()
    try:

        def says_why() -> str | None:
            status = store.training(name)
            assert status.get("phase") != "Failed", status
            for condition in status.get("conditions", []):
                if "could not" in condition.get("message", "") and "s3://" in condition.get(
                    "message", ""
                ):
                    return str(condition["message"])
            return None

        message = wait_for(says_why, timeout=300, what="the storage failure in the status")
        print(f"\nwhile the store is down: {message}")
        assert f"s3://{store.bucket}/models/{name}/" in message, message
    finally:
        began = time.monotonic()
        store.server.start()
        print(f"store back after {time.monotonic() - began:.1f} s")

    def succeeded() -> dict[str, Any] | None:
        status = store.training(name)
        assert status.get("phase") != "Failed", status
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(succeeded, timeout=600, what=f"{name} to succeed after the store is back")
    assert status["restarts"] >= 1, status
    assert f"models/{name}/model_card.json" in store.keys(f"models/{name}/")
    logs = store.cluster.kubectl(
        "logs", "-n", store.namespace, "-l", f"modelplane.io/training={name}", "--tail=-1",
        check=False,
    ).stdout  # fmt: skip
    assert "resumed from step-0000000" in logs, logs[-3000:]
