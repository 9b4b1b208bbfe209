"""200 ModelTrainings applied at once against the local control plane.

Measures, in one run: seconds from the apply until every training is Running and until
every one is Succeeded (kwok ends the pods), API writes the operator made per training
(from the API server's audit log, counted for the operator's ServiceAccount only), the
operator's peak RSS, and its CPU once everything is finished. Each figure is reported
against its goal as a ratio.

    .venv/bin/python bench/operator.py [--count 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from modelplane_harness.cluster import (
    EXIT_CODE_ANNOTATION,
    MESSAGE_ANNOTATION,
    LocalCluster,
    build_binaries,
    eprint,
    repo_root,
)
from modelplane_harness.operator import install_chart, service_account_kubeconfig

NAMESPACE = "bench"
OPERATOR_USER = "system:serviceaccount:modelplane-system:modelplane-operator"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
RESULT = {
    "version": 1,
    "run": "b",
    "metrics": {"accuracy": 0.9},
    "artifact_uri": "pvc://m/b",
    "digest": "sha256:00",
    "steps": 1,
    "epochs": 1,
}
GOALS = {"running_s": 30.0, "writes_per_training": 8.0, "idle_cpu_percent": 2.0}


def training(index: int) -> dict[str, object]:
    return {
        "apiVersion": "modelplane.io/v1alpha1",
        "kind": "ModelTraining",
        "metadata": {"name": f"bench-{index:03d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"architecture": "mlp", "task": "tabular-classification"},
            "data": {"train": {"uri": "builtin://breast-cancer"}},
            "output": {"uri": "file:///tmp/bench"},
        },
    }


def phases(cluster: LocalCluster) -> Counter[str]:
    items = cluster.get_json("modeltrainings", "-n", NAMESPACE)["items"]
    return Counter((i.get("status") or {}).get("phase", "none") for i in items)


def wait_all(cluster: LocalCluster, phase: str, count: int, since: float) -> float:
    while True:
        seen = phases(cluster)
        if seen[phase] == count:
            return time.monotonic() - since
        if time.monotonic() - since > 600:
            raise SystemExit(f"gave up waiting for {phase}: {dict(seen)}")
        time.sleep(0.5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def operator_writes(audit_log: Path) -> Counter[str]:
    writes: Counter[str] = Counter()
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") == OPERATOR_USER and event.get("verb") in (
            WRITE_VERBS
        ):
            ref = event.get("objectRef", {})
            writes[f"{event['verb']} {ref.get('resource')}/{ref.get('subresource', '')}"] += 1
    return writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    root = repo_root()
    work = Path(tempfile.mkdtemp(prefix="mp-bench-operator-"))
    cluster = LocalCluster(work, build_binaries(root), audit=True)
    cluster.start(log=eprint)
    operator = None
    try:
        install_chart(cluster)
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all")

        kubeconfig = service_account_kubeconfig(cluster, work / "operator.kubeconfig")
        cluster.kubectl("create", "namespace", NAMESPACE)
        operator = subprocess.Popen(
            [sys.executable, "-m", "modelplane_operator"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=(work / "operator.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(5)  # the operator lists and starts watching before the burst
        manifests = "---\n".join(yaml.safe_dump(training(i)) for i in range(args.count))
        eprint(f"applying {args.count} ModelTrainings")
        applied = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=manifests)
        running_s = wait_all(cluster, "Running", args.count, applied)
        eprint(f"all Running after {running_s:.1f} s; ending every pod")
        cluster.kubectl(
            "annotate",
            "pods",
            "-n",
            NAMESPACE,
            "--all",
            f"{EXIT_CODE_ANNOTATION}=0",
            f"{MESSAGE_ANNOTATION}={json.dumps(RESULT)}",
        )
        succeeded_s = wait_all(cluster, "Succeeded", args.count, applied)
        eprint(f"all Succeeded after {succeeded_s:.1f} s; measuring idle CPU")
        time.sleep(5)  # let the last events settle
        before = cpu_seconds(operator.pid)
        time.sleep(args.idle_seconds)
        idle_cpu = 100 * (cpu_seconds(operator.pid) - before) / args.idle_seconds
        rss = peak_rss_mb(operator.pid)
        time.sleep(2)  # the audit log is written in batches
        writes = operator_writes(cluster.audit_log or work / "none")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        cluster.stop()
    per_training = sum(writes.values()) / args.count
    print(f"{args.count} ModelTrainings, one pod each, local control plane + kwok")
    print(
        f"all Running      {running_s:6.1f} s   goal {GOALS['running_s']:.0f} s   "
        f"ratio {running_s / GOALS['running_s']:.2f}"
    )
    print(f"all Succeeded    {succeeded_s:6.1f} s")
    print(
        f"writes/training  {per_training:6.2f}     goal {GOALS['writes_per_training']:.0f}     "
        f"ratio {per_training / GOALS['writes_per_training']:.2f}"
    )
    for kind, n in sorted(writes.items()):
        print(f"    {kind:40s} {n / args.count:5.2f}")
    print(
        f"idle CPU         {idle_cpu:6.2f} % of a core   goal {GOALS['idle_cpu_percent']:.0f} %"
        f"   ratio {idle_cpu / GOALS['idle_cpu_percent']:.2f}"
    )
    print(f"operator peak RSS {rss:5.0f} MB")


if __name__ == "__main__":
    main()
