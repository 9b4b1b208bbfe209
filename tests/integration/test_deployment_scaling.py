"""The scaling loop against a real Ray: the operator's reconcile reads a real Serve
application's state through the dashboard seam (`Settings.dashboard_url` pointed at a
local Ray started with the runtime's runner and the deployment's token) and sizes the
worker Deployment on the test control plane, while real load drives Serve's autoscaler.
The same Ray's metrics port stands in for the head's and the replicas' nodes'
(`Settings.metrics_url`, `replica_metrics_url`), so `status.load` is measured for real.

The session operator is stopped for this test, so the passes here are the only ones.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import shutil
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from lightkube import AsyncClient, KubeConfig

from modelplane.serving import start_server
from modelplane_harness.cluster import LocalCluster, free_port
from modelplane_harness.loadgen import BackgroundLoad, json_body
from modelplane_harness.waiting import wait_for
from modelplane_operator import constants as c
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.client import Client
from modelplane_operator.dashboard import Dashboard
from modelplane_operator.reconcile.serving import reconcile_deployment
from modelplane_operator.serve_config import render_serve_config
from modelplane_operator.serve_metrics import LoadTracker, fetch_metrics
from modelplane_operator.settings import Settings
from modelplane_runtime.contract import GENERATION_ENGINE, DataConfig, OptimConfig
from modelplane_runtime.data.builtin import sentiment
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.factories import make_deployment
from tests.runtime.conftest import TINY_LLAMA, WORDS, make_lm_config
from tests.serving.conftest import TEXT_PARAMS, Artifact, _train

NAME = "sentiment"
SPEC = {
    "spec.replicas": {"min": 1, "max": 2},
    "spec.autoscaling": {
        "targetOngoingRequests": 2,
        "upscaleDelaySeconds": 1,
        "downscaleDelaySeconds": 4,
    },
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return _train(
        tmp_path_factory.mktemp("model"),
        NAME,
        architecture="transformer",
        task="text-classification",
        params=TEXT_PARAMS,
        optim=OptimConfig(epochs=1, batch_size=32, learning_rate=2e-3),
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.2),
    )


@pytest.fixture(scope="module")
def model_v2(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """Another version of the model: more training, other weights and digest."""
    return _train(
        tmp_path_factory.mktemp("model-v2"),
        NAME,
        architecture="transformer",
        task="text-classification",
        params=TEXT_PARAMS,
        optim=OptimConfig(epochs=2, batch_size=32, learning_rate=2e-3, seed=7),
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.2),
    )


@pytest.fixture(scope="module")
def language_model(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """A tiny llama trained in about a second on prompts with long answers (60-90
    words), so that greedy decoding runs to max_tokens instead of stopping at once: each
    request is a sequence in the replica's batch for as long as it takes to generate."""
    root = tmp_path_factory.mktemp("lm")
    rng = random.Random(0)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    train = root / "train.jsonl"
    train.write_text(
        "".join(
            json.dumps({"prompt": words(2, 6), "response": words(60, 90)}) + "\n" for _ in range(48)
        )
    )
    config = make_lm_config(
        root,
        name="lm",
        params={**TINY_LLAMA, "max_length": 128},
        data=DataConfig(train_uri=f"file://{train}", validation_split=0.25),
    )
    result = Trainer(config, env=DistEnv()).fit()
    return Artifact(path=root / "out" / "lm", digest=result.digest, metrics=result.metrics)


