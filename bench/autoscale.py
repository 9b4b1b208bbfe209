"""Autoscaling under a load step, side by side, and the operator's scaling decisions.

    .venv/bin/python bench/autoscale.py                  # both parts, ~12 minutes on 2 cores
    .venv/bin/python bench/autoscale.py --only serve     # part 1 only
    .venv/bin/python bench/autoscale.py --only operator --cycles 4
    .venv/bin/python bench/autoscale.py --only realnode  # part 3, ~8 minutes, needs root
    .venv/bin/python bench/autoscale.py --only realnode --worker-cpu 500m

Part 1, Serve replicas, on a Ray cluster laid out like a ModelDeployment's pods
(bench/raycluster.py: a head with no CPUs running the app's Serve config, and worker
nodes of 1 CPU each, one replica per node; replicas 1..2), one variant after another:

  modelplane-spare  the Serve config the operator renders from a ModelDeployment with
                    the API's default autoscaling (target 2 ongoing requests per
                    replica, upscale delay 2 s) and its fixed look-back 2 s, metrics
                    pushed every 0.5 s, and `spareWorkers: 1`: the operator keeps one
                    worker node more than Serve's replicas need, started with the worker
                    pods' environment (a prestarted Ray worker that imported the app);
  modelplane        the same without a spare (`spareWorkers: 0`, the default; worker
                    pods then start Ray's workers as Ray does);
  ray-default       the same cluster and worker nodes with Ray Serve's own autoscaling
                    defaults instead (target_ongoing_requests 2, upscale_delay_s 30,
                    look_back_period_s 30, metrics pushed every 10 s) and Ray's own
                    worker start, no spare.

  The benchmark plays the operator and the kubelet: when Serve's replica target wants
  more workers than there are nodes (`decide_workers`), it joins one more node with
  `ray start` (a pod's start, minus scheduling and the image pull).

  Load: 1 closed-loop client for 10 s, then 16 for --step-seconds. Reported: seconds from
  the step until Serve's target reaches `max` (the decision), until Serve runs `max`
  replicas (capacity) and until p99 has recovered (the end
  of the first 5 s window after capacity whose p99 is within 1.25x the p99 of the step's
  last 30 s); p99 and throughput before and after capacity; the requests that failed.

Part 2, the operator's decision latency: the operator process (least-privilege
ServiceAccount) on the local control plane reaches a real local Ray through the dashboard
seam (MODELPLANE_DASHBOARD_URL), exactly as `tests/integration/test_deployment_scaling.py`
does. For each of --cycles load steps (16 clients until the worker Deployment grows, then
none until it shrinks), a 0.1 s sampler records when Serve's replica target first differs
from the worker Deployment's replicas and when the Deployment is patched to match. Worker
pods are simulated (kwok), so this measures the decision, not a pod start.

Part 3, on real pods (`--only realnode`; not in the default run, it needs root): a
cluster with one real node, the chart's operator pod and the images built here; the
quickstart training, then the deployment with replicas 1..2 and 250m-CPU worker pods,
with `spareWorkers: 1` and without, one after the other. Load from inside the node's
network namespace to the Service's ClusterIP (modelplane_harness.realserving): 1 client
for 10 s, 16 for --step-seconds, then 1 until the worker pods are back to one. Reported
from the step: Serve's target at 2 (decision), the worker Deployment at 2 (the operator),
the second worker pod Running (the kubelet), 2 replicas Running (capacity), p99
recovered; the scale-down's duration; failed requests over the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from modelplane.serving import start_server  # noqa: E402
from modelplane_harness.cluster import LocalCluster, build_binaries, repo_root  # noqa: E402
from modelplane_harness.loadgen import (  # noqa: E402
    BackgroundLoad,
    LoadResult,
    between,
    json_body,
    percentile,
)
from modelplane_harness.loadgen import recovery_s as recovered_s  # noqa: E402
from modelplane_harness.operator import install_chart, service_account_kubeconfig  # noqa: E402
from modelplane_harness.waiting import InThread  # noqa: E402
from modelplane_operator.api.resources import ModelDeployment  # noqa: E402
from modelplane_operator.dashboard import serve_state  # noqa: E402
from modelplane_operator.scaling import decide_workers  # noqa: E402
from modelplane_operator.serve_config import ResolvedModel, render_serve_config  # noqa: E402
from modelplane_runtime.contract import RAY_WARM_WORKER_ENVIRONMENT  # noqa: E402
from raycluster import PodLikeCluster  # noqa: E402
from serving import TEXTS, free_port, train  # noqa: E402

NAME = "bench"
NAMESPACE = "bench-autoscale"
CLIENTS = 16
BASELINE_S = 10.0
RECOVERED_WITHIN = 1.25
RECOVERY_WINDOW_S = 5.0
GOALS = {"capacity_s": 5.0, "decision_p95_s": 2.0}
# Ray Serve's own defaults (ray/serve/config.py AutoscalingConfig and
# ray/serve/_private/constants.py in ray 2.60).
RAY_DEFAULT_PUSH_S = "10"


def say(message: str) -> None:
    print(f"[autoscale] {message}", file=sys.stderr, flush=True)


def deployment_manifest(uri: str, downscale_s: float, spare: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": uri},
            "replicas": {"min": 1, "max": 2},
            "autoscaling": {"downscaleDelaySeconds": downscale_s, "spareWorkers": spare},
            "maxOngoingRequests": 64,
            "maxQueuedRequests": 256,
        },
    }


def serve_config(manifest: dict[str, Any], digest: str, port: int) -> dict[str, Any]:
    deployment = ModelDeployment.model_validate(manifest)
    model = ResolvedModel(uri=manifest["spec"]["model"]["uri"], digest=digest, metrics={})
    config = render_serve_config(
        deployment, model, replica_cpus=1.0, http_host="127.0.0.1", http_port=port
    )
    config["applications"][0]["args"]["threads"] = 1
    return config


def body() -> Any:
    return json_body(lambda n: {"inputs": [TEXTS[n % len(TEXTS)]]})


@dataclass
class Sample:
    at: float
    target: int | None
    running: int | None
    workers: int | None = None


@dataclass
class Sampler(InThread):
    """Polls the Serve application (and optionally the worker Deployment) every
    `interval` s in a thread."""

    dashboard_url: str
    token: str
    interval: float
    workers: Any = None
    """A callable returning the worker Deployment's replicas, or None."""
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def state(self) -> tuple[int | None, int | None]:
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/serve/applications/",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                state = serve_state(json.load(response), NAME)
        except (OSError, ValueError):
            return None, None
        if state is None:
            return None, None
        return state.target_replicas, state.running_replicas

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            target, running = self.state()
            workers = self.workers() if self.workers else None
            self.samples.append(Sample(at, target, running, workers))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - at)))


