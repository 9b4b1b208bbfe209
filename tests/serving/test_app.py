"""The runtime's Serve app on real Ray Serve (HAProxy ingress), serving models trained here:
answers equal the model's, concurrent requests share batches, a third-party OIP client
works, bad requests get 4xx JSON, overload gets 503 with Retry-After, replicas follow load,
and batching changes live."""

from __future__ import annotations

import http.client
import json
import re
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from modelplane_harness.loadgen import BackgroundLoad, json_body, load
from modelplane_harness.waiting import wait_for
from modelplane_runtime.artifacts import load_artifact
from modelplane_runtime.data.builtin import breast_cancer, sentiment
from modelplane_runtime.data.raw import RawData
from tests.serving.conftest import Artifact, RunningServe, application, get, post

REVIEWS = ["what a wonderful film", "the plot was really boring", "the acting was not bad"]


def applications(text: Artifact, table: Artifact) -> list[dict[str, Any]]:
    return [
        application(
            "sentiment",
            text,
            {
                "replicas": {"min": 1, "max": 2},
                "autoscaling": {
                    "targetOngoingRequests": 2,
                    "upscaleDelaySeconds": 1,
                    "downscaleDelaySeconds": 4,
                },
                "batching": {"maxBatchSize": 16, "batchWaitTimeoutMs": 10},
            },
        ),
        application("cancer", table, route_prefix="/cancer"),
        # Room for 2 requests at work and 2 waiting: 32 clients overload it at once.
        application(
            "tiny",
            text,
            {
                "maxOngoingRequests": 2,
                "maxQueuedRequests": 2,
                "batching": {"maxBatchSize": 2, "batchWaitTimeoutMs": 50},
            },
            route_prefix="/tiny",
        ),
    ]


def expected_probabilities(model: Artifact, raw: RawData) -> np.ndarray[Any, Any]:
    loaded = load_artifact(model.path)
    return loaded.probabilities(loaded.encode(raw)).numpy()


def test_answers_over_http_equal_the_model_called_directly(
    serving: RunningServe, text_model: Artifact, table_model: Artifact
) -> None:
    expected = expected_probabilities(text_model, RawData(kind="text", texts=tuple(REVIEWS)))
    status, answer = post(f"{serving.endpoint}/predict", {"inputs": REVIEWS})
    assert status == 200, answer
    got = np.array(
        [[p["probabilities"][k] for k in answer["labels"]] for p in answer["predictions"]]
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)

    status, answer = post(
        f"{serving.endpoint}/v2/models/sentiment/infer",
        {
            "id": "q1",
            "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": REVIEWS}],
        },
    )
    assert status == 200, answer
    assert answer["id"] == "q1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 2]
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(3, 2), expected, atol=1e-5
    )
    labels = load_artifact(text_model.path).labels
    assert outputs["label"]["data"] == [labels[i] for i in expected.argmax(-1)]

    rows = breast_cancer().subset(np.arange(5))
    assert rows.array is not None
    status, answer = post(
        f"{serving.endpoint}/cancer/v2/models/cancer/infer",
        {
            "inputs": [
                {"name": "input", "shape": [5, 30], "datatype": "FP32", "data": rows.array.tolist()}
            ]
        },
    )
    assert status == 200, answer
    probabilities = np.array(answer["outputs"][1]["data"]).reshape(5, 2)
    np.testing.assert_allclose(probabilities, expected_probabilities(table_model, rows), atol=1e-5)


def _batch_count(metrics: str, application: str) -> float:
    """Forward passes one application made, from a Prometheus scrape. (The histogram's
    count is exact; Ray's exporter approximates its sum from the buckets.)"""
    pattern = re.compile(r"^ray_modelplane_batch_requests_count\{([^}]*)\} ([0-9.e+-]+)$")
    return sum(
        float(match.group(2))
        for match in map(pattern.match, metrics.splitlines())
        if match and f'application="{application}"' in match.group(1)
    )


