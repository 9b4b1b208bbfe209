"""How long a new Serve replica of the app takes to start: cold, and on a warm worker.

    .venv/bin/python bench/replica_start.py             # ~12 minutes on 2 cores

What bounds bench/autoscale's "capacity" figure. Three placements, each run cold (Ray's
defaults) and warm (the worker pods' environment, `RAY_WARM_WORKER_ENVIRONMENT`: a node
prestarts one Ray worker per CPU as it starts, and those import torch and the app
first), one fresh Ray per run, the variants alternating:

  same-node   a 2-CPU local Ray serves the app with one replica; the config is then
              deployed with two through the dashboard's REST API (as the operator pushes
              configs). Measured: Serve's own start time of the first replica (controller
              log, "started successfully ... after"), of the second, and the time from
              the PUT until two replicas run.
  new-node    a head with no CPUs (as the head pod) runs the app's config with one
              replica, which waits for a place; then `ray start` joins a 1-CPU node (as
              a worker pod does). Measured: from `ray start` to the replica running, and
              how long `ray start` itself took.
  spare-node  the same head with one 1-CPU node serving one replica, and a second node
              joined 20 s before the config asks for two (as `spareWorkers: 1` keeps
              one). Measured: Serve's start of the second replica and the time from the
              PUT until two replicas run.

The machine is otherwise idle: under load the same starts are slower (Ray's workers run
at nice 15).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from autoscale import NAME, deployment_manifest, serve_config  # noqa: E402
from modelplane.serving import start_server  # noqa: E402
from modelplane_operator.dashboard import serve_state  # noqa: E402
from modelplane_runtime.contract import RAY_WARM_WORKER_ENVIRONMENT  # noqa: E402
from raycluster import PodLikeCluster  # noqa: E402
from serving import free_port, train  # noqa: E402

WARM = RAY_WARM_WORKER_ENVIRONMENT
STARTED = re.compile(r"started successfully on node '[0-9a-f]+' after ([0-9.]+)s")


def say(message: str) -> None:
    print(f"[replica-start] {message}", file=sys.stderr, flush=True)


def fixed(config: dict[str, Any], replicas: int) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    deployment = config["applications"][0]["deployments"][0]
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = replicas
    return config


class Dashboard:
    def __init__(self, port: int, token: str) -> None:
        self.url = f"http://127.0.0.1:{port}/api/serve/applications/"
        self.headers = {"Authorization": f"Bearer {token}"}

    def running(self) -> int:
        request = urllib.request.Request(self.url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                state = serve_state(json.load(response), NAME)
        except (OSError, ValueError):
            return 0
        return state.running_replicas if state else 0

    def put(self, config: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(config).encode(),
            method="PUT",
            headers={**self.headers, "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=30).read()

    def wait_running(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.running() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} replica(s) not running after {timeout:.0f} s")
            time.sleep(0.05)


def serve_start_times(session: Path) -> list[float]:
    """Serve's own replica start durations, in order, from the controller's log."""
    times: list[float] = []
    for log in sorted((session / "logs" / "serve").glob("controller_[0-9]*.log")):
        times += [float(m.group(1)) for m in STARTED.finditer(log.read_text())]
    return times


def same_node(config: dict[str, Any], warm: bool, work: Path) -> dict[str, float]:
    token = secrets.token_hex(16)
    port = free_port()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **(WARM if warm else {})}
    temp = Path(tempfile.mkdtemp(prefix="mprs-", dir="/tmp"))
    env["RAY_TMPDIR"] = str(temp)
    server = start_server(fixed(config, 1), workdir=work, num_cpus=2, dashboard_port=port, env=env)
    try:
        dashboard = Dashboard(port, token)
        time.sleep(3)
        begin = time.monotonic()
        dashboard.put(fixed(config, 2))
        dashboard.wait_running(2)
        to_running = time.monotonic() - begin
        starts = serve_start_times(temp / "ray" / "session_latest")
    finally:
        server.stop()
        shutil.rmtree(temp, ignore_errors=True)
    return {"first_s": starts[0], "second_s": starts[1], "put_to_running_s": to_running}


def new_node(config: dict[str, Any], warm: bool, work: Path) -> dict[str, float]:
    with PodLikeCluster() as cluster:
        cluster.serve(fixed(config, 1), wait=False)
        dashboard = Dashboard(cluster.dashboard_port, cluster.token)
        time.sleep(15)  # the app is built and its replica waits for a CPU
        if dashboard.running():
            raise RuntimeError("the replica runs before a node with CPUs joined")
        begin = time.monotonic()
        joined = cluster.add_node(WARM if warm else {})
        dashboard.wait_running(1)
        to_running = time.monotonic() - begin
    return {"ray_start_s": joined, "start_to_running_s": to_running}


def spare_node(config: dict[str, Any], warm: bool, work: Path) -> dict[str, float]:
    with PodLikeCluster() as cluster:
        cluster.add_node(WARM if warm else {})
        cluster.serve(fixed(config, 1))
        cluster.add_node(WARM if warm else {})
        time.sleep(20)
        dashboard = Dashboard(cluster.dashboard_port, cluster.token)
        begin = time.monotonic()
        dashboard.put(fixed(config, 2))
        dashboard.wait_running(2)
        to_running = time.monotonic() - begin
        starts = serve_start_times(cluster.session)
    return {"second_s": starts[1], "put_to_running_s": to_running}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mp-bench-replica-"))
    say("training the benchmark model")
    path, digest = train(work / "model")
    config = serve_config(deployment_manifest(f"file://{path}", 60), digest, free_port())
    runs: dict[str, list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for placement, measure in (
            ("same-node", same_node),
            ("new-node", new_node),
            ("spare-node", spare_node),
        ):
            for warm in (False, True):
                key = f"{placement} {'warm' if warm else 'cold'}"
                say(f"round {round_ + 1}: {key}")
                runs.setdefault(key, []).append(measure(config, warm, work / key))
    medians = {
        key: {f: statistics.median(r[f] for r in results) for f in results[0]}
        for key, results in runs.items()
    }
    print(f"{'run':<20} {'figure':<20} {'median s':>9}  rounds")
    for key, figures in medians.items():
        for figure, value in figures.items():
            each = ", ".join(f"{r[figure]:.1f}" for r in runs[key])
            print(f"{key:<20} {figure:<20} {value:>9.2f}  {each}")
    for placement, figure in (
        ("same-node", "first_s"),
        ("same-node", "second_s"),
        ("new-node", "start_to_running_s"),
        ("spare-node", "second_s"),
        ("spare-node", "put_to_running_s"),
    ):
        cold, warm = medians[f"{placement} cold"][figure], medians[f"{placement} warm"][figure]
        print(f"{placement} {figure}: warm / cold = {warm / cold:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
