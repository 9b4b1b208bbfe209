"""The deployment handler: every pass reads the resource afresh, and a pass that raises
backs off instead of logging a traceback every second from the scaling loop."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import pytest

from modelplane_operator import handlers
from modelplane_operator.handlers import Backoff


class Client:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.gets = 0

    async def get_model_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        self.gets += 1
        return self.body


class Load:
    def forget(self, key: tuple[str, str]) -> None:
        pass


class State:
    def __init__(self, body: dict[str, Any]) -> None:
        self.client = Client(body)
        self.settings = None
        self.locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.backoff: dict[tuple[str, str], Backoff] = {}
        self.deployments: set[tuple[str, str]] = set()
        self.load = Load()

    def dashboard(self, url: str, token: str) -> None:
        return None


BODY = {"metadata": {"namespace": "ml", "name": "d", "generation": 1}, "status": {"phase": "X"}}


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> State:
    fake = State(BODY)
    monkeypatch.setitem(handlers.STATE, "state", fake)
    return fake


def test_a_failing_deployment_is_logged_once_per_backoff_step_not_every_second(
    state: State, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    passes = 0

    async def broken(*_: Any, **__: Any) -> str:
        nonlocal passes
        passes += 1
        raise RuntimeError("the API server said no")

    monkeypatch.setattr(handlers, "reconcile_deployment", broken)

    async def scaling_loop_for_a_while() -> None:
        for _ in range(10):  # ten scaling-loop ticks, well inside the first 5 s step
            await handlers.run_deployment("ml", "d")

    with caplog.at_level(logging.ERROR, logger="modelplane.operator"):
        asyncio.run(scaling_loop_for_a_while())
    assert passes == 1
    assert len([r for r in caplog.records if "reconcile failed" in r.message]) == 1
    # A changed spec is tried at once.
    asyncio.run(handlers.run_deployment("ml", "d", generation=2))
    assert passes == 2


def test_every_deployment_pass_reads_the_resource_inside_the_lock(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    async def record(client: Any, body: dict[str, Any], **_: Any) -> str:
        seen.append(body)
        return "Ready"

    monkeypatch.setattr(handlers, "reconcile_deployment", record)
    asyncio.run(handlers.run_deployment("ml", "d", generation=1))
    assert state.client.gets == 1
    assert seen == [BODY]
