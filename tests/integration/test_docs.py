"""docs/getting-started.md, executed: every bash block, in order, on a cluster with a real
kubelet node and the images built here, so the guide and the product cannot drift apart.

Nothing is simulated: the operator runs as the chart's pod, the training's two ranks run
as real pods, the deployment's Ray head and worker are real pods. An HTML comment right
before a block can say what its output must contain (the reader never sees it):

    <!-- docs-test: expect TEXT -->             the block's output must contain TEXT
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modelplane_harness.cluster import LocalCluster
from tests.factories import ROOT

GUIDE = ROOT / "docs" / "getting-started.md"
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->", re.DOTALL)
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


@dataclass
class Block:
    script: str
    expect: str = ""
    directives: list[str] = field(default_factory=list)


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
        block.directives.append(kind)
        if kind == "expect":
            block.expect = argument
    return found


def test_the_guide_runs_every_block_and_simulates_nothing() -> None:
    parsed = blocks(GUIDE.read_text())
    assert len(parsed) >= 8
    # The only directive left checks output; nothing is skipped or done in a block's place.
    assert {kind for b in parsed for kind in b.directives} <= {"expect"}
    assert "docs-test: skip" not in GUIDE.read_text()


class TrainingWatch:
    """`kubectl get modeltraining NAME` every half second while the guide runs: what a
    user watching the training would have seen."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.seen: list[dict[str, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TrainingWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            result = self.cluster.kubectl("get", "mt", self.name, "-o", "json", check=False)
            if result.returncode == 0:
                self.seen.append(json.loads(result.stdout).get("status", {}))

    def live_progress(self) -> list[int]:
        """The percentages seen while the training ran, before it ended."""
        return [
            int(progress["percent"])
            for status in self.seen
            if status.get("phase") == "Running"
            and isinstance(progress := status.get("progress"), dict)
            and progress.get("percent") is not None
        ]


@pytest.mark.timeout(1500)
def test_the_getting_started_guide_runs_as_written(
    real_cluster: LocalCluster, tmp_path: Path
) -> None:
    binaries = real_cluster.binaries
    env = {
        **real_cluster.helm_env(),
        "KUBECONFIG": str(real_cluster.kubeconfig),
        "PATH": f"{binaries.kubectl.parent}:{binaries.helm.parent}:{os.environ['PATH']}",
    }
    ran = 0
    began = time.monotonic()
    with TrainingWatch(real_cluster, "quickstart") as watch:
        for block in blocks(GUIDE.read_text()):
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.script],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert result.returncode == 0, (
                f"this block of {GUIDE.name} failed:\n{block.script}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            )
            if block.expect:
                assert block.expect in result.stdout, (block.script, result.stdout)
            ran += 1
    print(f"the guide ran in {time.monotonic() - began:.0f} s")
    assert ran >= 9
    # The operator pod polled rank 0's /progress over the pod network while it trained.
    live = watch.live_progress()
    assert any(0 < percent < 100 for percent in live), watch.seen[-5:]
    finished = [s for s in watch.seen if s.get("phase") == "Succeeded"]
    assert finished, watch.seen[-5:]
    assert finished[-1]["metrics"]["accuracy"] >= 0.8  # type: ignore[index]
    artifact = str(finished[-1]["artifact"]["uri"])  # type: ignore[index]
    assert artifact == "pvc://models/quickstart/quickstart", artifact
    # ... and rank 0 wrote it on the claim: the volume the `models` claim is bound to.
    claim = real_cluster.get_json("pvc", "models", "-n", "default")
    volume = real_cluster.get_json("pv", claim["spec"]["volumeName"])
    written = Path(volume["spec"]["hostPath"]["path"]) / "quickstart" / "quickstart"
    card = json.loads((written / "model_card.json").read_text())
    assert (written / "model.safetensors").is_file()
    assert card["metrics"] == finished[-1]["metrics"], card.get("metrics")
    # The guide's last step uninstalled the release: nothing of it is left, CRDs are.
    left = real_cluster.kubectl(
        "get", "deployments,serviceaccounts,clusterroles,clusterrolebindings", "-A",
        "-l", "app.kubernetes.io/instance=modelplane", "-o", "name",
    ).stdout.split()  # fmt: skip
    assert left == []
    assert real_cluster.kubectl("get", "crd", "modeldeployments.modelplane.io").returncode == 0