class Passes:
    """Reconcile passes every `interval` s in a background thread, as the resync does."""

    def __init__(
        self, cluster: LocalCluster, namespace: str, dashboard_url: str, metrics_port: int
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.settings = Settings(
            dashboard_url=dashboard_url,
            metrics_url=f"http://127.0.0.1:{metrics_port}",
            replica_metrics_url=f"http://{{ip}}:{metrics_port}",
        )
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        api = AsyncClient(
            config=KubeConfig.from_file(str(self.cluster.kubeconfig)),
            field_manager=c.FIELD_MANAGER,
        )
        client = Client(api)
        async with aiohttp.ClientSession() as http:
            load = LoadTracker(lambda url: fetch_metrics(http, url))
            while not self.stop.is_set():
                try:
                    body = await client.get_model_deployment(self.namespace, NAME)
                    if body is not None:
                        await reconcile_deployment(
                            client,
                            body,
                            settings=self.settings,
                            now=datetime.now(UTC),
                            dashboard_for=lambda url, token: Dashboard(url, token, http),
                            load=load,
                        )
                except Exception as error:  # reported by the test's last assertion
                    self.errors.append(error)
                await asyncio.sleep(1)
        await client.close()


@contextmanager
def ray_for(
    cluster: LocalCluster, namespace: str, obj: dict[str, Any], model: Artifact, workdir: Path
) -> Iterator[tuple[Any, Passes]]:
    """Apply the deployment and its token Secret, start a local Ray serving it as its head
    would, and run reconcile passes that reach that Ray through the seam, for as long as
    the `with` block lasts."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(obj))
    token = secrets.token_hex(16)
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        f"{NAME}-ray-token",
        "-n",
        namespace,
        f"--from-literal=token={token}",
    )
    deployment = ModelDeployment.model_validate(obj)
    config = render_serve_config(
        deployment,
        model.resolved(),
        replica_cpus=0.5,
        http_host="127.0.0.1",
        http_port=free_port(),
    )
    config["applications"][0]["args"]["threads"] = 1
    dashboard_port = free_port()
    metrics_port = free_port()
    server = start_server(
        config,
        workdir=workdir,
        num_cpus=2,
        metrics_port=metrics_port,
        dashboard_port=dashboard_port,
        env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
    )
    passes = Passes(cluster, namespace, f"http://127.0.0.1:{dashboard_port}", metrics_port)
    passes.thread.start()
    try:
        yield server, passes
    finally:
        passes.stop.set()
        passes.thread.join(timeout=30)
        server.stop()


def phase(cluster: LocalCluster, namespace: str) -> str:
    status: dict[str, Any] = cluster.get_json("md", NAME, "-n", namespace).get("status") or {}
    return str(status.get("phase"))


def status_load(cluster: LocalCluster, namespace: str) -> dict[str, float]:
    status: dict[str, Any] = cluster.get_json("md", NAME, "-n", namespace).get("status") or {}
    return dict(status.get("load") or {})


def workers(cluster: LocalCluster, namespace: str) -> int:
    manifest = cluster.get_json("deployment", f"{NAME}-ray-worker", "-n", namespace)
    return int(manifest["spec"]["replicas"])


def test_worker_pods_follow_serves_replicas_up_under_load_and_down_after(
    crds: LocalCluster,
    namespace: str,
    paused_operator: None,
    model: Artifact,
    tmp_path: Path,
) -> None:
    obj = make_deployment({"spec.model": {"uri": model.uri}, **SPEC}, name=NAME)
    with ray_for(crds, namespace, obj, model, tmp_path / "serve") as (server, passes):
        wait_for(lambda: phase(crds, namespace) == "Ready", timeout=60, what="Ready")
        assert workers(crds, namespace) == 1
        texts = sentiment(count=100).texts
        background = BackgroundLoad(
            f"{server.endpoint}/predict",
            json_body(lambda n: {"inputs": [texts[n % len(texts)]]}),
            clients=16,
            seconds=100,  # a ceiling: leaving the block stops the clients
        )
        started = time.monotonic()
        with background:
            wait_for(lambda: workers(crds, namespace) == 2, timeout=50, what="a second worker")
            took = time.monotonic() - started
            print(f"worker Deployment at 2 replicas {took:.1f} s after the load step")
            # Ray pushes its metrics every 10 s: a rate needs two pushes after the step.
            measured = wait_for(
                lambda: (
                    figures
                    if (figures := status_load(crds, namespace)).get("ongoingRequests", 0) > 0
                    and figures.get("requestsPerSecond", 0) > 0
                    else None
                ),
                timeout=40,
                what="status.load to show the requests in flight and their rate",
            )
            measured_at = time.monotonic()
        result = background.result
        assert result.failed == 0, dict(result.statuses)
        # The status's rate is the replicas' count over about the last 30 s, seen up to a
        # push late: the same order as what the clients had answered.
        # Over the load's own time when it ran less than 30 s (a rate quickly measured).
        window = min(30.0, measured_at - started)
        answered = (
            sum(1 for t in result.finished if measured_at - window <= t <= measured_at) / window
        )
        print(f"status.load under 16 clients: {measured}; clients saw {answered:.0f}/s")
        assert answered / 2 <= measured["requestsPerSecond"] <= answered * 2
        wait_for(
            lambda: workers(crds, namespace) == 1,
            timeout=60,
            what="the worker Deployment to shrink back after the load",
        )
        status = crds.get_json("md", NAME, "-n", namespace)["status"]
        assert status["lastScaleTime"]
        events = crds.get_json(
            "events", "-n", namespace, "--field-selector", f"involvedObject.name={NAME}"
        )["items"]
        scaled = [e["message"] for e in events if e["reason"] == "Scaled"]
        assert any("up from 1 to 2" in m for m in scaled), scaled
        assert any("down from 2 to 1" in m for m in scaled), scaled
        assert passes.errors == []


@dataclass
class Streamed:
    """What the streaming clients saw: every request's end, tokens and failure."""

    finished: list[tuple[float, int]] = field(default_factory=list)
    """(`time.monotonic()` at [DONE], completion tokens) of each request that succeeded."""
    failures: Counter[str] = field(default_factory=Counter)
    """Why requests failed -> count."""

    def tokens_per_second(self, start: float, end: float) -> float:
        return sum(n for t, n in self.finished if start <= t <= end) / (end - start)


class StreamingLoad:
    """`clients` closed-loop clients, each sending a streaming POST /v1/completions as
    soon as its last stream ended, for as long as a `with` block lasts; a stream in
    flight when the block ends is read to its end. A request fails on a status other
    than 200, an error event, or a stream that ends without `data: [DONE]`."""

    def __init__(self, url: str, *, model: str, clients: int, max_tokens: int) -> None:
        self.url, self.model, self.clients, self.max_tokens = url, model, clients, max_tokens
        self.result = Streamed()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> StreamingLoad:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "a stream did not end within 60 s of the load"

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession, client: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            body = {
                "model": self.model,
                "prompt": " ".join(WORDS[(client + n + i) % len(WORDS)] for i in range(4)),
                "max_tokens": self.max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            failure = await self._stream(session, body)
            if failure is not None:
                self.result.failures[failure] += 1
                await asyncio.sleep(0.05)

    async def _stream(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> str | None:
        """Send one request and read its events; why it failed, None if it did not."""
        tokens = 0
        try:
            async with session.post(f"{self.url}/v1/completions", json=body) as response:
                if response.status != 200:
                    return f"HTTP {response.status}: {(await response.text())[:200]}"
                async for line in response.content:
                    text = line.decode().strip()
                    if not text.startswith("data:"):
                        continue
                    data = text.removeprefix("data:").strip()
                    if data == "[DONE]":
                        self.result.finished.append((time.monotonic(), tokens))
                        return None
                    event = json.loads(data)
                    if "error" in event:
                        return f"error event: {data[:200]}"
                    if event.get("usage"):
                        tokens = int(event["usage"]["completion_tokens"])
                return "the stream ended without [DONE]"
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            return f"{type(error).__name__}: {error}"[:200]


def test_a_language_models_workers_follow_the_sequence_target_under_streamed_generation(
    crds: LocalCluster,
    namespace: str,
    paused_operator: None,
    language_model: Artifact,
    tmp_path: Path,
) -> None:
    """Six streams on a replica whose target is two ongoing sequences: Serve wants three
    replicas, gets its max of two, the worker Deployment follows, status.load shows the
    tokens and sequences, and it all shrinks back once the streams stop."""
    obj = make_deployment(
        {
            "spec.model": {"uri": language_model.uri},
            **SPEC,
            "spec.generation": {"maxSequences": 4, "maxWaiting": 8, "maxTokens": 64},
        },
        name=NAME,
    )
    with ray_for(crds, namespace, obj, language_model, tmp_path / "serve") as (server, passes):
        wait_for(lambda: phase(crds, namespace) == "Ready", timeout=60, what="Ready")
        assert workers(crds, namespace) == 1
        status = crds.get_json("md", NAME, "-n", namespace)["status"]
        assert status["engine"] == GENERATION_ENGINE
        streams = StreamingLoad(server.endpoint, model=NAME, clients=6, max_tokens=48)
        started = time.monotonic()
        with streams:
            wait_for(lambda: workers(crds, namespace) == 2, timeout=60, what="a second worker")
            took = time.monotonic() - started
            print(f"worker Deployment at 2 replicas {took:.1f} s after the load step")
            # Ray pushes its metrics every 10 s: a rate needs two pushes after the step.
            measured = wait_for(
                lambda: (
                    figures
                    if (figures := status_load(crds, namespace)).get("tokensPerSecond", 0) > 0
                    and figures.get("runningSequences", 0) > 0
                    else None
                ),
                timeout=40,
                what="status.load to show the sequences generating and the tokens' rate",
            )
            measured_at = time.monotonic()
        stopped = time.monotonic()
        result = streams.result
        assert not result.failures, dict(result.failures)
        # The status's rate is over about the last 30 s (or the load's own time, when it
        # ran less), seen up to a push late: the same order as what the clients received.
        window = min(30.0, measured_at - started)
        received = result.tokens_per_second(measured_at - window, measured_at)
        print(
            f"status.load under 6 streams: {measured}; clients received {received:.0f} "
            f"tokens/s; {len(result.finished)} streams, none failed"
        )
        assert received / 2 <= measured["tokensPerSecond"] <= received * 2
        # Every running or waiting sequence is one of the six clients' streams.
        assert measured["runningSequences"] + measured.get("waitingSequences", 0) <= 6
        # Serve stops the removed replica only after its ingress drain (about 30 s in
        # Ray 2.60), and the worker it holds stays until then.
        wait_for(
            lambda: workers(crds, namespace) == 1,
            timeout=90,
            what="the worker Deployment to shrink back after the load",
        )
        shrank = time.monotonic() - stopped
        print(f"worker Deployment back at 1 replica {shrank:.1f} s after the load stopped")
        status = crds.get_json("md", NAME, "-n", namespace)["status"]
        assert status["lastScaleTime"]
        events = crds.get_json(
            "events", "-n", namespace, "--field-selector", f"involvedObject.name={NAME}"
        )["items"]
        scaled = [e["message"] for e in events if e["reason"] == "Scaled"]
        assert any("up from 1 to 2" in m for m in scaled), scaled
        assert any("down from 2 to 1" in m for m in scaled), scaled
        assert passes.errors == []


def test_a_new_model_is_pushed_in_place_and_served_without_failed_requests(
    crds: LocalCluster,
    namespace: str,
    paused_operator: None,
    model: Artifact,
    model_v2: Artifact,
    tmp_path: Path,
) -> None:
    obj = make_deployment(
        {"spec.model": {"uri": model.uri}, "spec.replicas": {"min": 1, "max": 1}}, name=NAME
    )
    with ray_for(crds, namespace, obj, model, tmp_path / "serve") as (server, passes):
        wait_for(lambda: phase(crds, namespace) == "Ready", timeout=60, what="Ready")

        def served_digest() -> str:
            with urllib.request.urlopen(f"{server.endpoint}/v2/models/{NAME}", timeout=10) as r:
                return str(json.loads(r.read())["parameters"]["digest"])

        assert served_digest() == model.digest
        background = BackgroundLoad(
            f"{server.endpoint}/predict",
            json_body(lambda n: {"inputs": ["what a wonderful film"]}),
            clients=8,
            seconds=120,
        )
        with background:
            time.sleep(2)
            crds.kubectl(
                "patch",
                "md",
                NAME,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"model": {"uri": model_v2.uri}}}),
            )
            started = time.monotonic()
            wait_for(
                lambda: served_digest() == model_v2.digest,
                timeout=90,
                what="the new model to be served",
            )
            took = time.monotonic() - started
            time.sleep(2)
        result = background.result
        print(f"new model served {took:.1f} s after the spec change; {dict(result.statuses)}")
        assert result.ok > 50
        assert result.failed == 0, dict(result.statuses)
        status = crds.get_json("md", NAME, "-n", namespace)["status"]
        assert status["model"]["uri"] == model_v2.uri
        assert passes.errors == []


