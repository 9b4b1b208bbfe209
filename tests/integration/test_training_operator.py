"""The operator drives ModelTrainings on a real API server, with kwok playing the kubelet."""

from __future__ import annotations

import json
import random
import time
from functools import partial
from typing import Any

import yaml

from modelplane_harness.cluster import EXIT_CODE_ANNOTATION, MESSAGE_ANNOTATION, LocalCluster
from modelplane_harness.operator import OperatorProcess
from modelplane_harness.waiting import wait_for
from modelplane_runtime.contract import RunConfig
from tests.factories import make_training

RESULT = {
    "version": 1,
    "run": "x",
    "metrics": {"accuracy": 0.93, "f1": 0.92},
    "artifact_uri": "pvc://models/x/x",
    "digest": "sha256:feed",
    "steps": 40,
    "epochs": 2,
}


def apply_training(
    cluster: LocalCluster, namespace: str, name: str, changes: dict[str, Any] | None = None
) -> None:
    obj = make_training({"spec.output.uri": "pvc://models/x", **(changes or {})}, name=name)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(obj))


def status(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    obj = cluster.get_json("modeltraining", name, "-n", namespace)
    result: dict[str, Any] = obj.get("status") or {}
    return result


def wait_phase(
    cluster: LocalCluster, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        current = status(cluster, namespace, name)
        return current if current.get("phase") == phase else None

    return wait_for(
        probe,
        timeout=timeout,
        what=f"{name} to be {phase}",
    )


def running_pods(
    cluster: LocalCluster, namespace: str, name: str, attempt: int, count: int
) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        pods = cluster.get_json(
            "pods",
            "-n",
            namespace,
            "-l",
            f"modelplane.io/training={name},modelplane.io/attempt={attempt}",
        )
        items = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
        return items if len(items) >= count else None

    return wait_for(probe, what=f"{count} running pods of {name} attempt {attempt}")


def end_pods(
    cluster: LocalCluster,
    namespace: str,
    pods: list[dict[str, Any]],
    *,
    code: int,
    rank0_message: str = "",
) -> None:
    """Make the fake kubelet end each pod with `code` (rank 0 also with a message)."""
    for pod in pods:
        index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        args = [
            "annotate",
            "pod",
            pod["metadata"]["name"],
            "-n",
            namespace,
            f"{EXIT_CODE_ANNOTATION}={code}",
        ]
        if index == "0" and rank0_message:
            args.append(f"{MESSAGE_ANNOTATION}={rank0_message}")
        cluster.kubectl(*args)


def jobs_of(cluster: LocalCluster, namespace: str, name: str) -> list[str]:
    jobs = cluster.get_json("jobs", "-n", namespace, "-l", f"modelplane.io/training={name}")
    return sorted(j["metadata"]["name"] for j in jobs["items"])


def test_a_gang_training_runs_on_gpu_nodes_and_succeeds_with_its_result(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(
        crds,
        namespace,
        "gang",
        {
            "spec.resources": {"nodes": 2, "gpusPerNode": 4, "cpu": "8", "memory": "32Gi"},
            "spec.evaluation.metrics": ["f1"],
        },
    )
    job = wait_for(
        lambda: (
            crds.kubectl(
                "get", "job", "gang-train", "-n", namespace, "-o", "json", check=False
            ).stdout
        ),
        what="the job",
    )
    spec = json.loads(job)["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (2, 2, "Indexed")
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == "gang-train-0.gang-train"
    service = crds.get_json("service", "gang-train", "-n", namespace)
    assert service["spec"]["clusterIP"] == "None"
    training_uid = crds.get_json("mt", "gang", "-n", namespace)["metadata"]["uid"]
    for child in (json.loads(job), service):
        assert child["metadata"]["ownerReferences"][0]["uid"] == training_uid
    # The run config reaches the pods in their annotation (a downwardAPI volume), with
    # no ConfigMap to write.
    assert not crds.get_json("configmaps", "-n", namespace, "-l", "modelplane.io/training=gang")[
        "items"
    ]

    pods = running_pods(crds, namespace, "gang", 0, 2)
    for pod in pods:
        run_config = pod["metadata"]["annotations"]["modelplane.io/run-config"]
        assert RunConfig.from_json(run_config).name == "gang"
    assert {p["spec"]["nodeName"] for p in pods} <= {"gpu-node-0", "gpu-node-1"}
    wait_phase(crds, namespace, "gang", "Running")
    end_pods(crds, namespace, pods, code=0, rank0_message=json.dumps(RESULT))
    crds.kubectl("wait", "--for=condition=Ready", "--timeout=60s", "mt/gang", "-n", namespace)
    done = status(crds, namespace, "gang")
    assert done["phase"] == "Succeeded"
    assert done["metrics"] == RESULT["metrics"]
    assert done["artifact"] == {"uri": "pvc://models/x/x", "digest": "sha256:feed"}
    assert done["keyMetric"] == "f1=0.920"
    reasons = crds.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=gang",
        "-o",
        "jsonpath={.items[*].reason}",
    ).stdout.split()
    assert "Succeeded" in reasons


def test_an_infrastructure_failure_replaces_the_job_then_succeeds(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(crds, namespace, "flaky", {"spec.maxRestarts": 2})
    end_pods(crds, namespace, running_pods(crds, namespace, "flaky", 0, 1), code=1)
    wait_for(
        lambda: status(crds, namespace, "flaky").get("restarts") == 1, what="the first restart"
    )
    end_pods(
        crds,
        namespace,
        running_pods(crds, namespace, "flaky", 1, 1),
        code=0,
        rank0_message=json.dumps(RESULT),
    )
    done = wait_phase(crds, namespace, "flaky", "Succeeded")
    assert done["restarts"] == 1
    assert done["jobName"] == "flaky-train-1"


def test_failing_every_time_ends_failed_after_max_restarts(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(crds, namespace, "broken", {"spec.maxRestarts": 1})
    end_pods(crds, namespace, running_pods(crds, namespace, "broken", 0, 1), code=137)
    end_pods(crds, namespace, running_pods(crds, namespace, "broken", 1, 1), code=137)
    failed = wait_phase(crds, namespace, "broken", "Failed")
    cond = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "RestartsExhausted"
    assert failed["restarts"] == 1
    time.sleep(3)  # no third job appears, even after a few resyncs
    assert jobs_of(crds, namespace, "broken") == ["broken-train-1"]


def test_a_config_error_fails_at_once_without_retry(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(crds, namespace, "typo", {"spec.maxRestarts": 3})
    end_pods(
        crds,
        namespace,
        running_pods(crds, namespace, "typo", 0, 1),
        code=42,
        rank0_message="configuration error: data.train: no label column 'label'",
    )
    failed = wait_phase(crds, namespace, "typo", "Failed")
    cond = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "ConfigError"
    assert "no label column" in cond["message"]
    assert failed["restarts"] == 0
    time.sleep(3)
    assert jobs_of(crds, namespace, "typo") == ["typo-train"]


def test_deleting_a_training_garbage_collects_its_children(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(crds, namespace, "gone")
    wait_for(lambda: jobs_of(crds, namespace, "gone"), what="the job")
    crds.kubectl("delete", "mt", "gone", "-n", namespace)
    wait_for(
        lambda: (
            not jobs_of(crds, namespace, "gone")
            and crds.kubectl(
                "get", "svc,cm", "-n", namespace, "-l", "modelplane.io/training=gone", "-o", "name"
            ).stdout.strip()
            == ""
        ),
        what="the children to be garbage-collected",
    )


def test_killing_the_operator_at_random_points_loses_and_duplicates_nothing(
    crds: LocalCluster, namespace: str, models_pvc: str, operator: OperatorProcess
) -> None:
    names = [f"chaos-{i}" for i in range(50)]
    rng = random.Random(7)
    operator.kill()
    try:
        operator.start()
        trainings = [
            make_training({"spec.output.uri": "pvc://models/x"}, name=name) for name in names
        ]
        crds.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump_all(trainings))

        # Each kill lands at a random amount of work done, and only once the operator
        # started last has written something: a process killed while it starts up, before
        # any write, would test nothing. Work: one step per Job created and per training
        # patched Pending, two per training patched Running.
        rank = {"Pending": 1, "Running": 2}
        done_max = 3 * len(names)

        def work_done() -> int:
            items = crds.get_json("jobs,mt", "-n", namespace)["items"]
            phases = [(i.get("status") or {}).get("phase") for i in items if i["kind"] != "Job"]
            jobs = len(items) - len(phases)
            return jobs + sum(rank.get(phase or "", 0) for phase in phases)

        def kill_point(target: int, before: int) -> int | None:
            done = work_done()
            return done if done == done_max or (done >= target and done > before) else None

        done = 0
        for target in sorted(rng.sample(range(1, done_max), 4)):
            wait_for(
                partial(kill_point, target, done),
                timeout=120,
                what=f"the operator to do {target} of {done_max} steps of work",
            )
            operator.kill()
            done = work_done()  # what the killed process left: the next one must add to it
            operator.start()

        def running() -> list[str] | None:
            pods = crds.get_json("pods", "-n", namespace, "-l", "modelplane.io/training")
            ready = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
            return [p["metadata"]["name"] for p in ready] if len(ready) >= len(names) else None

        # One kubectl for every pod: fifty would start fifty processes on two cores.
        pods = wait_for(running, timeout=180, what=f"{len(names)} running pods")
        crds.kubectl(
            "annotate",
            "pods",
            *pods,
            "-n",
            namespace,
            f"{EXIT_CODE_ANNOTATION}=0",
            f"{MESSAGE_ANNOTATION}={json.dumps(RESULT)}",
        )

        def phases() -> dict[str, str | None]:
            items = crds.get_json("mt", "-n", namespace)["items"]
            return {t["metadata"]["name"]: (t.get("status") or {}).get("phase") for t in items}

        wait_for(
            lambda: set(phases().values()) == {"Succeeded"},
            timeout=240,
            what=f"all {len(names)} trainings to succeed",
        )
        assert sorted(phases()) == sorted(names)  # nothing lost

        def managed(kinds: str) -> list[dict[str, Any]]:
            selector = "app.kubernetes.io/managed-by=modelplane"
            items: list[dict[str, Any]] = crds.get_json(kinds, "-n", namespace, "-l", selector)[
                "items"
            ]
            return items

        # Nothing duplicated: exactly one Job per training, each of the first attempt.
        jobs = sorted(
            (j["metadata"]["labels"]["modelplane.io/training"], j["metadata"]["name"])
            for j in managed("jobs")
        )
        assert jobs == sorted((name, f"{name}-train") for name in names)
        # One node needs no Service, and the run config travels in the Job's template.
        assert managed("services,configmaps") == []
    finally:
        if operator.process is None or operator.process.poll() is not None:
            operator.start()


def test_a_spec_change_while_running_is_reported_not_applied_and_suspend_works(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    apply_training(crds, namespace, "steady")
    running_pods(crds, namespace, "steady", 0, 1)
    wait_phase(crds, namespace, "steady", "Running")
    apply_training(crds, namespace, "steady", {"spec.hyperparameters.epochs": 9})

    def ignored() -> dict[str, Any] | None:
        conds = status(crds, namespace, "steady").get("conditions", [])
        return next((c for c in conds if c["type"] == "SpecChangeIgnored"), None)

    cond = wait_for(ignored, what="the SpecChangeIgnored condition")
    assert cond["status"] == "True"
    assert "new ModelTraining" in cond["message"]
    assert jobs_of(crds, namespace, "steady") == ["steady-train"]  # not restarted

    apply_training(
        crds, namespace, "steady", {"spec.hyperparameters.epochs": 9, "spec.suspend": True}
    )
    wait_phase(crds, namespace, "steady", "Suspended")
    wait_for(
        lambda: crds.get_json("job", "steady-train", "-n", namespace)["spec"]["suspend"],
        what="the job to be suspended",
    )


def test_a_training_beyond_the_namespace_quota_says_so(
    operator: OperatorProcess, crds: LocalCluster, namespace: str, models_pvc: str
) -> None:
    crds.kubectl("create", "quota", "gpus", "-n", namespace, "--hard=requests.nvidia.com/gpu=2")
    apply_training(crds, namespace, "greedy", {"spec.resources.gpusPerNode": 4})

    def quota_reason() -> dict[str, Any] | None:
        conds = status(crds, namespace, "greedy").get("conditions", [])
        ready = next((c for c in conds if c["type"] == "Ready"), None)
        return ready if ready and ready["reason"] == "QuotaExceeded" else None

    cond = wait_for(quota_reason, what="the QuotaExceeded reason")
    assert "exceeded quota" in cond["message"]
    assert status(crds, namespace, "greedy")["phase"] == "Pending"
