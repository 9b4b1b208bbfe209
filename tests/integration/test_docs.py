"""docs/getting-started.md, executed: every bash block, in order, on a fresh local control
plane, so the guide and the product cannot drift apart.

An HTML comment right before a block steers the run (the reader never sees it):

    <!-- docs-test: skip (why) -->              not run; the reason is mandatory
    <!-- docs-test: before ACTION, ACTION -->   the test does ACTION first, in place of
                                                what a real cluster's kubelet would do
    <!-- docs-test: expect TEXT -->             the block's output must contain TEXT

Actions: `operator` (run the operator as its pod would: `python -m modelplane_operator`
with a token of the chart's ServiceAccount), `models-volume` (bind the `models` claim to
a hostPath volume: the test cluster has no provisioner), `complete-training NAME` (end the
training's pod as the runtime would, with its result).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from modelplane_harness.cluster import (
    EXIT_CODE_ANNOTATION,
    MESSAGE_ANNOTATION,
    LocalCluster,
    build_binaries,
    eprint,
)
from modelplane_harness.operator import OperatorProcess, service_account_kubeconfig
from modelplane_harness.waiting import wait_for
from tests.factories import ROOT

GUIDE = ROOT / "docs" / "getting-started.md"
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(skip|before|expect)\s*(.*?)\s*-->", re.DOTALL)
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


@dataclass
class Block:
    script: str
    skip: str = ""
    before: list[str] = field(default_factory=list)
    expect: str = ""


def blocks(text: str) -> list[Block]:
    """The guide's bash blocks, each with the directive written right before it."""
    found = []
    last_end = 0
    for match in BLOCK.finditer(text):
        block = Block(script=match.group(1))
        before = text[last_end : match.start()].rstrip()
        last_end = match.end()
        found.append(block)
        if not before.endswith("-->"):
            continue
        directive = DIRECTIVE.fullmatch(before[before.rfind("<!--") :])
        if directive is None:
            continue
        kind, argument = directive.groups()
        if kind == "skip":
            block.skip = argument
        elif kind == "expect":
            block.expect = argument
        else:
            actions = argument.split("(", 1)[0]
            block.before = [a.strip() for a in actions.split(",") if a.strip()]
    return found


def test_every_directive_is_understood_and_every_skip_says_why() -> None:
    parsed = blocks(GUIDE.read_text())
    assert len(parsed) >= 8
    assert sum(1 for b in parsed if b.before) >= 2
    # Only what needs pods that really run (kind) is skipped.
    assert sum(1 for b in parsed if b.skip) == 1
    known = {"operator", "models-volume", "complete-training"}
    for block in parsed:
        assert all(action.split()[0] in known for action in block.before), block.before
        if block.skip:
            assert block.skip.startswith("("), block.skip
            assert len(block.skip) > 20, block.skip


@pytest.fixture(scope="module")
def fresh_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster of its own: the guide starts from nothing, as a newcomer does."""
    local = LocalCluster(tmp_path_factory.mktemp("docs-cluster"), build_binaries(ROOT))
    local.start(log=eprint)
    yield local
    local.stop()


class Kubelet:
    """What the test does where a real cluster's kubelet would run pods."""

    def __init__(self, cluster: LocalCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.operator: OperatorProcess | None = None

    def run(self, action: str) -> None:
        name, *args = action.split()
        if name == "operator":
            kubeconfig = service_account_kubeconfig(
                self.cluster, self.workdir / "operator.kubeconfig"
            )
            self.operator = OperatorProcess(kubeconfig, self.workdir / "operator.log")
            self.operator.start()
        elif name == "models-volume":
            self.models_volume()
        elif name == "complete-training":
            self.complete_training(args[0])

    def models_volume(self) -> None:
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "docs-models"},
            "spec": {
                "capacity": {"storage": "2Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "hostPath": {"path": str(self.workdir / "models")},
                "claimRef": {"namespace": "default", "name": "models"},
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(volume))

    def complete_training(self, training: str) -> None:
        selector = f"modelplane.io/training={training}"

        def running() -> list[str] | None:
            pods = self.cluster.get_json("pods", "-l", selector)["items"]
            names = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
            return names or None

        (pod, *_) = wait_for(running, timeout=120, what=f"the pod of training {training}")
        result = {
            "version": 1,
            "run": training,
            "metrics": {"accuracy": 0.985, "f1": 0.985},
            "artifact_uri": f"pvc://models/{training}/{training}",
            "digest": "sha256:" + "0" * 64,
            "steps": 200,
            "epochs": 4,
        }
        self.cluster.kubectl(
            "annotate",
            "pod",
            pod,
            f"{EXIT_CODE_ANNOTATION}=0",
            f"{MESSAGE_ANNOTATION}={json.dumps(result)}",
        )

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()


@pytest.mark.timeout(900)
def test_the_getting_started_guide_runs_as_written(
    fresh_cluster: LocalCluster, tmp_path: Path
) -> None:
    binaries = fresh_cluster.binaries
    env = {
        **fresh_cluster.helm_env(),
        "KUBECONFIG": str(fresh_cluster.kubeconfig),
        "PATH": f"{binaries.kubectl.parent}:{binaries.helm.parent}:{os.environ['PATH']}",
    }
    kubelet = Kubelet(fresh_cluster, tmp_path)
    ran = 0
    try:
        for block in blocks(GUIDE.read_text()):
            if block.skip:
                continue
            for action in block.before:
                kubelet.run(action)
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.script],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, (
                f"this block of {GUIDE.name} failed:\n{block.script}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            )
            if block.expect:
                assert block.expect in result.stdout, (block.script, result.stdout)
            ran += 1
    finally:
        kubelet.stop()
    assert ran >= 7
    # The guide's last step uninstalled the release: nothing of it is left, CRDs are.
    left = fresh_cluster.kubectl(
        "get", "deployments,serviceaccounts,clusterroles,clusterrolebindings", "-A",
        "-l", "app.kubernetes.io/instance=modelplane", "-o", "name",
    ).stdout.split()  # fmt: skip
    assert left == []
    assert fresh_cluster.kubectl("get", "crd", "modeldeployments.modelplane.io").returncode == 0