def test_a_serve_deployment_error_shows_in_the_condition_with_serves_reason(
    crds: LocalCluster,
    namespace: str,
    paused_operator: None,
    model: Artifact,
    tmp_path: Path,
) -> None:
    obj = make_deployment(
        {"spec.model": {"uri": model.uri}, "spec.replicas": {"min": 1, "max": 1}}, name=NAME
    )
    with ray_for(crds, namespace, obj, model, tmp_path / "serve") as (server, _passes):
        wait_for(lambda: phase(crds, namespace) == "Ready", timeout=60, what="Ready")
        corrupt = tmp_path / "corrupt"
        shutil.copytree(model.path, corrupt)
        weights = corrupt / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # one flipped byte: the card's digest no longer matches
        weights.write_bytes(bytes(data))
        crds.kubectl(
            "patch",
            "md",
            NAME,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"model": {"uri": f"file://{corrupt}"}}}),
        )

        def degraded() -> dict[str, Any] | None:
            status = crds.get_json("md", NAME, "-n", namespace).get("status") or {}
            return status if status.get("phase") == "Degraded" else None

        status = wait_for(degraded, timeout=120, what="the deployment to be Degraded")
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "ApplicationError"
        assert "Serve reports DEPLOY_FAILED" in ready["message"]
        assert "does not match" in ready["message"]
        assert "Traceback" not in ready["message"]
        # The old replicas keep answering while the new version cannot start.
        with urllib.request.urlopen(f"{server.endpoint}/v2/models/{NAME}", timeout=10) as r:
            assert json.loads(r.read())["parameters"]["digest"] == model.digest