def p99(latencies: list[float]) -> float:
    return percentile(latencies, 99)


def recovery_s(result: LoadResult, step: float, end: float, after: float) -> float | None:
    """loadgen's recovery_s with this benchmark's window and tolerance."""
    return recovered_s(
        result, step, end, after, within=RECOVERED_WITHIN, window_s=RECOVERY_WINDOW_S
    )


# variant -> (spare workers, Ray's own autoscaling defaults)
VARIANTS: dict[str, tuple[int, bool]] = {
    "modelplane-spare": (1, False),
    "modelplane": (0, False),
    "ray-default": (0, True),
}


def step_variant(
    variant: str, uri: str, digest: str, step_s: float, workdir: Path
) -> dict[str, Any]:
    spare, ray_defaults = VARIANTS[variant]
    manifest = deployment_manifest(uri, downscale_s=60, spare=spare)
    deployment = ModelDeployment.model_validate(manifest)
    port = free_port()
    config = serve_config(manifest, digest, port)
    env: dict[str, str] = {}
    if ray_defaults:
        options = config["applications"][0]["deployments"][0]
        ours = options["autoscaling_config"]
        options["autoscaling_config"] = {
            "min_replicas": ours["min_replicas"],
            "max_replicas": ours["max_replicas"],
            "target_ongoing_requests": ours["target_ongoing_requests"],
        }
        env = {
            "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": RAY_DEFAULT_PUSH_S,
            "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": RAY_DEFAULT_PUSH_S,
        }
    # As the worker pods get it: warm only when the deployment keeps spares.
    node_env = RAY_WARM_WORKER_ENVIRONMENT if spare else {}
    # What the operator starts with: room for the first replicas, plus the spares.
    initial = decide_workers(deployment, target_replicas=1, current_workers=0).workers
    say(f"[{variant}] head + {initial} worker node(s)")
    with PodLikeCluster(env) as cluster:
        for _ in range(initial):
            cluster.add_node(node_env)
        cluster.serve(config)
        url = f"http://127.0.0.1:{port}/predict"
        sampler = Sampler(cluster.dashboard_url, cluster.token, interval=0.1)
        with sampler, Operator(sampler, deployment, cluster, node_env) as operator:
            with BackgroundLoad(url, body(), clients=1, seconds=BASELINE_S + 5) as baseline:
                time.sleep(BASELINE_S)
            say(f"[{variant}] load step: {CLIENTS} clients for {step_s:.0f} s")
            step = time.monotonic()
            with BackgroundLoad(url, body(), clients=CLIENTS, seconds=step_s) as stepped:
                time.sleep(step_s)
            end = time.monotonic()
        (workdir / variant).mkdir(parents=True, exist_ok=True)
        for log in (cluster.session / "logs" / "serve").glob("controller_[0-9]*.log"):
            (workdir / variant / log.name).write_text(log.read_text())
    result = stepped.result
    maximum = config["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"]
    capacity = next(
        (s.at - step for s in sampler.samples if s.at >= step and (s.running or 0) >= maximum),
        None,
    )
    wanted = next(
        (s.at - step for s in sampler.samples if s.at >= step and (s.target or 0) >= maximum),
        None,
    )
    at_capacity = step + capacity if capacity is not None else end
    return {
        "variant": variant,
        "initial_nodes": initial,
        "node_starts_s": operator.node_starts,
        "target_s": wanted,
        "capacity_s": capacity,
        "p99_recovered_s": recovery_s(result, step, end, at_capacity),
        "baseline_p99_ms": baseline.result.percentile(99) * 1000,
        "p99_before_capacity_ms": p99(between(result, step, at_capacity)) * 1000,
        "p99_after_capacity_ms": p99(between(result, at_capacity, end)) * 1000,
        "steady_p99_ms": p99(between(result, end - 30, end)) * 1000,
        "throughput_before_capacity": len(between(result, step, at_capacity))
        / max(at_capacity - step, 1e-9),
        "throughput_after_capacity": len(between(result, at_capacity, end))
        / max(end - at_capacity, 1e-9),
        "requests": result.ok,
        "failed": result.failed + baseline.result.failed,
    }


