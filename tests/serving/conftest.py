"""Serving tests: real torch models trained here, the runtime's app on real Ray Serve.

One local Ray cluster serves every application the module needs (each test's own
application under its own route prefix), because starting Ray costs ~20 s on 2 cores.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from modelplane.serving import LocalServer, start_server
from modelplane_harness.cluster import free_port
from modelplane_operator.api.resources import ModelDeployment
from modelplane_operator.serve_config import ResolvedModel, render_serve_config
from modelplane_runtime.contract import DataConfig, OptimConfig
from modelplane_runtime.train.distributed import DistEnv
from modelplane_runtime.train.loop import Trainer
from tests.factories import make_deployment
from tests.runtime.conftest import make_config

TEXT_PARAMS = {"layers": 1, "hidden": 32, "heads": 2, "max_length": 32, "vocab_size": 500}


@pytest.fixture(autouse=True)
def _restore_fused_attention() -> Iterator[None]:
    """Serving int8 turns torch's fused attention path off for the process (a replica
    serves one model); later tests in this process get it back."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    yield
    torch.backends.mha.set_fastpath_enabled(enabled)


@dataclass(frozen=True)
class Artifact:
    path: Path
    digest: str
    metrics: dict[str, float]

    @property
    def uri(self) -> str:
        return f"file://{self.path}"

    def resolved(self) -> ResolvedModel:
        return ResolvedModel(uri=self.uri, digest=self.digest, metrics=self.metrics)


def _train(root: Path, name: str, **overrides: Any) -> Artifact:
    config = make_config(root, name=name, **overrides)
    result = Trainer(config, env=DistEnv()).fit()
    return Artifact(path=root / "out" / name, digest=result.digest, metrics=result.metrics)


@pytest.fixture(scope="session")
def storage_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One storage cache for the session's SmolLM2 servers: the first converts the
    shipped GGUF into a Hugging Face folder there (~30 s), the others reuse it."""
    return tmp_path_factory.mktemp("storage-cache")


@pytest.fixture(scope="session")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return _train(
        tmp_path_factory.mktemp("text"),
        "sentiment",
        architecture="transformer",
        task="text-classification",
        params=TEXT_PARAMS,
        optim=OptimConfig(epochs=2, batch_size=32, learning_rate=2e-3),
        data=DataConfig(train_uri="builtin://sentiment", validation_split=0.2),
    )


@pytest.fixture(scope="session")
def table_model(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return _train(tmp_path_factory.mktemp("table"), "cancer")


def application(
    name: str,
    model: Artifact,
    spec: dict[str, Any] | None = None,
    *,
    route_prefix: str = "/",
    replica_cpus: float = 0.5,
) -> dict[str, Any]:
    """One Serve application as the operator renders it, under `route_prefix`. Replicas
    get half a CPU and one torch thread each, so several fit on a 2-core machine."""
    changes = {f"spec.{k}": v for k, v in (spec or {}).items()}
    deployment = ModelDeployment.model_validate(
        make_deployment({"spec.model": {"uri": model.uri}, **changes}, name=name)
    )
    config = render_serve_config(deployment, model.resolved(), replica_cpus=replica_cpus)
    (app,) = config["applications"]
    app["route_prefix"] = route_prefix
    app["args"]["threads"] = 1
    return app  # type: ignore[no-any-return]


def serve_config(*applications: dict[str, Any], port: int) -> dict[str, Any]:
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": list(applications),
    }


@dataclass
class RunningServe:
    """A local Serve instance with its endpoint, metrics and dashboard."""

    server: LocalServer
    config: dict[str, Any]
    metrics_url: str
    dashboard_url: str
    token: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def redeploy(self, config: dict[str, Any], *, timeout_s: float = 120) -> dict[str, Any]:
        """Write a new config; the runner deploys it in place. Returns its last event."""
        self.config = config
        self.server.config_path.write_text(json.dumps(config, indent=2))
        event = self.server.next_event(30)
        assert event["event"] == "redeploying", event
        return self.server.next_event(timeout_s)

    def applications(self) -> dict[str, Any]:
        """Serve's application details from the dashboard REST API (token auth on)."""
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/serve/applications/",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            details: dict[str, Any] = json.loads(response.read())
        return details["applications"]  # type: ignore[no-any-return]

    def running_replicas(self, application: str) -> int:
        deployment = self.applications()[application]["deployments"]["model"]
        return sum(1 for r in deployment["replicas"] if r["state"] == "RUNNING")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode()  # type: ignore[no-any-return]


def start_serve(
    config: dict[str, Any], workdir: Path, *, env: dict[str, str] | None = None
) -> RunningServe:
    metrics_port, dashboard_port = free_port(), free_port()
    token = secrets.token_hex(16)
    server = start_server(
        config,
        workdir=workdir,
        num_cpus=2,
        metrics_port=metrics_port,
        dashboard_port=dashboard_port,
        env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **(env or {})},
    )
    return RunningServe(
        server=server,
        config=config,
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        token=token,
    )


@pytest.fixture(scope="module")
def serving(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServe]:
    """The module's Serve instance; a module defines `applications(text, table)`."""
    build = request.module.applications
    text, table = request.getfixturevalue("text_model"), request.getfixturevalue("table_model")
    config = serve_config(*build(text, table), port=free_port())
    running = start_serve(config, tmp_path_factory.mktemp("serve"))
    try:
        yield running
    finally:
        running.server.stop()
        if request.session.testsfailed:
            log = running.server.log_path.read_text(errors="replace").splitlines()
            print("\n".join(["--- serve.log (last 80 lines) ---", *log[-80:]]))


def post(url: str, payload: Any, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a POST; 4xx/5xx answers included."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, body.decode(errors="replace")


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
