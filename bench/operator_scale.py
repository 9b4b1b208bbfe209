"""The operator at scale, today's code (a git ref) beside the working tree, in one run.

(Named operator_scale, not operator: a bench script run as `python bench/x.py` puts bench/
first on sys.path, where an operator.py would shadow the standard library's `operator`
for every import in that process — torch's among them.)

    .venv/bin/python bench/operator_scale.py                   # 1000 trainings, 200 deployments
    .venv/bin/python bench/operator_scale.py --count 50 --deployments 10    # a quick check
    .venv/bin/python bench/operator_scale.py --only trainings --baseline none --json out.json

Each variant runs `python -m modelplane_operator` as a subprocess with the chart's
least-privilege ServiceAccount on a fresh local control plane (kwok simulates the pods;
the API server's audit log is on), one variant after the other, never two operators at
once. The baseline (`--baseline REF`, default 27339ef) is `git archive REF operator
runtime helm` unpacked in a temporary directory: the operator runs from there with
PYTHONPATH naming its operator/ and runtime/ (PYTHONPATH comes before the editable
install's finder, which only answers what the path did not), its chart is installed from
there too, and the bench checks where modelplane_operator and modelplane_runtime are
imported from, with the operator's own interpreter, environment and directory, before it
starts it. The working tree's operator runs from the repository root.

Part A, trainings (`--count`, default 1000): all created at once (`kubectl create` in
four parallel chunks), one single-node CPU training each. Measured: seconds from the
first create until every training is Running (and, as the floor kwok sets, every pod),
until every one is Succeeded once the bench ends every pod; the operator's API writes per
training (its ServiceAccount's requests in the audit log, over the whole run); its CPU
over --idle-seconds once everything finished, and its peak RSS.

Part B, deployments (`--deployments`, default 200): ModelDeployments of a file:// model
(the operator does not read it) with replicas 1..4, targetOngoingRequests 2, upscale
delay 2 s and downscale delay 3 s, on kwok pods, with a stand-in Ray dashboard
(bench/standin_dashboard.py, a process of its own on 127.0.0.1) behind
MODELPLANE_DASHBOARD_URL, MODELPLANE_METRICS_URL and MODELPLANE_REPLICA_METRICS_URL; it
models Serve's autoscaler (load first, the replica target a delay later). Measured:
seconds until all are Ready; with all idle for --idle-seconds after --settle-seconds,
the dashboard and metrics requests per second, the operator's API requests per second
(audit log) and its CPU; then, for --sampled deployments (default 20) at once, started
half a second apart, load steps of 4, 6, 8, 4 and 0 ongoing requests (targets 2, 3, 4,
2, 1): the decision latency, from the stand-in changing target_num_replicas to the
worker Deployment's spec.replicas changing on the API server (a watch), in three cases:
an idle deployment whose load arrives (1->2), a loaded one whose target changes again
(2->3, 3->4, 4->2), and one whose load went (2->1); finally the peak RSS.

Nothing polls the API server to wait: watches (lightkube) record every phase change and
every worker Deployment's size with the time it arrived. When nothing changes for
--stall-seconds while waiting for all of them, those left are reported as stuck (never
Running, never Ready) and the rest is measured. Tables give the baseline, the working
tree, their ratio and the ratio to each goal (issue #21); --json writes it all. The full
run takes about 30 minutes on 2 cores; a variant that fails is reported with its
operator log's tail, and the other runs still report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod
from lightkube.types import OnErrorAction, OnErrorResult

from modelplane_harness.cluster import (
    DEFAULT_NODES,
    EXIT_CODE_ANNOTATION,
    MESSAGE_ANNOTATION,
    Binaries,
    FakeNode,
    LocalCluster,
    build_binaries,
    eprint,
    free_port,
    repo_root,
)
from modelplane_harness.operator import (
    OPERATOR_NAMESPACE,
    RELEASE,
    service_account_kubeconfig,
)
from modelplane_operator import constants as c
from modelplane_operator.builders.serving import names_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin_dashboard import templates  # bench/ is no package

NAMESPACE = "bench"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}-operator"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
READ_VERBS = {"get", "list", "watch"}
RESULT = {
    "version": 1,
    "run": "b",
    "metrics": {"accuracy": 0.9},
    "artifact_uri": "pvc://m/b",
    "digest": "sha256:00",
    "steps": 1,
    "epochs": 1,
}
GOALS = {
    "running_s": 60.0,
    "writes_per_training": 6.0,
    "idle_cpu_percent": 1.0,
    "loaded_p95_s": 1.0,
}
AUTOSCALING = {"targetOngoingRequests": 2, "upscaleDelaySeconds": 2, "downscaleDelaySeconds": 3}
REPLICAS = {"min": 1, "max": 4}
STEPS = (
    (4.0, 2, "idle"),
    (6.0, 3, "loaded"),
    (8.0, 4, "loaded"),
    (4.0, 2, "loaded"),
    (0.0, 1, "gone"),
)
"""(ongoing requests, the target Serve reaches, the case) of each load step."""
STAGGER_S = 0.5
HOLD_S = 2.0
"""After the workers followed a step, the load stays this long before the next one."""
CHUNKS = 4
PODS_PER_NODE = 100  # FakeNode's capacity is 110 pods
ModelTraining = create_namespaced_resource(c.GROUP, c.VERSION, "ModelTraining", c.PLURAL_TRAINING)
ModelDeployment = create_namespaced_resource(
    c.GROUP, c.VERSION, "ModelDeployment", c.PLURAL_DEPLOYMENT
)


def say(message: str) -> None:
    print(f"[bench/operator_scale] {message}", file=sys.stderr, flush=True)


# -- the two operators ---------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    """baseline or new."""
    source: str
    """What it runs: the ref's commit, or HEAD and whether the tree differs."""
    root: Path
    """Where its operator/, runtime/ and helm/ are."""
    env: dict[str, str]
    """The operator's environment beside os.environ (less PYTHONPATH) and KUBECONFIG."""

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return {**inherited, **self.env, **(extra or {})}

    def imported(self) -> dict[str, str]:
        """Where the operator's interpreter, in the operator's environment and directory,
        imports modelplane_operator and modelplane_runtime from; raises if not from
        `root` (an editable install would otherwise run the working tree twice)."""
        code = (
            "import json, modelplane_operator, modelplane_runtime; print(json.dumps("
            "{m.__name__: m.__file__ for m in (modelplane_operator, modelplane_runtime)}))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=self.environ(),
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
        )
        paths: dict[str, str] = json.loads(result.stdout)
        for module, path in paths.items():
            if not Path(path).resolve().is_relative_to(self.root.resolve()):
                raise SystemExit(f"{self.name}: {module} imports from {path}, not {self.root}")
        return paths


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def baseline_variant(root: Path, ref: str, work: Path) -> Variant:
    commit = git(root, "rev-parse", "--short", f"{ref}^{{commit}}")
    tree = work / f"baseline-{commit}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit, "operator", "runtime", "helm"],
        cwd=root,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    pythonpath = os.pathsep.join(str(tree / d) for d in ("operator", "runtime"))
    return Variant("baseline", commit, tree, {"PYTHONPATH": pythonpath})