def test_concurrent_requests_share_forward_passes(serving: RunningServe) -> None:
    texts = sentiment(count=200).texts
    before = _batch_count(serving.metrics(), "sentiment")
    result = load(
        f"{serving.endpoint}/predict",
        json_body(lambda n: {"inputs": [texts[n % len(texts)]]}),
        clients=16,
        seconds=4,
    )
    assert result.ok > 100, dict(result.statuses)
    assert result.failed == 0, dict(result.statuses)
    # Ray exports every few seconds: wait until the count stops moving.
    readings = [before]

    def settled() -> float | None:
        time.sleep(2)
        readings.append(_batch_count(serving.metrics(), "sentiment"))
        return readings[-1] if readings[-1] > before and readings[-1] == readings[-2] else None

    batches = wait_for(settled, timeout=60, what="the batch metric to be exported") - before
    assert result.ok / batches > 2, f"{result.ok} requests in {batches:.0f} forward passes"


def test_a_third_party_oip_client_reads_metadata_and_infers(
    serving: RunningServe, text_model: Artifact
) -> None:
    client = triton.InferenceServerClient(serving.endpoint.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("sentiment")
    metadata = client.get_model_metadata("sentiment")
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]

    texts = np.array([r.encode() for r in REVIEWS], dtype=np.object_)
    tensor = triton.InferInput("text", [len(REVIEWS)], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=False)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = client.infer("sentiment", [tensor], outputs=outputs)
    probabilities = result.as_numpy("probabilities")
    expected = expected_probabilities(text_model, RawData(kind="text", texts=tuple(REVIEWS)))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert [str(x) for x in result.as_numpy("label")] == [
        load_artifact(text_model.path).labels[i] for i in expected.argmax(-1)
    ]


def _tensor(**changes: Any) -> dict[str, Any]:
    base = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["fine"]}
    return {"inputs": [{**base, **changes}]}


INFER = "/v2/models/sentiment/infer"
MALFORMED = [
    ("a body that is not JSON", INFER, b"{oops", {}, 400, "invalid_json"),
    ("an empty body", INFER, b"", {}, 400, "invalid_json"),
    ("a body without inputs", INFER, {"id": "x"}, {}, 400, "invalid_request"),
    ("an unknown model", "/v2/models/nope/infer", _tensor(), {}, 404, "unknown_model"),
    (
        "an unknown model version",
        "/v2/models/sentiment/versions/0/infer",
        _tensor(),
        {},
        404,
        "unknown_version",
    ),
    ("an unknown input name", INFER, _tensor(name="words"), {}, 400, "unknown_input"),
    ("the wrong datatype", INFER, _tensor(datatype="FP32", data=[0.5]), {}, 400, "wrong_datatype"),
    ("a shape the data does not fill", INFER, _tensor(shape=[2]), {}, 400, "shape_mismatch"),
    ("a matrix of texts", INFER, _tensor(shape=[1, 1]), {}, 400, "wrong_shape"),
    ("an empty batch", INFER, _tensor(shape=[0], data=[]), {}, 400, "empty_batch"),
    ("too many inputs", INFER, _tensor(shape=[300], data=["x"] * 300), {}, 413, "too_large"),
    (
        "binary tensor data",
        INFER,
        _tensor(),
        {"Inference-Header-Content-Length": "10"},
        415,
        "unsupported_media_type",
    ),
    ("predict without a list", "/predict", {"inputs": "fine"}, {}, 400, "invalid_request"),
    ("a path that does not exist", "/v3/infer", _tensor(), {}, 404, "not_found"),
    (
        "floats for the table model's text",
        "/cancer/v2/models/cancer/infer",
        _tensor(name="input"),
        {},
        400,
        "wrong_datatype",
    ),
]