@dataclass
class Operator(InThread):
    """Plays the operator and the kubelet for part 1: when Serve's replica target wants
    more workers than there are nodes (`decide_workers`, spares included), it joins one
    more worker node — the pod's start, minus scheduling and the image pull."""

    sampler: Sampler
    deployment: ModelDeployment
    cluster: PodLikeCluster
    node_env: dict[str, str]
    node_starts: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            target = self.sampler.samples[-1].target if self.sampler.samples else None
            decision = decide_workers(
                self.deployment, target_replicas=target, current_workers=self.cluster.nodes
            )
            if decision.workers > self.cluster.nodes:
                self.node_starts.append(self.cluster.add_node(self.node_env))


def first(samples: list[Sample], since: float, predicate: Any) -> Sample | None:
    return next((s for s in samples if s.at >= since and predicate(s)), None)


def operator_cycles(uri: str, digest: str, cycles: int, workdir: Path) -> dict[str, Any]:
    from lightkube import Client, KubeConfig  # noqa: PLC0415
    from lightkube.resources.apps_v1 import Deployment  # noqa: PLC0415

    root = repo_root()
    cluster = LocalCluster(workdir / "cluster", build_binaries(root))
    cluster.start(log=say)
    operator = server = None
    try:
        install_chart(cluster)
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all")
        kubeconfig = service_account_kubeconfig(cluster, workdir / "operator.kubeconfig")
        cluster.kubectl("create", "namespace", NAMESPACE)
        token = secrets.token_hex(16)
        cluster.kubectl(
            "create", "secret", "generic", f"{NAME}-ray-token", "-n", NAMESPACE,
            f"--from-literal=token={token}",
        )  # fmt: skip
        manifest = deployment_manifest(uri, downscale_s=4)
        dashboard_port = free_port()
        server = start_server(
            serve_config(manifest, digest, free_port()),
            workdir=workdir / "operator-serve",
            num_cpus=2,
            dashboard_port=dashboard_port,
            env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
        )
        operator = subprocess.Popen(
            [sys.executable, "-m", "modelplane_operator"],
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "MODELPLANE_DASHBOARD_URL": f"http://127.0.0.1:{dashboard_port}",
            },
            stdout=(workdir / "operator.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input_text=yaml.safe_dump(manifest))
        kube = Client(config=KubeConfig.from_file(str(cluster.kubeconfig)))

        def workers() -> int | None:
            try:
                got = kube.get(Deployment, f"{NAME}-ray-worker", namespace=NAMESPACE)
            except Exception:  # not created yet
                return None
            return got.spec.replicas if got.spec else None

        url = f"{server.endpoint}/predict"
        sampler = Sampler(f"http://127.0.0.1:{dashboard_port}", token, 0.1, workers)
        with sampler:
            deadline = time.monotonic() + 120
            while not (sampler.samples and sampler.samples[-1].workers == 1):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no worker Deployment; see {workdir / 'operator.log'}")
                time.sleep(0.5)
            ups, downs, failed = measure_cycles(sampler, url, cycles)
        events = cluster.get_json("events", "-n", NAMESPACE)["items"]
        scaled = sum(1 for e in events if e.get("reason") == "Scaled")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        if server is not None:
            server.stop()
        cluster.stop()
    return {"up_s": ups, "down_s": downs, "failed": failed, "scaled_events": scaled}


def measure_cycles(sampler: Sampler, url: str, cycles: int) -> tuple[list[float], list[float], int]:
    """Load steps up and down; per step, seconds from Serve's target moving past the
    workers to the worker Deployment following it."""
    ups: list[float] = []
    downs: list[float] = []
    failed = 0
    for cycle in range(cycles):
        since = time.monotonic()
        with BackgroundLoad(url, body(), clients=CLIENTS, seconds=120) as load:
            wait_until(lambda: sampler.samples[-1].workers == 2, 60, "workers up")
        failed += load.result.failed
        wait_until(lambda: sampler.samples[-1].workers == 1, 60, "workers down")
        samples = list(sampler.samples)
        up_want = first(samples, since, lambda s: (s.target or 0) > (s.workers or 0))
        up_done = first(samples, since, lambda s: s.workers == 2)
        down_since = up_done.at if up_done else since
        down_want = first(samples, down_since, lambda s: (s.target or 9) < (s.workers or 0))
        down_done = first(samples, down_since, lambda s: s.workers == 1)
        if up_want and up_done:
            ups.append(max(0.0, up_done.at - up_want.at))
        if down_want and down_done:
            downs.append(max(0.0, down_done.at - down_want.at))
        say(
            f"cycle {cycle + 1}: up decision {ups[-1] if ups else float('nan'):.2f} s, "
            f"down decision {downs[-1] if downs else float('nan'):.2f} s"
        )
        time.sleep(1)
    return ups, downs, failed


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def p95(values: list[float]) -> float:
    return percentile(values, 95)


def fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:5.1f}"


