"""A ModelDeployment on the real node, watched as a user would: its Service's ClusterIP
reached from inside the node's network namespace, `kubectl get` sampled in a thread, and
a load step measured the way `bench/autoscale.py` reports it (Serve's decision, the
worker pod Running, the replica Running, p99 recovered, requests failed).

Shared by `tests/integration/test_real_serving.py` and `bench/autoscale.py --only
realnode`, which never import each other.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from modelplane_harness.cluster import LocalCluster
from modelplane_harness.loadgen import BackgroundLoad, Body, LoadResult, between, percentile
from modelplane_harness.loadgen import recovery_s as recovered_s
from modelplane_harness.waiting import InThread, wait_for


def worker_deployment(name: str) -> str:
    return f"{name}-ray-worker"


def service_url(cluster: LocalCluster, namespace: str, name: str, path: str = "/predict") -> str:
    """The deployment's `<name>` Service by its ClusterIP (reachable from the node's
    network namespace, as from any pod)."""
    ip = cluster.kubectl(
        "get", "service", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout.strip()
    return f"http://{ip}:8000{path}"


def netns_path(cluster: LocalCluster) -> str:
    assert cluster.node is not None, "a real-node cluster"
    return f"/run/netns/{cluster.node.netns}"


@dataclass(frozen=True)
class Sample:
    at: float
    """time.monotonic()"""
    phase: str | None
    target: int
    """Serve's replica target (status.replicas.desired)."""
    replicas_ready: int
    workers_wanted: int
    """The worker Deployment's spec.replicas (the operator's decision)."""
    pods_running: int
    """Worker pods in phase Running (the kubelet started them)."""
    load: float
    """status.load.ongoingRequests"""
    deletion_costs: dict[str, str]
    """Worker pod -> its pod-deletion-cost annotation, where set."""
    pods: frozenset[str]
    """Worker pods not being deleted."""


def sample(cluster: LocalCluster, namespace: str, name: str) -> Sample:
    """One `kubectl get` of the deployment, its worker Deployment and its worker pods."""
    items = json.loads(
        cluster.kubectl(
            "get", f"modeldeployment/{name}", f"deployment/{worker_deployment(name)}", "-n",
            namespace, "-o", "json", check=False,
        ).stdout or '{"items": []}'
    )["items"]  # fmt: skip
    pods = cluster.get_json(
        "pods", "-n", namespace, "-l", f"modelplane.io/deployment={name},modelplane.io/role=worker"
    )["items"]
    status: dict[str, Any] = {}
    wanted = 0
    for item in items:
        if item["kind"] == "ModelDeployment":
            status = item.get("status") or {}
        else:
            wanted = int(item["spec"].get("replicas") or 0)
    costs = {
        p["metadata"]["name"]: p["metadata"]["annotations"][COST]
        for p in pods
        if COST in (p["metadata"].get("annotations") or {})
    }
    return Sample(
        at=time.monotonic(),
        phase=status.get("phase"),
        target=int((status.get("replicas") or {}).get("desired") or 0),
        replicas_ready=int((status.get("replicas") or {}).get("ready") or 0),
        workers_wanted=wanted,
        pods_running=sum(
            1
            for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ),
        load=float((status.get("load") or {}).get("ongoingRequests") or 0.0),
        deletion_costs=costs,
        pods=frozenset(
            p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
        ),
    )


COST = "controller.kubernetes.io/pod-deletion-cost"


@dataclass
class Watcher(InThread):
    """`with Watcher(...) as w:` samples the deployment every `interval` s in a thread."""

    cluster: LocalCluster
    namespace: str
    name: str
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.samples.append(sample(self.cluster, self.namespace, self.name))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def first(self, since: float, predicate: Any) -> float | None:
        """Seconds from `since` to the first sample that satisfies `predicate`."""
        return next((s.at - since for s in self.samples if s.at >= since and predicate(s)), None)


@dataclass(frozen=True)
class StepResult:
    figures: dict[str, Any]
    step: LoadResult
    calm: LoadResult
    removed: set[str]
    """Worker pods the scale-down removed."""
    idle_marked: set[str]
    """Worker pods that carried the idle deletion cost just before the scale-down."""


def load_step(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    *,
    body: Body,
    minimum: int,
    maximum: int,
    clients: int = 16,
    baseline_s: float = 10.0,
    step_s: float = 60.0,
    down_timeout_s: float = 180.0,
) -> StepResult:
    """One client for `baseline_s`, `clients` for `step_s`, then one client until the
    worker pods are back to `minimum`: the seconds from the step until Serve wants
    `maximum` replicas, the operator asks for the pods, the kubelet runs them and Serve
    runs the replicas, and until p99 recovered; then the scale-down."""
    url = service_url(cluster, namespace, name)
    netns = netns_path(cluster)
    with Watcher(cluster, namespace, name) as watcher:
        with BackgroundLoad(url, body, clients=1, seconds=baseline_s + 5, netns=netns) as base:
            time.sleep(baseline_s)
        step = time.monotonic()
        with BackgroundLoad(url, body, clients=clients, seconds=step_s, netns=netns) as stepped:
            time.sleep(step_s)
        end = time.monotonic()
        with BackgroundLoad(url, body, clients=1, seconds=down_timeout_s, netns=netns) as calm:
            wait_for(
                lambda: (
                    (s := watcher.samples[-1]).workers_wanted == minimum
                    and s.pods_running == minimum
                ),
                timeout=down_timeout_s,
                what=f"{name}'s worker pods back to {minimum}",
            )
            down = time.monotonic()
            time.sleep(3)
    during = [s for s in watcher.samples if step <= s.at < down]
    marked = {pod for s in during for pod, cost in s.deletion_costs.items() if int(cost) < 0}
    seen = {pod for s in during for pod in s.pods}
    result = stepped.result
    capacity = watcher.first(step, lambda s: s.replicas_ready >= maximum)
    at_capacity = step + capacity if capacity is not None else end
    figures = {
        "decision_s": watcher.first(step, lambda s: s.target >= maximum),
        "workers_wanted_s": watcher.first(step, lambda s: s.workers_wanted >= maximum),
        "pod_running_s": watcher.first(step, lambda s: s.pods_running >= maximum),
        "replica_running_s": capacity,
        "p99_recovered_s": recovered_s(result, step, end, at_capacity, reference_s=20.0),
        "max_load_seen": max((s.load for s in during), default=0.0),
        "baseline_p99_ms": base.result.percentile(99) * 1000,
        "p99_before_capacity_ms": percentile(between(result, step, at_capacity), 99) * 1000,
        "p99_after_capacity_ms": percentile(between(result, at_capacity, end), 99) * 1000,
        "scale_down_s": down - end,
        "requests": result.ok + calm.result.ok + base.result.ok,
        "failed": result.failed + calm.result.failed + base.result.failed,
    }
    return StepResult(
        figures=figures,
        step=result,
        calm=calm.result,
        removed=seen - watcher.samples[-1].pods,
        idle_marked=marked,
    )
