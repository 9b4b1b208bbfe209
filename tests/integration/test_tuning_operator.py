"""Hyperparameter search as trial Jobs: parallelism, the best trial, operator restarts."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from modelplane_harness.cluster import EXIT_CODE_ANNOTATION, MESSAGE_ANNOTATION, LocalCluster
from modelplane_harness.operator import OperatorProcess
from modelplane_harness.waiting import wait_for
from tests.factories import make_training

F1_BY_TRIAL = {0: 0.70, 1: 0.72, 2: 0.69, 3: 0.95, 4: 0.71, 5: 0.68}


def result(trial: str, f1: float) -> str:
    return json.dumps(
        {
            "version": 1,
            "run": trial,
            "metrics": {"f1": f1, "accuracy": f1},
            "artifact_uri": f"pvc://models/x/{trial}",
            "digest": f"sha256:{trial}",
            "steps": 10,
            "epochs": 1,
        }
    )


def trial_jobs(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "jobs", "-n", namespace, "-l", "modelplane.io/training=search"
    )["items"]
    return items


def test_six_trials_two_at_a_time_end_with_the_best_trials_artifact(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    resource = make_training(
        {
            "spec.output.uri": "pvc://models/x",
            "spec.tuning": {
                "objective": {"metric": "f1", "goal": "maximize"},
                "algorithm": "random",
                "maxTrials": 6,
                "parallelTrials": 2,
                "space": {"learningRate": {"type": "loguniform", "min": 1e-4, "max": 1e-1}},
            },
        },
        name="search",
    )
    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(resource))
    finished: set[str] = set()
    most_at_once = 0
    restarted = False
    deadline = time.monotonic() + 180
    while len(finished) < 6 and time.monotonic() < deadline:
        jobs = trial_jobs(crds, namespace)
        active = [j for j in jobs if j["metadata"]["labels"]["modelplane.io/trial"] not in finished]
        most_at_once = max(most_at_once, len(active))
        pods = crds.get_json("pods", "-n", namespace, "-l", "modelplane.io/training=search")
        for pod in pods["items"]:
            trial = pod["metadata"]["labels"]["modelplane.io/trial"]
            if trial in finished or pod["status"].get("phase") != "Running":
                continue
            index = int(trial.rsplit("-t", 1)[1])
            crds.kubectl(
                "annotate",
                "pod",
                pod["metadata"]["name"],
                "-n",
                namespace,
                f"{EXIT_CODE_ANNOTATION}=0",
                f"{MESSAGE_ANNOTATION}={result(trial, F1_BY_TRIAL[index])}",
            )
            finished.add(trial)
        if len(finished) >= 3 and not restarted:
            operator.kill()  # mid-search: status holds the search, the Jobs the trials
            operator.start()
            restarted = True
        time.sleep(0.3)
    assert len(finished) == 6, finished

    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = crds.get_json("mt", "search", "-n", namespace).get("status", {})
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(done, timeout=90, what="the search to succeed")
    assert most_at_once <= 2
    assert [t["name"] for t in status["trials"]] == [f"search-t{i}" for i in range(6)]
    assert len(trial_jobs(crds, namespace)) == 6  # no trial was started twice
    assert status["bestTrial"] == "search-t3"
    assert status["artifact"] == {"uri": "pvc://models/x/search-t3", "digest": "sha256:search-t3"}
    assert status["metrics"]["f1"] == 0.95
    assert status["trialSummary"] == "6/6"
    params = [t["params"]["learningRate"] for t in status["trials"]]
    assert len(set(params)) == 6
    assert all(1e-4 <= p <= 1e-1 for p in params)
