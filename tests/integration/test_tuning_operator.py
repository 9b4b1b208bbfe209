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


def running_trial_pods(
    cluster: LocalCluster, namespace: str, training: str, count: int, attempt: int = 0
) -> list[dict[str, Any]]:
    """Wait for `count` running pods of `training`'s trials (of one attempt)."""

    def probe() -> list[dict[str, Any]] | None:
        pods = cluster.get_json(
            "pods",
            "-n",
            namespace,
            "-l",
            f"modelplane.io/training={training},modelplane.io/attempt={attempt}",
        )["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running if len(running) >= count else None

    return wait_for(probe, what=f"{count} running trial pods of {training} (attempt {attempt})")


def end_pod(
    cluster: LocalCluster, namespace: str, pod: dict[str, Any], code: int, message: str = ""
) -> None:
    annotations = [f"{EXIT_CODE_ANNOTATION}={code}"]
    if message:
        annotations.append(f"{MESSAGE_ANNOTATION}={message}")
    cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, *annotations)


def search_status(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get_json("mt", name, "-n", namespace).get("status") or {}
    return status


def a_search(name: str, **changes: Any) -> dict[str, Any]:
    return make_training(
        {
            "spec.output.uri": "pvc://models/x",
            "spec.tuning": {
                "objective": {"metric": "f1", "goal": "maximize"},
                "algorithm": "random",
                "maxTrials": changes.pop("max_trials", 1),
                "parallelTrials": changes.pop("parallel_trials", 1),
                "space": {"learningRate": {"type": "loguniform", "min": 1e-4, "max": 1e-1}},
            },
            **changes,
        },
        name=name,
    )


def test_a_trial_failed_by_the_infrastructure_is_retried_from_its_checkpoints(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    resource = a_search("retried", **{"spec.maxRestarts": 1})
    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(resource))
    [first] = running_trial_pods(crds, namespace, "retried", 1, attempt=0)
    end_pod(crds, namespace, first, 1)  # an infrastructure failure, not a config error

    [second] = running_trial_pods(crds, namespace, "retried", 1, attempt=1)
    assert second["metadata"]["labels"]["modelplane.io/trial"] == "retried-t0"
    job = crds.get_json("job", "retried-t0-train-1", "-n", namespace)
    run_config = job["spec"]["template"]["metadata"]["annotations"]["modelplane.io/run-config"]
    assert json.loads(run_config)["name"] == "retried-t0"  # same checkpoints
    trial = search_status(crds, namespace, "retried")["trials"][0]
    assert trial["restarts"] == 1
    assert "attempt 1 failed" in trial["reason"]
    end_pod(crds, namespace, second, 0, result("retried-t0", 0.9))

    def done() -> dict[str, Any] | None:
        status = search_status(crds, namespace, "retried")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(done, what="the search to succeed after its trial's restart")
    assert status["trials"][0]["restarts"] == 1
    assert status["bestTrial"] == "retried-t0"
    jobs = [j["metadata"]["name"] for j in trial_jobs_of(crds, namespace, "retried")]
    assert jobs == ["retried-t0-train-1"]  # the failed attempt was replaced, not kept


def test_a_trial_out_of_restarts_fails_and_the_search_with_it(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    resource = a_search("fragile", **{"spec.maxRestarts": 0})
    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(resource))
    [pod] = running_trial_pods(crds, namespace, "fragile", 1)
    end_pod(crds, namespace, pod, 1)

    def failed() -> dict[str, Any] | None:
        status = search_status(crds, namespace, "fragile")
        return status if status.get("phase") == "Failed" else None

    status = wait_for(failed, what="the search to fail")
    assert status["trials"][0]["reason"].startswith("failed after 0 restart(s) (maxRestarts 0)")
    assert len(trial_jobs_of(crds, namespace, "fragile")) == 1


def trial_jobs_of(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "jobs", "-n", namespace, "-l", f"modelplane.io/training={name}"
    )["items"]
    return items


def test_suspending_a_search_suspends_its_trials_and_resuming_continues_it(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    resource = a_search("paused", max_trials=3, parallel_trials=2)
    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(resource))
    running_trial_pods(crds, namespace, "paused", 2)

    suspended = {**resource, "spec": {**resource["spec"], "suspend": True}}
    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(suspended))

    def all_suspended() -> dict[str, Any] | None:
        status = search_status(crds, namespace, "paused")
        jobs = trial_jobs_of(crds, namespace, "paused")
        pods = crds.get_json("pods", "-n", namespace, "-l", "modelplane.io/training=paused")
        still = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
        every_job = len(jobs) == 2 and all(j["spec"].get("suspend") for j in jobs)
        return status if status.get("phase") == "Suspended" and every_job and not still else None

    status = wait_for(all_suspended, what="both trials' jobs suspended and their pods gone")
    held = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert (held["status"], held["reason"]) == ("True", "Suspended")
    assert len(status["trials"]) == 2  # no trial starts while suspended

    crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(resource))
    pods = running_trial_pods(crds, namespace, "paused", 2)
    assert not any(j["spec"].get("suspend") for j in trial_jobs_of(crds, namespace, "paused"))
    for pod in pods:
        trial = pod["metadata"]["labels"]["modelplane.io/trial"]
        end_pod(crds, namespace, pod, 0, result(trial, 0.8))

    def third() -> list[dict[str, Any]] | None:
        pods = crds.get_json("pods", "-n", namespace, "-l", "modelplane.io/trial=paused-t2")
        running = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
        return running or None

    [last] = wait_for(third, what="the search to continue with its third trial")
    end_pod(crds, namespace, last, 0, result("paused-t2", 0.9))

    def done() -> dict[str, Any] | None:
        status = search_status(crds, namespace, "paused")
        return status if status.get("phase") == "Succeeded" else None

    assert wait_for(done, what="the resumed search to succeed")["bestTrial"] == "paused-t2"
