"""The operator as a process and the chart as users install it, against a local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from modelplane_harness.cluster import LocalCluster, free_port, repo_root

RELEASE = "modelplane"
OPERATOR_NAMESPACE = "modelplane-system"


def chart_path() -> Path:
    return repo_root() / "helm" / "modelplane"


class OperatorProcess:
    """`python -m modelplane_operator` against the test cluster; can be killed and restarted."""

    def __init__(self, kubeconfig: Path, log_path: Path, *args: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.progress_port = free_port()
        self.metrics_port = free_port()

    def start(self) -> None:
        # The contract test runs the generated pods on this machine, where rank 0's
        # progress server must not collide with whatever else listens on 8080.
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MODELPLANE_PROGRESS_PORT": str(self.progress_port),
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "modelplane_operator",
                    "--log-format=json",
                    f"--metrics-port={self.metrics_port}",
                    *self.args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when a node dies under the operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def install_chart(
    cluster: LocalCluster,
    *values: str,
    release: str = RELEASE,
    namespace: str = OPERATOR_NAMESPACE,
) -> None:
    """`helm upgrade --install` the chart; `values` are extra helm flags (--set, -f)."""
    cluster.helm(
        "upgrade", "--install", release, str(chart_path()), "-n", namespace,
        "--create-namespace", *values,
    )  # fmt: skip


def service_account_kubeconfig(
    cluster: LocalCluster,
    path: Path,
    *,
    namespace: str = OPERATOR_NAMESPACE,
    account: str = f"{RELEASE}-operator",
) -> Path:
    """A kubeconfig that acts as the chart's operator ServiceAccount (a token of its own,
    so the API server checks exactly that account's permissions)."""
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, "--duration=24h"
    ).stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path