@pytest.mark.parametrize(
    ("path", "payload", "headers", "status", "code"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_a_malformed_request_gets_a_4xx_json_error(
    serving: RunningServe,
    path: str,
    payload: Any,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    got, body = post(f"{serving.endpoint}{path}", payload, headers=headers)
    assert (got, body.get("code") if isinstance(body, dict) else body) == (status, code)
    assert isinstance(body["error"], str)
    assert len(body["error"]) > 10
    # The replica that refused it still answers.
    assert post(f"{serving.endpoint}/predict", {"inputs": ["fine"]})[0] == 200


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    serving: RunningServe,
) -> None:
    host, port = serving.endpoint.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(1 << 30))
        # A few bytes of the gibibyte declared: the answer must not wait for the rest.
        connection.endheaders(b'{"inputs": ["fine"]}')
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert (response.status, body["code"]) == (413, "too_large"), body
    assert post(f"{serving.endpoint}/predict", {"inputs": ["fine"]})[0] == 200


def test_overload_gets_503_with_retry_after_and_serving_continues(serving: RunningServe) -> None:
    result = load(
        f"{serving.endpoint}/tiny/predict",
        json_body(lambda n: {"inputs": [REVIEWS[n % 3]]}),
        clients=32,
        seconds=3,
    )
    assert result.statuses.get(503, 0) > 0, dict(result.statuses)
    assert result.retry_after == {"1"}
    assert set(result.statuses) <= {200, 503}, dict(result.statuses)
    assert result.ok > 0
    # Latency of what was admitted stays bounded: at most 4 requests ever wait.
    assert result.percentile(99) < 2.0
    status, answer = post(f"{serving.endpoint}/tiny/predict", {"inputs": REVIEWS})
    assert status == 200, answer


def test_replicas_follow_a_load_step_up_to_max_and_back(serving: RunningServe) -> None:
    assert wait_for(
        lambda: serving.running_replicas("sentiment") == 1, timeout=60, what="1 replica"
    )
    texts = sentiment(count=100).texts
    started = time.monotonic()
    seen = {"max": 1}

    def scaled_up() -> bool:
        seen["max"] = max(seen["max"], serving.running_replicas("sentiment"))
        return seen["max"] == 2

    background = BackgroundLoad(
        f"{serving.endpoint}/predict",
        json_body(lambda n: {"inputs": [texts[n % len(texts)]]}),
        clients=16,
        seconds=60,
    )
    with background:
        # A new replica is a new Ray worker process: importing torch and loading the model
        # on 2 cores that the load already saturates takes most of this time.
        wait_for(scaled_up, timeout=50, what="a second replica under load")
        took = time.monotonic() - started
        time.sleep(3)  # requests keep succeeding while both replicas serve
    result = background.result
    assert result.failed == 0, dict(result.statuses)
    print(f"scaled to 2 replicas {took:.1f} s after the load step")
    # downscaleDelaySeconds is 4: back to min soon after the load stops.
    wait_for(
        lambda: serving.running_replicas("sentiment") == 1,
        timeout=60,
        what="the idle deployment to scale back to 1 replica",
    )


def test_batching_changes_live_without_replacing_replicas(serving: RunningServe) -> None:
    def replica_ids() -> set[str]:
        replicas = serving.applications()["cancer"]["deployments"]["model"]["replicas"]
        return {r["replica_id"] for r in replicas if r["state"] == "RUNNING"}

    before = replica_ids()
    config = serving.config
    (cancer,) = [a for a in config["applications"] if a["name"] == "cancer"]
    cancer["deployments"][0]["user_config"] = {"max_batch_size": 7, "batch_wait_timeout_s": 0.02}
    event = serving.redeploy(config)
    assert event["event"] == "ready", event

    def batching() -> dict[str, Any] | None:
        status, metadata = get(f"{serving.endpoint}/cancer/v2/models/cancer")
        value = metadata["parameters"]["batching"] if status == 200 else None
        return value if value and value["max_batch_size"] == 7 else None

    assert wait_for(batching, timeout=60, what="the new batch size") == {
        "max_batch_size": 7,
        "batch_wait_timeout_s": 0.02,
    }
    assert replica_ids() == before