def realnode_variants(step_s: float, workdir: Path, worker_cpu: str) -> list[dict[str, Any]]:
    from modelplane_harness.images import build_images, import_image  # noqa: PLC0415
    from modelplane_harness.realserving import load_step  # noqa: PLC0415

    root = repo_root()
    images = build_images(["operator", "runtime"])
    cluster = LocalCluster(workdir / "real-cluster", build_binaries(root), real_node=True)
    cluster.start(log=say)
    rows = []
    try:
        assert cluster.node is not None
        for image in images:
            import_image(image, containerd_address=cluster.node.containerd_address)
        install_chart(cluster)
        cluster.kubectl(
            "-n", "modelplane-system", "rollout", "status", "deployment/modelplane-operator",
            "--timeout=180s",
        )  # fmt: skip
        ns = "bench-realnode"
        cluster.kubectl("create", "namespace", ns)
        wait_until(
            lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
            60,
            "the namespace's service account",
        )
        examples = root / "examples"
        cluster.kubectl("apply", "-n", ns, "-f", str(examples / "cluster" / "models-pvc.yaml"))
        cluster.kubectl("apply", "-n", ns, "-f", str(examples / "quickstart-training.yaml"))
        cluster.kubectl(
            "wait", "-n", ns, "--for=condition=Ready", "mt/quickstart", "--timeout=600s"
        )
        for variant, spare in (("modelplane-spare", 1), ("modelplane", 0)):
            manifest = yaml.safe_load((examples / "quickstart-deployment.yaml").read_text())
            manifest["spec"]["resources"] = {"cpu": worker_cpu, "memory": "2Gi"}
            manifest["spec"]["autoscaling"] = {
                "targetOngoingRequests": 2,
                "upscaleDelaySeconds": 1,
                "downscaleDelaySeconds": 5,
                "spareWorkers": spare,
            }
            cluster.kubectl("apply", "-n", ns, "-f", "-", input_text=yaml.safe_dump(manifest))
            cluster.kubectl(
                "wait", "-n", ns, "--for=condition=Ready", "md/quickstart", "--timeout=600s"
            )
            # Let a spare worker's prestarted Ray worker import the app first.
            time.sleep(20)
            say(f"[realnode {variant}] load step: {CLIENTS} clients for {step_s:.0f} s")
            step = load_step(
                cluster, ns, "quickstart", body=body(), minimum=1 + spare, maximum=2,
                clients=CLIENTS, step_s=step_s,
            )  # fmt: skip
            rows.append({"variant": variant, "worker_cpu": worker_cpu, **step.figures})
            cluster.kubectl("delete", "-n", ns, "md/quickstart", "--wait=true")
            wait_until(
                lambda: (
                    not cluster.get_json("pods", "-n", ns, "-l", "modelplane.io/component=serving")[
                        "items"
                    ]
                ),
                180,
                "the Ray pods gone",
            )
    finally:
        cluster.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step-seconds", type=float, default=90.0)
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--only", choices=["serve", "operator", "realnode"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--worker-cpu", default="250m", help="realnode: each worker pod's CPU (500m fits 2)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mp-bench-autoscale-"))
    say("training the benchmark model")
    path, digest = train(work / "model")
    uri = f"file://{path}"
    report: dict[str, Any] = {}
    if args.only == "realnode":
        report["realnode"] = realnode_variants(args.step_seconds, work, args.worker_cpu)
    if args.only not in ("operator", "realnode"):
        report["serve"] = [
            step_variant(variant, uri, digest, args.step_seconds, work) for variant in VARIANTS
        ]
    if args.only not in ("serve", "realnode"):
        report["operator"] = operator_cycles(uri, digest, args.cycles, work)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if "serve" in report:
        rows = {row["variant"]: row for row in report["serve"]}
        print(
            f"load step 1 -> {CLIENTS} clients, replicas 1..2 (1 CPU each), "
            "a head with no CPUs and 1-CPU worker nodes on 2 cores"
        )
        print(
            "variant           nodes  target s  capacity s  p99 recovered s  p99 ms: 1 client"
            "  before  after  last 30 s   req/s before  after  failed"
        )
        for row in report["serve"]:
            print(
                f"{row['variant']:16s}  {row['initial_nodes']:5d}  {fmt(row['target_s']):>8s}  "
                f"{fmt(row['capacity_s']):>10s}  {fmt(row['p99_recovered_s']):>15s}  "
                f"{row['baseline_p99_ms']:16.0f}  {row['p99_before_capacity_ms']:6.0f}  "
                f"{row['p99_after_capacity_ms']:5.0f}  {row['steady_p99_ms']:9.0f}   "
                f"{row['throughput_before_capacity']:12.0f}  "
                f"{row['throughput_after_capacity']:5.0f}  {row['failed']:6d}"
            )
        default = rows["ray-default"]["capacity_s"]
        for name in ("modelplane-spare", "modelplane"):
            ours = rows[name]["capacity_s"]
            if ours and default:
                print(
                    f"capacity: {name} {ours:.1f} s vs ray-default {default:.1f} s "
                    f"({default / ours:.1f}x); goal <= {GOALS['capacity_s']:.0f} s, "
                    f"ratio to goal {ours / GOALS['capacity_s']:.2f}"
                )
    for row in report.get("realnode", []):
        print(
            f"real pods, {row['variant']} ({row['worker_cpu']} CPU workers): decision "
            f"{fmt(row['decision_s'])} s, workers "
            f"wanted {fmt(row['workers_wanted_s'])} s, pod Running {fmt(row['pod_running_s'])} "
            f"s, replica Running (capacity) {fmt(row['replica_running_s'])} s (goal <= "
            f"{GOALS['capacity_s']:.0f} s with a spare), p99 recovered "
            f"{fmt(row['p99_recovered_s'])} s; p99 {row['baseline_p99_ms']:.0f} ms at 1 client, "
            f"{row['p99_before_capacity_ms']:.0f} before capacity, "
            f"{row['p99_after_capacity_ms']:.0f} after; scale-down {row['scale_down_s']:.0f} s; "
            f"{row['requests']} requests, {row['failed']} failed"
        )
    if "operator" in report:
        op = report["operator"]
        print(
            f"operator decision latency over {len(op['up_s'])} steps: up median "
            f"{statistics.median(op['up_s']) if op['up_s'] else float('nan'):.2f} s, "
            f"p95 {p95(op['up_s']):.2f} s (goal < {GOALS['decision_p95_s']:.0f} s, ratio "
            f"{p95(op['up_s']) / GOALS['decision_p95_s']:.2f}); down median "
            f"{statistics.median(op['down_s']) if op['down_s'] else float('nan'):.2f} s, "
            f"p95 {p95(op['down_s']):.2f} s; failed requests {op['failed']}; "
            f"Scaled events {op['scaled_events']}"
        )


if __name__ == "__main__":
    main()