def new_variant(root: Path) -> Variant:
    head = git(root, "rev-parse", "--short", "HEAD")
    dirty = git(root, "status", "--porcelain", "--", "operator", "runtime", "helm")
    return Variant("new", f"{head}{' + working tree' if dirty else ''}", root, {})


@contextmanager
def operator_process(
    variant: Variant, kubeconfig: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelplane_operator"],
            env=variant.environ({"KUBECONFIG": str(kubeconfig), **(env or {})}),
            cwd=variant.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_percent(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / seconds


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def alive(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"the operator exited ({process.returncode}):\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


# -- the control plane ---------------------------------------------------------------


CONTROLLER_QPS = 500
"""The controller manager's and scheduler's API rate. At Kubernetes' default (20 QPS) the
Job controller alone needs about 130 s for 1,000 Jobs (a pod create and Job status
writes each), whatever the operator does (measured: every pod Running after 129-132 s
with either operator); production control planes raise it, and so does the bench, for
both variants alike."""


@contextmanager
def control_plane(
    variant: Variant, binaries: Binaries, work: Path, pods: int
) -> Iterator[tuple[LocalCluster, Path]]:
    """A fresh cluster with room for `pods`, the variant's chart installed, the bench
    namespace, and the operator ServiceAccount's kubeconfig."""
    extra = tuple(
        FakeNode(f"bench-node-{i}", cpu="512", memory="4Ti")
        for i in range(math.ceil(pods / PODS_PER_NODE))
    )
    cluster = LocalCluster(
        work,
        binaries,
        nodes=(*DEFAULT_NODES, *extra),
        audit=True,
        controller_qps=CONTROLLER_QPS,
    )
    cluster.start(log=eprint)
    try:
        cluster.helm(
            "upgrade", "--install", RELEASE, str(variant.root / "helm" / "modelplane"),
            "-n", OPERATOR_NAMESPACE, "--create-namespace",
        )  # fmt: skip
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        kubeconfig = service_account_kubeconfig(cluster, work / "operator.kubeconfig")
        cluster.kubectl("create", "namespace", NAMESPACE)
        yield cluster, kubeconfig
    finally:
        cluster.stop()


def create_all(cluster: LocalCluster, manifests: list[dict[str, Any]]) -> None:
    """`kubectl create` in parallel chunks: one POST per object, no GET before it."""
    size = math.ceil(len(manifests) / CHUNKS)
    chunks = [manifests[i : i + size] for i in range(0, len(manifests), size)]

    def create(chunk: list[dict[str, Any]]) -> None:
        text = "---\n".join(yaml.safe_dump(m) for m in chunk)
        cluster.kubectl("create", "-f", "-", input_text=text)

    with ThreadPoolExecutor(CHUNKS) as pool:
        list(pool.map(create, chunks))


class Watch:
    """A watch in a thread: each object's value (`view`) under its key, and the history
    of changes with the time.monotonic() at which each event arrived."""

    def __init__(
        self,
        kubeconfig: Path,
        resource: Any,
        view: Callable[[Any], Any],
        *,
        labels: dict[str, str] | None = None,
        key: Callable[[Any], str | None] = lambda obj: obj.metadata.name,
    ) -> None:
        self.client = Client(config=KubeConfig.from_file(str(kubeconfig)))
        self.resource, self.view, self.labels, self.key = resource, view, labels, key
        self.current: dict[str, Any] = {}
        self.tally: Counter[Any] = Counter()
        """How many objects hold each value now."""
        self.history: defaultdict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.changed = threading.Condition()
        self.last_change = time.monotonic()
        self.stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _on_error(self, error: Exception, count: int) -> OnErrorResult:
        if self.stopped.is_set():
            return OnErrorResult(OnErrorAction.STOP)
        return OnErrorResult(OnErrorAction.RETRY, sleep=0.5)

    def _run(self) -> None:
        events = self.client.watch(
            self.resource, namespace=NAMESPACE, labels=self.labels, on_error=self._on_error
        )
        for kind, obj in events:
            now = time.monotonic()
            name = self.key(obj)
            if name is None:
                continue
            with self.changed:
                value = None if kind == "DELETED" else self.view(obj)
                if self.current.get(name) != value:
                    self.tally[self.current.get(name)] -= 1
                    self.tally[value] += 1
                    self.current[name] = value
                    self.history[name].append((now, value))
                    self.last_change = now
                    self.changed.notify_all()
            if self.stopped.is_set():
                return

    def wait(
        self, done: Callable[[Counter[Any]], bool], *, timeout: float, stall: float, what: str
    ) -> bool:
        """Until `done(tally)`, asked at every change: True. False once nothing changed
        for `stall` seconds (what is left is stuck: reported, not waited for); raises
        after `timeout` seconds of changes that never got there."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.tally):
                now = time.monotonic()
                if now - self.last_change > stall:
                    say(f"nothing changed for {stall:.0f} s waiting for {what}: {self.seen()}")
                    return False
                if now > deadline:
                    raise RuntimeError(f"gave up after {timeout:.0f} s on {what}: {self.seen()}")
                self.changed.wait(1.0)
        return True

    def seen(self) -> dict[str, int]:
        return {str(v): n for v, n in self.tally.items() if n}

    def reached(self, names: list[str], value: Any) -> list[str]:
        """Those of `names` that ever took `value`."""
        return [name for name in names if self.first(name, value) is not None]

    def first(self, name: str, value: Any, *, after: float = 0.0) -> float | None:
        with self.changed:
            return next((t for t, v in self.history[name] if v == value and t > after), None)

    def wait_first(self, name: str, value: Any, *, after: float, timeout: float) -> float | None:
        """When `name` first took `value` after `after`, waiting up to `timeout`."""
        with self.changed:
            self.changed.wait_for(lambda: self.first(name, value, after=after) is not None, timeout)
        return self.first(name, value, after=after)

    def stop(self) -> None:
        self.stopped.set()


# -- the audit log -------------------------------------------------------------------


def operator_requests(
    audit_log: Path | None, *, since: float | None = None, until: float | None = None
) -> Counter[str]:
    """The operator's requests ("verb resource/subresource" -> count), received between
    the Unix times `since` and `until` when given. The API server rotates its audit log
    at 100 MB (audit-<time>.jsonl beside it): every file is read."""
    requests: Counter[str] = Counter()
    if audit_log is None:
        return requests
    for path in sorted(audit_log.parent.glob(f"{audit_log.stem}*{audit_log.suffix}")):
        requests += _operator_requests(path, since=since, until=until)
    return requests


def _operator_requests(path: Path, *, since: float | None, until: float | None) -> Counter[str]:
    requests: Counter[str] = Counter()
    with path.open() as lines:
        for line in lines:
            if OPERATOR_USER not in line:
                continue
            event = json.loads(line)
            if event.get("user", {}).get("username") != OPERATOR_USER:
                continue
            if since is not None or until is not None:
                received = datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
                if (since is not None and received < since) or (
                    until is not None and received > until
                ):
                    continue
            ref = event.get("objectRef", {})
            resource = f"{ref.get('resource')}/{ref.get('subresource', '')}".rstrip("/")
            requests[f"{event.get('verb')} {resource}"] += 1
    return requests


def of_verbs(requests: Counter[str], verbs: set[str]) -> Counter[str]:
    return Counter({k: n for k, n in requests.items() if k.split()[0] in verbs})


# -- part A: trainings ---------------------------------------------------------------


def training(index: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": "ModelTraining",
        "metadata": {"name": f"bench-{index:04d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"architecture": "mlp", "task": "tabular-classification"},
            "data": {"train": {"uri": "builtin://breast-cancer"}},
            "output": {"uri": "file:///tmp/bench"},
        },
    }


def phase_of(obj: Any) -> str:
    return str((obj.status or {}).get("phase") or "none")


def latest(watch: Watch, names: list[str], value: Any, since: float) -> float:
    """Seconds from `since` until the last of `names` first took `value` (0: none did)."""
    times = [t for t in (watch.first(name, value) for name in names) if t is not None]
    return max(times) - since if times else 0.0


def until_all(
    watch: Watch, names: list[str], phase: str, since: float, args: argparse.Namespace
) -> tuple[list[str], float]:
    """Wait until all of `names` reached `phase` (a Failed one counts as done), or until
    nothing moved for --stall-seconds; those that reached it, and when the last did."""
    watch.wait(
        lambda tally: tally[phase] + tally["Failed"] >= len(names),
        timeout=args.timeout,
        stall=args.stall_seconds,
        what=f"all {phase}",
    )
    reached = watch.reached(names, phase)
    return reached, latest(watch, reached, phase, since)


def end_pods(cluster: LocalCluster, pods: list[str]) -> None:
    """Make kwok end every pod with exit code 0 and a result, in parallel chunks."""
    size = math.ceil(len(pods) / CHUNKS)
    message = json.dumps(RESULT)

    def annotate(chunk: list[str]) -> None:
        cluster.kubectl(
            "annotate", "pods", "-n", NAMESPACE, *chunk,
            f"{EXIT_CODE_ANNOTATION}=0", f"{MESSAGE_ANNOTATION}={message}",
        )  # fmt: skip

    with ThreadPoolExecutor(CHUNKS) as pool:
        list(pool.map(annotate, [pods[i : i + size] for i in range(0, len(pods), size)]))


def bench_trainings(
    variant: Variant, binaries: Binaries, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    count = args.count
    names = [training(i)["metadata"]["name"] for i in range(count)]
    log = work / "operator.log"
    with control_plane(variant, binaries, work, pods=count) as (cluster, kubeconfig):
        trainings = Watch(cluster.kubeconfig, ModelTraining, phase_of)
        pods = Watch(
            cluster.kubeconfig,
            Pod,
            lambda pod: pod.status.phase if pod.status else None,
            labels={c.LABEL_COMPONENT: "training"},
        )
        try:
            with operator_process(variant, kubeconfig, log) as operator:
                time.sleep(5)  # the operator lists and starts watching before the burst
                alive(operator, log)
                say(f"{variant.name}: creating {count} ModelTrainings")
                applied = time.monotonic()
                create_all(cluster, [training(i) for i in range(count)])
                created_s = time.monotonic() - applied

                ran, running_s = until_all(trainings, names, "Running", applied, args)
                pods.wait(
                    lambda tally: tally["Running"] >= len(ran),
                    timeout=60,
                    stall=args.stall_seconds,
                    what="their pods Running",
                )
                pods_running_s = latest(
                    pods, pods.reached(list(pods.current), "Running"), "Running", applied
                )
                say(f"{variant.name}: {len(ran)} Running after {running_s:.1f} s; ending pods")
                end_pods(cluster, sorted(pods.current))
                done, succeeded_s = until_all(trainings, ran, "Succeeded", applied, args)
                say(f"{variant.name}: {len(done)} Succeeded after {succeeded_s:.1f} s; idle CPU")
                time.sleep(5)  # let the last events settle
                idle_cpu = cpu_percent(operator.pid, args.idle_seconds)
                rss = peak_rss_mb(operator.pid)
                alive(operator, log)
        finally:
            trainings.stop()
            pods.stop()
        time.sleep(2)  # the audit log is written in batches
        requests = operator_requests(cluster.audit_log)
    writes = of_verbs(requests, WRITE_VERBS)
    reads = of_verbs(requests, READ_VERBS)
    return {
        "count": count,
        "created_s": round(created_s, 2),
        "running_s": round(running_s, 2) if len(ran) == count else None,
        "never_running": count - len(ran),
        "last_running_s": round(running_s, 2),
        "pods_running_s": round(pods_running_s, 2),
        "succeeded_s": round(succeeded_s, 2) if len(done) == count else None,
        "never_succeeded": count - len(done),
        "last_succeeded_s": round(succeeded_s, 2),
        "phases": trainings.seen(),
        "writes_per_training": round(sum(writes.values()) / count, 3),
        "writes": {k: round(n / count, 3) for k, n in sorted(writes.items())},
        "reads_per_training": round(sum(reads.values()) / count, 3),
        "reads": {k: round(n / count, 3) for k, n in sorted(reads.items())},
        "idle_cpu_percent": round(idle_cpu, 3),
        "peak_rss_mb": round(rss, 1),
    }


# -- part B: deployments -------------------------------------------------------------


def model_deployment(index: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": f"bench-{index:03d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": "file:///models/bench"},
            "replicas": REPLICAS,
            "autoscaling": AUTOSCALING,
            "resources": {"cpu": "100m", "memory": "512Mi"},
        },
    }


class StandIn:
    """bench/standin_dashboard.py as a process of its own, and its /control API."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(__file__).resolve().parent / "standin_dashboard.py"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(script), f"--port={self.port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/control/health")
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"no stand-in dashboard: {tail(log)}") from None
                time.sleep(0.2)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
        return json.loads(text) if text.startswith(("{", "[")) else text

    def counts(self) -> tuple[float, dict[str, dict[str, int]]]:
        got = self.call("GET", "/control/counts")
        return float(got["at"]), got["counts"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def rates(
    before: tuple[float, dict[str, dict[str, int]]],
    after: tuple[float, dict[str, dict[str, int]]],
    deployments: int,
) -> dict[str, float]:
    """Requests per second by kind between two snapshots of the stand-in's counts: in
    all, and the busiest deployment's (serve: dashboard GETs; head and replica: metrics)."""
    seconds = after[0] - before[0]
    figures: dict[str, float] = {}
    for kind in ("serve", "deploy", "head", "replica"):
        old, new = before[1].get(kind, {}), after[1].get(kind, {})
        per = [(new.get(name, 0) - old.get(name, 0)) / seconds for name in new]
        figures[f"{kind}_per_s"] = round(sum(per), 2)
        figures[f"{kind}_per_s_max_one"] = round(max(per, default=0.0), 3)
    figures["serve_per_s_per_deployment"] = round(figures["serve_per_s"] / deployments, 3)
    figures["metrics_per_s"] = round(figures["head_per_s"] + figures["replica_per_s"], 2)
    return figures


@dataclass
class Step:
    case: str
    delay_s: float
    """From the load change to Serve's target change (the stand-in's delay)."""
    latency_s: float | None
    """From the target change to the worker Deployment's size; None: never."""


@dataclass
class Scenario:
    name: str
    steps: list[Step] = field(default_factory=list)
    error: str = ""


def run_scenario(
    standin: StandIn, workers: Watch, scenario: Scenario, start_s: float, timeout: float
) -> None:
    """The load steps on one deployment; each waits until Serve's target moved and the
    workers followed (or `timeout` passed), then holds HOLD_S."""
    time.sleep(start_s)
    try:
        for ongoing, target, case in STEPS:
            set_at = time.monotonic()
            standin.call("POST", "/control/load", {**ident(scenario.name), "ongoing": ongoing})
            query = "&".join(f"{k}={v}" for k, v in ident(scenario.name).items())
            got = standin.call(
                "GET", f"/control/wait?{query}&target={target}&after={set_at}", timeout=90
            )
            changed_at = float(got["changed_at"])
            seen = workers.wait_first(scenario.name, target, after=changed_at, timeout=timeout)
            latency = None if seen is None else seen - changed_at
            scenario.steps.append(Step(case, changed_at - set_at, latency))
            time.sleep(HOLD_S)
    except Exception as error:  # reported with the figures
        scenario.error = repr(error)


def ident(name: str) -> dict[str, str]:
    return {"namespace": NAMESPACE, "name": name}


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ranked = sorted(values)
    return ranked[max(math.ceil(p / 100 * len(ranked)) - 1, 0)]


def latency_figures(scenarios: list[Scenario]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for case in ("loaded", "idle", "gone"):
        steps = [s for sc in scenarios for s in sc.steps if s.case == case]
        seen = [s.latency_s for s in steps if s.latency_s is not None]
        figures[case] = {
            "n": len(steps),
            "missed": len(steps) - len(seen),
            "p50_s": percentile(seen, 50),
            "p95_s": percentile(seen, 95),
            "max_s": max(seen, default=None),
            "serve_delay_p50_s": percentile([s.delay_s for s in steps], 50),
            "latencies_s": [round(v, 3) for v in seen],
        }
    figures["errors"] = [f"{sc.name}: {sc.error}" for sc in scenarios if sc.error]
    return figures


def worker_owner(deployment: Any) -> str | None:
    return (deployment.metadata.labels or {}).get(c.LABEL_DEPLOYMENT)


def bench_deployments(
    variant: Variant, binaries: Binaries, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    count = args.deployments
    manifests = [model_deployment(i) for i in range(count)]
    names = [m["metadata"]["name"] for m in manifests]
    spread = min(args.sampled, count)
    sampled = [names[i * count // spread] for i in range(spread)]
    log = work / "operator.log"
    pods = 2 * count + len(sampled) * (REPLICAS["max"] - REPLICAS["min"])
    standin = StandIn(work / "standin.log")
    try:
        standin.call(
            "POST",
            "/control/register",
            [
                {**ident(n), "head": names_for(n).head_service, **REPLICAS, **AUTOSCALING}
                for n in names
            ],
        )
        with control_plane(variant, binaries, work, pods=pods) as (cluster, kubeconfig):
            phases = Watch(cluster.kubeconfig, ModelDeployment, phase_of)
            workers = Watch(
                cluster.kubeconfig,
                Deployment,
                lambda d: d.spec.replicas,
                labels={c.LABEL_ROLE: "worker"},
                key=worker_owner,
            )
            try:
                env = templates(standin.port)
                with operator_process(variant, kubeconfig, log, env) as operator:
                    figures = drive_deployments(
                        operator,
                        cluster=cluster,
                        standin=standin,
                        phases=phases,
                        workers=workers,
                        sampled=sampled,
                        args=args,
                        log=log,
                    )
            finally:
                phases.stop()
                workers.stop()
            time.sleep(2)  # the audit log is written in batches
            window = figures.pop("window")
            steady = operator_requests(cluster.audit_log, since=window[0], until=window[1])
            seconds = window[1] - window[0]
            figures["api_per_s"] = round(sum(steady.values()) / seconds, 2)
            figures["api_writes_per_s"] = round(
                sum(of_verbs(steady, WRITE_VERBS).values()) / seconds, 3
            )
            figures["api_steady"] = {k: round(n / seconds, 3) for k, n in sorted(steady.items())}
            every = operator_requests(cluster.audit_log)
            figures["writes_per_deployment"] = round(
                sum(of_verbs(every, WRITE_VERBS).values()) / count, 3
            )
    finally:
        standin.stop()
    return figures


def drive_deployments(
    operator: subprocess.Popen[bytes],
    *,
    cluster: LocalCluster,
    standin: StandIn,
    phases: Watch,
    workers: Watch,
    sampled: list[str],
    args: argparse.Namespace,
    log: Path,
) -> dict[str, Any]:
    """Create, wait for Ready, measure the steady state, then the load steps."""
    count = args.deployments
    names = [model_deployment(i)["metadata"]["name"] for i in range(count)]
    time.sleep(5)  # the operator lists and starts watching before the burst
    alive(operator, log)
    say(f"creating {count} ModelDeployments")
    applied = time.monotonic()
    create_all(cluster, [model_deployment(i) for i in range(count)])
    phases.wait(
        lambda tally: tally["Ready"] == count,
        timeout=args.timeout,
        stall=args.stall_seconds,
        what="all Ready",
    )
    ready = phases.reached(names, "Ready")
    ready_s = latest(phases, ready, "Ready", applied)
    workers.wait(
        lambda tally: tally[REPLICAS["min"]] >= len(ready),
        timeout=60,
        stall=args.stall_seconds,
        what="one worker each",
    )
    say(f"{len(ready)} Ready after {ready_s:.1f} s; steady state for {args.idle_seconds:.0f} s")
    time.sleep(args.settle_seconds)
    alive(operator, log)
    before, since = standin.counts(), time.time()
    steady_cpu = cpu_percent(operator.pid, args.idle_seconds)
    after, until = standin.counts(), time.time()
    figures: dict[str, Any] = {
        "count": count,
        "ready_s": round(ready_s, 2) if len(ready) == count else None,
        "never_ready": count - len(ready),
        "last_ready_s": round(ready_s, 2),
        "phases": phases.seen(),
    }
    figures.update(rates(before, after, count))
    figures["steady_cpu_percent"] = round(steady_cpu, 2)
    say(f"load steps on {len(sampled)} deployments")
    scenarios = [Scenario(name) for name in sampled]
    threads = [
        threading.Thread(
            target=run_scenario,
            args=(standin, workers, scenario, i * STAGGER_S, args.decision_timeout),
        )
        for i, scenario in enumerate(scenarios)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alive(operator, log)
    figures["decision"] = latency_figures(scenarios)
    figures["peak_rss_mb"] = round(peak_rss_mb(operator.pid), 1)
    figures["window"] = (since, until)
    return figures


# -- the report ----------------------------------------------------------------------


def number(value: Any, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(a: Any, b: Any) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


Figures = dict[str, Any]


def row(
    label: str,
    base: Figures,
    new: Figures,
    key: str,
    *,
    goal: float | None = None,
    unit: str = "",
    digits: int = 2,
) -> None:
    """One figure: baseline, new, new/baseline, the goal, and each ratio to it."""
    b, n = base.get(key), new.get(key)
    aim = f"≤ {goal:g}{unit}" if goal is not None else "—"
    print(
        f"{label:44s} {number(b, digits):>9s} {number(n, digits):>9s} {ratio(n, b):>8s}"
        f" {aim:>8s} {ratio(b, goal):>9s} {ratio(n, goal):>8s}"
    )


def header(title: str, results: dict[str, Any]) -> None:
    print(f"\n{title}")
    source = {v: results.get(v, {}).get("source", "—") for v in ("baseline", "new")}
    print(f"  baseline: {source['baseline']}    new: {source['new']}")
    print(
        f"{'figure':44s} {'baseline':>9s} {'new':>9s} {'new/base':>8s} {'goal':>8s}"
        f" {'base/goal':>9s} {'new/goal':>8s}"
    )


def part(results: dict[str, Any], variant: str, name: str) -> Figures:
    return results.get(variant, {}).get(name) or {}


def report_trainings(results: dict[str, Any]) -> None:
    base, new = part(results, "baseline", "trainings"), part(results, "new", "trainings")
    count = results["args"]["count"]
    header(f"Part A: {count} ModelTrainings, one pod each (kwok)", results)
    row("all Running, from the first create (s)", base, new, "running_s",
        goal=GOALS["running_s"], unit=" s", digits=1)  # fmt: skip
    if base.get("never_running") or new.get("never_running"):
        row("  never Running: stuck (trainings)", base, new, "never_running", digits=0)
        row("  the last of the others Running (s)", base, new, "last_running_s", digits=1)
    row("  every pod Running, kwok's floor (s)", base, new, "pods_running_s", digits=1)
    row("  all created (s)", base, new, "created_s", digits=1)
    row("all Succeeded (s)", base, new, "succeeded_s", digits=1)
    if base.get("never_succeeded") or new.get("never_succeeded"):
        row("  never Succeeded (trainings)", base, new, "never_succeeded", digits=0)
        row("  the last of the others Succeeded (s)", base, new, "last_succeeded_s", digits=1)
    row("API writes per training", base, new, "writes_per_training",
        goal=GOALS["writes_per_training"])  # fmt: skip
    for kind in sorted({*base.get("writes", {}), *new.get("writes", {})}):
        row(f"  {kind}", base.get("writes", {}), new.get("writes", {}), kind)
    row("API reads per training (get, list, watch)", base, new, "reads_per_training")
    row("idle CPU once finished (% of a core)", base, new, "idle_cpu_percent",
        goal=GOALS["idle_cpu_percent"], unit=" %")  # fmt: skip
    row("operator peak RSS (MB)", base, new, "peak_rss_mb", digits=0)


def report_deployments(results: dict[str, Any]) -> None:
    base, new = part(results, "baseline", "deployments"), part(results, "new", "deployments")
    count = results["args"]["deployments"]
    header(f"Part B: {count} ModelDeployments (kwok) and a stand-in dashboard", results)
    row("all Ready, from the first create (s)", base, new, "ready_s", digits=1)
    if base.get("never_ready") or new.get("never_ready"):
        row("  never Ready: stuck (deployments)", base, new, "never_ready", digits=0)
        row("  the last of the others Ready (s)", base, new, "last_ready_s", digits=1)
    print("steady state, all idle:")
    for key, label in (
        ("serve_per_s", "  dashboard GETs per second, all"),
        ("serve_per_s_max_one", "  dashboard GETs per second, busiest one"),
        ("metrics_per_s", "  metrics GETs per second (head + replicas)"),
        ("api_per_s", "  operator API requests per second"),
        ("api_writes_per_s", "  operator API writes per second"),
        ("steady_cpu_percent", "  operator CPU (% of a core)"),
    ):
        row(label, base, new, key)
    print("decision latency, Serve's target -> the worker Deployment's replicas (s):")
    for case, label in (
        ("loaded", "under load, the target moves again"),
        ("idle", "idle, load arrives"),
        ("gone", "load gone, back to min"),
    ):
        b, n = base.get("decision", {}).get(case, {}), new.get("decision", {}).get(case, {})
        goal = GOALS["loaded_p95_s"] if case == "loaded" else None
        row(f"  {label}: p50", b, n, "p50_s")
        row(f"  {label}: p95", b, n, "p95_s", goal=goal, unit=" s")
        row(f"  {label}: max", b, n, "max_s")
        if b.get("missed") or n.get("missed"):
            print(f"  {label}: never followed: {b.get('missed')} / {n.get('missed')} steps")
    row("API writes per deployment, whole run", base, new, "writes_per_deployment")
    row("operator peak RSS (MB)", base, new, "peak_rss_mb", digits=0)


# -- main ----------------------------------------------------------------------------


PARTS = {"trainings": bench_trainings, "deployments": bench_deployments}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000, help="ModelTrainings (part A)")
    parser.add_argument("--deployments", type=int, default=200, help="ModelDeployments (B)")
    parser.add_argument("--sampled", type=int, default=20, help="deployments put under load")
    parser.add_argument("--only", choices=sorted(PARTS), help="run one part")
    parser.add_argument("--baseline", default="27339ef", help="git ref, or none to skip it")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="CPU/rate window")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=30.0,
        help="before the window (longer than a deployment's 10 s of fast reads after a change)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="for all Running/Ready")
    parser.add_argument(
        "--stall-seconds", type=float, default=60.0, help="no change this long: the rest is stuck"
    )
    parser.add_argument("--decision-timeout", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    root = repo_root()
    work = Path(tempfile.mkdtemp(prefix="mp-bench-operator-"))
    binaries = build_binaries(root)
    variants = [new_variant(root)]
    if args.baseline != "none":
        variants.insert(0, baseline_variant(root, args.baseline, work))
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    for variant in variants:
        results[variant.name] = {"source": variant.source, "imported": variant.imported()}
        say(f"{variant.name} ({variant.source}) imports {results[variant.name]['imported']}")
    for name, bench in PARTS.items():
        if args.only not in (None, name):
            continue
        for variant in variants:
            workdir = work / f"{name}-{variant.name}"
            workdir.mkdir()
            say(f"part {name}, {variant.name} ({variant.source}); logs in {workdir}")
            try:
                results[variant.name][name] = bench(variant, binaries, workdir, args)
            except Exception as error:  # the other runs still report
                log_tail = tail(workdir / "operator.log")
                results[variant.name][name] = {"error": repr(error), "log_tail": log_tail}
                say(f"{name}, {variant.name} failed: {error!r}\n{log_tail}")
    if args.only in (None, "trainings"):
        report_trainings(results)
    if args.only in (None, "deployments"):
        report_deployments(results)
    for variant in variants:
        for name in PARTS:
            error = results[variant.name].get(name, {}).get("error")
            if error:
                print(f"\n{variant.name} {name} FAILED: {error}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"\nlogs: {work}")


if __name__ == "__main__":
    main()
