"""ModelTrainings the API server accepts but the operator judges: each ends in its
terminal condition within seconds, once, and then the operator leaves it alone (no log
line, no status write)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane_harness.cluster import EXIT_CODE_ANNOTATION, MESSAGE_ANNOTATION, LocalCluster
from modelplane_harness.operator import OperatorProcess, service_account_kubeconfig
from modelplane_harness.waiting import wait_for
from tests.factories import make_training, make_tuning

GRACE_SECONDS = 2
TERMINAL_WITHIN = 10.0
QUIET_SECONDS = 5.0
TEXT_MODEL = {"architecture": "transformer", "task": "text-classification"}


def tuning(**space: dict[str, Any]) -> dict[str, Any]:
    # Every field a CEL rule reads is set: the CRD has no defaults for them (yet).
    return {**make_tuning(**space), "algorithm": "random", "maxTrials": 2, "parallelTrials": 1}


JUDGED: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-data": ({"spec.data.train.uri": "builtin://mnist"}, "spec.data.train.uri"),
    "images-for-text": (
        {"spec.model": TEXT_MODEL, "spec.data.train.uri": "builtin://digits"},
        "builtin://digits holds image data",
    ),
    "batch-from-zero": (
        {"spec.tuning": tuning(batchSize={"type": "int", "min": 0, "max": 64})},
        "spec.tuning.space.batchSize.min",
    ),
    "rate-up-to-50": (
        {"spec.tuning": tuning(learningRate={"type": "uniform", "min": 0.01, "max": 50})},
        "spec.tuning.space.learningRate.max",
    ),
    "fractional-batch": (
        {"spec.tuning": tuning(batchSize={"type": "choice", "values": [16.5, 32]})},
        "spec.tuning.space.batchSize.values[0]",
    ),
    "batch-over-3-nodes": (
        {"spec.resources.nodes": 3, "spec.hyperparameters.batchSize": 32},
        "divisible by the 3 training processes",
    ),
    "bad-claim": ({"spec.output.uri": "pvc://Models_X/out"}, "not a PersistentVolumeClaim name"),
}
"""Judged before any child: name -> (changes, text its InvalidSpec message names)."""

RESULTLESS = {
    "no-message": ("", "exited 0 without a termination message"),
    "garbage-message": ("Segmentation fault (core dumped)", "is not a training result"),
}
"""Jobs that complete without a result: name -> (rank 0's message, what the status says)."""


@pytest.fixture
def impatient_operator(
    paused_operator: None,
    crds: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[OperatorProcess]:
    """An operator of this test's own (its own log), whose result grace is 2 s."""
    monkeypatch.setenv("MODELPLANE_RESULT_GRACE_SECONDS", str(GRACE_SECONDS))
    kubeconfig = service_account_kubeconfig(crds, tmp_path / "operator.kubeconfig")
    process = OperatorProcess(kubeconfig, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()


def terminal(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The Failed condition of `name` once it is Failed, else None."""
    status = cluster.get_json("mt", name, "-n", namespace).get("status") or {}
    if status.get("phase") != "Failed":
        return None
    failed: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == "Failed")
    return failed


def lines_about(log: Path, namespace: str) -> int:
    return sum(namespace in line for line in log.read_text().splitlines())


def test_judged_and_resultless_trainings_end_once_and_stay_quiet(
    impatient_operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    # The clock starts once the operator reconciles: a canary it judges tells when.
    canary = make_training({"spec.data.train.uri": "builtin://canary"}, name="canary")
    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(canary))
    wait_for(lambda: terminal(crds, namespace, "canary"), what="the operator to start")

    resources = [
        make_training({"spec.output.uri": "pvc://models/x", **changes}, name=name)
        for name, (changes, _) in JUDGED.items()
    ] + [make_training({"spec.output.uri": "pvc://models/x"}, name=name) for name in RESULTLESS]
    applied = time.monotonic()
    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump_all(resources))

    for name, (_, named) in JUDGED.items():
        left = TERMINAL_WITHIN - (time.monotonic() - applied)
        failed = wait_for(
            lambda n=name: terminal(crds, namespace, n),  # type: ignore[misc]
            timeout=max(left, 0.5),
            what=f"{name} to fail within {TERMINAL_WITHIN:.0f} s of its apply",
        )
        assert failed["reason"] == "InvalidSpec", (name, failed)
        assert named in failed["message"], (name, failed["message"])
    jobs = crds.get_json("jobs", "-n", namespace)["items"]
    assert sorted(j["metadata"]["labels"]["modelplane.io/training"] for j in jobs) == sorted(
        RESULTLESS
    )  # a judged training creates no child

    ended: dict[str, float] = {}
    for name, (message, _) in RESULTLESS.items():
        pod = wait_for(
            lambda n=name: next(  # type: ignore[misc]
                (
                    p
                    for p in crds.get_json(
                        "pods", "-n", namespace, "-l", f"modelplane.io/training={n}"
                    )["items"]
                    if p["status"].get("phase") == "Running"
                ),
                None,
            ),
            what=f"{name}'s pod to run",
        )
        annotations = [f"{EXIT_CODE_ANNOTATION}=0"]
        if message:
            annotations.append(f"{MESSAGE_ANNOTATION}={message}")
        crds.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, *annotations)
        ended[name] = time.monotonic()
    for name, (message, says) in RESULTLESS.items():
        # Judgeable once the Job is Complete (about when its pod ended) plus the grace.
        deadline = ended[name] + GRACE_SECONDS + TERMINAL_WITHIN
        failed = wait_for(
            lambda n=name: terminal(crds, namespace, n),  # type: ignore[misc]
            timeout=max(deadline - time.monotonic(), 0.5),
            what=f"{name} to fail with ResultMissing",
        )
        assert failed["reason"] == "ResultMissing", (name, failed)
        assert says in failed["message"]
        assert message[:20] in failed["message"]
        assert "may still be under pvc://models/x/" + name in failed["message"]

    names = ["canary", *JUDGED, *RESULTLESS]

    def versions() -> dict[str, str]:
        items = crds.get_json("mt", "-n", namespace)["items"]
        return {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in items}

    before, lines = versions(), lines_about(impatient_operator.log_path, namespace)
    time.sleep(QUIET_SECONDS)  # the claim is that nothing happens for a while: wait it out
    assert versions() == before, "a terminal training's status was written again"
    log = impatient_operator.log_path.read_text().splitlines()
    assert lines_about(impatient_operator.log_path, namespace) == lines, log[-20:]

    events = crds.get_json("events", "-n", namespace)["items"]
    verdicts = [
        e["involvedObject"]["name"]
        for e in events
        if e["reason"] in ("InvalidSpec", "ResultMissing") and e["involvedObject"]["name"] in names
    ]
    assert sorted(verdicts) == sorted(names)  # one Event each: the verdict, told once
    assert all(e.get("count", 1) == 1 for e in events if e["reason"] == "InvalidSpec")
    assert set(before) == set(names)
