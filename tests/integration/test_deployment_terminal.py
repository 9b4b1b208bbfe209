"""ModelDeployments the API server accepts but the operator can judge never loop: each
reaches its terminal condition (Rejected, Stalled, a reason naming what to fix) within
10 s, and from then on the operator writes nothing to it and logs nothing about it,
although the scaling loop re-reads every deployment each second."""

from __future__ import annotations

import json
import time
from typing import Any

from modelplane_harness.cluster import LocalCluster
from modelplane_harness.operator import OperatorProcess
from modelplane_harness.waiting import wait_for
from tests.integration.test_deployment_operator import (
    apply_deployment,
    condition,
    deployment_status,
    ray_deployments,
    succeed_training,
)
from tests.integration.test_training_operator import (
    RESULT,
    apply_training,
    end_pods,
    running_pods,
    wait_phase,
)

TERMINAL_S = 10.0
QUIET_S = 5.0

# name -> (spec changes, reason, words the message must carry)
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "from-failed": (
        {"spec.model": {"fromTraining": "broken"}},
        "TrainingFailed",
        "ModelTraining 'broken' failed",
    ),
    "from-masked-lm": (
        {"spec.model": {"fromTraining": "pretrain"}},
        "UnservableModel",
        "task masked-lm",
    ),
    "metric-missing": (
        {"spec.model": {"fromTraining": "good"}, "spec.requireMetrics": {"recall": 0.5}},
        "MetricMissing",
        "reports no recall",
    ),
    "metric-low": (
        {"spec.model": {"fromTraining": "good"}, "spec.requireMetrics": {"f1": 0.95}},
        "MetricsBelowThreshold",
        "f1 is 0.92, below the required 0.95",
    ),
    "tiny-workers": (
        {"spec.model": {"fromTraining": "good"}, "spec.resources": {"memory": "100Mi"}},
        "InvalidSpec",
        "spec.resources.memory: 100Mi is below",
    ),
}


def _log_lines_naming(operator: OperatorProcess, offset: int, names: list[str]) -> list[str]:
    with operator.log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [line for line in text.splitlines() if any(name in line for name in names)]


def test_deployments_the_operator_judges_end_terminal_once_and_stay_quiet(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(crds, namespace, "good")
    succeed_training(crds, namespace, "good")
    apply_training(crds, namespace, "broken")
    end_pods(
        crds,
        namespace,
        running_pods(crds, namespace, "broken", 0, 1),
        code=42,
        rank0_message="configuration error: data.train: no label column 'label'",
    )
    wait_phase(crds, namespace, "broken", "Failed")
    apply_training(
        crds,
        namespace,
        "pretrain",
        {
            "spec.model": {"architecture": "bert", "task": "masked-lm"},
            "spec.data.train.uri": "builtin://sentiment",
        },
    )
    assert RESULT["metrics"] == {"accuracy": 0.93, "f1": 0.92}

    for name, (changes, _, _) in CASES.items():
        apply_deployment(crds, namespace, name, changes)
    applied = time.monotonic()

    def all_terminal() -> dict[str, dict[str, Any]] | None:
        statuses = {name: deployment_status(crds, namespace, name) for name in CASES}
        done = all(
            s.get("phase") == "Rejected" and condition(s, "Stalled")["reason"] == CASES[name][1]
            for name, s in statuses.items()
        )
        return statuses if done else None

    statuses = wait_for(all_terminal, timeout=TERMINAL_S, what="every deployment Rejected")
    assert time.monotonic() - applied < TERMINAL_S
    for name, status in statuses.items():
        _, reason, words = CASES[name]
        stalled, ready = condition(status, "Stalled"), condition(status, "Ready")
        assert (stalled["status"], ready["status"], ready["reason"]) == ("True", "False", reason)
        assert words in ready["message"], (name, ready["message"])
        assert ray_deployments(crds, namespace, name) == [], name

    def versions() -> dict[str, str]:
        return {
            name: crds.get_json("md", name, "-n", namespace)["metadata"]["resourceVersion"]
            for name in CASES
        }

    # The status the last pass wrote may still be landing: settle on one version.
    before = wait_for(lambda: (v := versions()) == versions() and v, what="settled statuses")
    offset = operator.log_path.stat().st_size
    time.sleep(QUIET_S)  # the claim is about a stretch of time: nothing happens in it
    assert versions() == before
    assert _log_lines_naming(operator, offset, list(CASES)) == []
    events = crds.get_json("events", "-n", namespace)["items"]
    warnings = sorted(
        (e["involvedObject"]["name"], e["reason"])
        for e in events
        if e["involvedObject"]["kind"] == "ModelDeployment"
    )
    assert warnings == sorted((name, case[1]) for name, case in CASES.items()), json.dumps(warnings)
