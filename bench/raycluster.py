"""A Ray cluster laid out like a ModelDeployment's pods, as processes on this machine.

The head has no CPUs (the head pod: GCS, dashboard, Serve controller, HAProxy ingress,
and the runtime's `serve --address`); each worker node has one CPU, holds one replica,
and starts with the environment the worker pods get. Every process names the cluster's
temporary folder on its command line, so stopping kills exactly those (not `ray stop`,
which stops every Ray on the machine).

One difference from the pods: Serve's ingress runs on the head only (`proxy_location:
HeadOnly`), because nodes on one machine share its ports; in the pods every node runs
one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from modelplane_harness.cluster import free_port
from modelplane_runtime.contract import RAY_SERVE_ENVIRONMENT

RAY = str(Path(sys.executable).with_name("ray"))


def kill_mentioning(text: str) -> None:
    for process in psutil.process_iter(["cmdline"]):
        if any(text in part for part in process.info.get("cmdline") or []):
            with contextlib.suppress(psutil.Error):
                process.kill()


class PodLikeCluster:
    """`with PodLikeCluster(env) as cluster:` a head; `cluster.add_node(env)` a worker."""

    def __init__(self, head_env: dict[str, str] | None = None) -> None:
        self.token = secrets.token_hex(16)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.temp = Path(tempfile.mkdtemp(prefix="mprc-", dir="/tmp"))
        self.nodes = 0
        self.env = {
            **os.environ,
            **RAY_SERVE_ENVIRONMENT,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": str(self.temp),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(self.temp / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(self.temp / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(self.temp),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(self.temp / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            **(head_env or {}),
        }
        self.runner: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def session(self) -> Path:
        return self.temp / "ray" / "session_latest"

    def __enter__(self) -> PodLikeCluster:
        try:
            subprocess.run(
                [RAY, "start", "--head", f"--port={self.gcs_port}", "--num-cpus=0",
                 "--num-gpus=0", f"--dashboard-port={self.dashboard_port}",
                 "--disable-usage-stats"],
                env=self.env, check=True, capture_output=True,
            )  # fmt: skip
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self.runner is not None:
            self.runner.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.runner.wait(30)
        kill_mentioning(str(self.temp))

    def add_node(self, env: dict[str, str] | None = None) -> float:
        """Join a 1-CPU worker node; returns how long `ray start` took."""
        began = time.monotonic()
        subprocess.run(
            [RAY, "start", f"--address={self.address}", "--num-cpus=1",
             "--disable-usage-stats"],
            env={**self.env, **(env or {})}, check=True, capture_output=True,
        )  # fmt: skip
        self.nodes += 1
        return time.monotonic() - began

    def serve(self, config: dict[str, Any], *, wait: bool = True) -> None:
        """Run the runtime's Serve runner on the head with `config` (ingress on the head
        only); with `wait`, return once it reports the application running."""
        config = {**config, "proxy_location": "HeadOnly"}
        path = self.temp / "serve-config.json"
        path.write_text(json.dumps(config))
        self.runner = subprocess.Popen(
            [sys.executable, "-m", "modelplane_runtime", "serve", "--config", str(path),
             "--address", self.address],
            env=self.env, stdout=subprocess.PIPE, stderr=(self.temp / "runner.log").open("w"),
            text=True,
        )  # fmt: skip
        if wait:
            assert self.runner.stdout is not None
            event = json.loads(self.runner.stdout.readline() or "{}")
            if event.get("event") != "ready":
                raise RuntimeError(f"Serve did not start: {event}; see {self.temp}/runner.log")
