"""reconcile_training against an in-memory client: a gang's attempts, pass after pass,
as disruptions and crashes replace its Job."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.conditions import format_time
from modelplane_operator.reconcile.training import reconcile_training
from modelplane_operator.settings import Settings
from tests.factories import changed, make_training, make_tuning
from tests.unit.fake_client import FakeClient
from tests.unit.pods import make_pod

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(runtime_image="registry.example/runtime:1")
EVICTED = ("EvictionByEvictionAPI", "Eviction API: evicting")


class Gang:
    """A two-node training whose maxRestarts is 1, and the cluster it runs on."""

    def __init__(self) -> None:
        body = make_training({"spec.resources.nodes": 2, "spec.maxRestarts": 1}, name="demo")
        body["metadata"].update({"namespace": "ml", "uid": "uid-t", "generation": 1})
        self.body = body
        self.client = FakeClient()

    def run(self) -> str | None:
        """One pass; its status patch lands on the resource, as the API server merges it."""
        self.client.status_patches.clear()
        phase = asyncio.run(reconcile_training(self.client, self.body, settings=SETTINGS, now=NOW))
        for patch in self.client.status_patches:
            merged = {**(self.body.get("status") or {}), **patch}
            self.body["status"] = {k: v for k, v in merged.items() if v is not None}
        return phase

    def jobs(self) -> dict[str, str]:
        """Each Job's name and the counted restarts it was created after."""
        return {
            name: job["metadata"]["annotations"][c.ANNOTATION_RESTARTS]
            for (kind, name), job in self.client.objects.items()
            if kind == "Job"
        }

    def fail(self, job: str, reason: str, message: str, *pods: dict[str, Any]) -> None:
        manifest = self.client.applied("Job", job)
        manifest["status"] = {
            "conditions": [
                {"type": "Failed", "status": "True", "reason": reason, "message": message}
            ]
        }
        labels = manifest["spec"]["template"]["metadata"]["labels"]
        for pod in pods:
            pod["metadata"]["labels"] = dict(labels)
        self.client.pods += list(pods)

    def counts(self) -> tuple[int, int]:
        status = self.body["status"]
        return status.get("restarts", 0), status.get("disruptions", 0)


def test_a_disruption_replaces_the_gang_free_and_a_crash_spends_a_restart() -> None:
    gang = Gang()
    assert gang.run() == "Pending"
    assert gang.jobs() == {"demo-train": "0"}

    gang.fail(
        "demo-train",
        "PodFailurePolicy",
        "Pod ml/demo-train-1-b has condition DisruptionTarget matching FailJob rule at index 1",
        make_pod("demo-train-1-b", "Failed", index=1, exit_code=143, disrupted=EVICTED),
    )
    assert gang.run() == "Pending"
    assert gang.client.deleted == ["demo-train"]
    assert gang.jobs() == {"demo-train-1": "0"}
    assert gang.counts() == (0, 1)
    assert "does not count against maxRestarts" in gang.client.events[-1][2]

    gang.fail(
        "demo-train-1",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
        make_pod("demo-train-1-0-a", "Failed", index=0, exit_code=1),
    )
    before_the_patch = dict(gang.body["status"])
    assert gang.run() == "Pending"
    assert gang.jobs() == {"demo-train-2": "1"}
    assert gang.counts() == (1, 1)

    # A pass killed before its status patch: the next one counts from the Job.
    gang.body["status"] = before_the_patch
    assert gang.run() == "Pending"
    assert gang.counts() == (1, 1)
    assert gang.jobs() == {"demo-train-2": "1"}

    gang.fail(
        "demo-train-2",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
        make_pod("demo-train-2-0-a", "Failed", index=0, exit_code=1),
    )
    assert gang.run() == "Failed"
    assert gang.jobs() == {"demo-train-2": "1"}
    failed = next(cond for cond in gang.body["status"]["conditions"] if cond["type"] == "Failed")
    assert failed["reason"] == "RestartsExhausted"
    assert "failed after 1 restart(s) (maxRestarts 1)" in failed["message"]


class Training(Gang):
    """One training (tuned or not) and its cluster, from a body built by `changes`."""

    def __init__(
        self, changes: dict[str, Any] | None = None, *, settings: Settings = SETTINGS
    ) -> None:
        body = make_training(changes, name="demo")
        body["metadata"].update({"namespace": "ml", "uid": "uid-t", "generation": 1})
        self.body = body
        self.client = FakeClient()
        self.settings = settings

    def run(self) -> str | None:
        self.client.status_patches.clear()
        self.client.events.clear()
        self.client.writes = 0
        phase = asyncio.run(
            reconcile_training(self.client, self.body, settings=self.settings, now=NOW)
        )
        for patch in self.client.status_patches:
            merged = {**(self.body.get("status") or {}), **patch}
            self.body["status"] = {k: v for k, v in merged.items() if v is not None}
        return phase

    def change(self, changes: dict[str, Any]) -> None:
        """The user applies a changed spec: a new generation."""
        generation = self.body["metadata"]["generation"] + 1
        status = self.body.get("status")
        self.body = changed(self.body, changes)
        self.body["metadata"]["generation"] = generation
        if status is not None:
            self.body["status"] = status

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.body["status"]["conditions"] if c["type"] == type_)

    def complete(self, job: str, *, since: datetime, message: str = "") -> None:
        """The Job completed at `since`; its rank 0 left `message`."""
        manifest = self.client.applied("Job", job)
        manifest["status"] = {
            "conditions": [
                {
                    "type": "Complete",
                    "status": "True",
                    "lastTransitionTime": format_time(since),
                }
            ]
        }
        pod = make_pod(f"{job}-0-a", "Succeeded", index=0, exit_code=0)
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = message
        pod["metadata"]["labels"] = dict(manifest["spec"]["template"]["metadata"]["labels"])
        self.client.pods.append(pod)


INVALID = [
    (
        "a body that does not parse (an older CRD let it in)",
        {"spec.hyperparameters.epochs": 0},
        "spec.hyperparameters.epochs",
    ),
    (
        "a spec the judge refuses",
        {"spec.data.train.uri": "builtin://mnist"},
        "spec.data.train.uri: unknown built-in data set 'mnist'",
    ),
    (
        "a spec a builder cannot build",
        {"spec.output.uri": "pvc://Models_X/out"},
        "spec.output.uri: 'Models_X' is not a PersistentVolumeClaim name",
    ),
    (
        "an s3 output with no secret and no default secret of the operator",
        {"spec.output.uri": "s3://models/out"},
        "spec.output.uri: 's3://models/out' is in object storage and nothing says which "
        "credentials reach it",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_an_invalid_spec_is_failed_once_and_then_left_alone(
    changes: dict[str, Any], field: str
) -> None:
    training = Training(changes)
    assert training.run() == "Failed"
    assert training.client.objects == {}  # no child at all
    assert len(training.client.status_patches) == 1
    failed = training.condition("Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
    assert field in failed["message"]
    assert training.condition("Stalled")["reason"] == "InvalidSpec"
    assert training.body["status"]["observedGeneration"] == 1
    assert [e[1] for e in training.client.events] == ["InvalidSpec"]

    for _ in range(3):  # every later pass of the same generation: nothing at all
        assert training.run() == "Failed"
        assert (training.client.writes, training.client.events) == (0, [])


def test_a_fixed_spec_after_an_invalid_verdict_is_judged_again_and_runs() -> None:
    training = Training({"spec.data.train.uri": "builtin://mnist"})
    assert training.run() == "Failed"
    training.change({"spec.data.train.uri": "builtin://nope"})
    assert training.run() == "Failed"
    assert "'nope'" in training.condition("Failed")["message"]
    assert training.body["status"]["observedGeneration"] == 2

    training.change({"spec.data.train.uri": "builtin://breast-cancer"})
    assert training.run() == "Pending"
    assert list(training.jobs()) == ["demo-train"]
    assert training.condition("Failed")["status"] == "False"
    assert training.body["status"]["observedGeneration"] == 3


def test_a_job_complete_without_a_result_fails_after_the_configured_grace() -> None:
    patient = Training(settings=Settings(result_grace_seconds=60))
    patient.run()
    patient.complete("demo-train", since=NOW - timedelta(seconds=10))
    assert patient.run() == "Running"

    brief = Training(settings=Settings(result_grace_seconds=5))
    brief.run()
    brief.complete("demo-train", since=NOW - timedelta(seconds=10), message="{oops")
    assert brief.run() == "Failed"
    failed = brief.condition("Failed")
    assert failed["reason"] == "ResultMissing"
    assert "is not a training result: '{oops'" in failed["message"]
    assert brief.run() == "Failed"
    assert brief.client.writes == 0


TUNED = {"spec.tuning": {**make_tuning(), "maxTrials": 2, "parallelTrials": 1}}


@pytest.mark.parametrize(
    ("changes", "passes", "children"),
    [
        ({}, 1, [("Job", "demo-train")]),
        (
            {"spec.resources.nodes": 2},
            1,
            [("Service", "demo-train"), ("Job", "demo-train")],
        ),
        (TUNED, 2, [("Job", "demo-t0-train")]),
    ],
    ids=[
        "a single-node training writes its Job and nothing else",
        "a gang writes its Service and its Job",
        "a tuning trial writes its Job and nothing else",
    ],
)
def test_an_attempt_carries_its_run_config_in_the_job_without_a_config_map(
    changes: dict[str, Any], passes: int, children: list[tuple[str, str]]
) -> None:
    training = Training(changes)
    for _ in range(passes):
        training.run()
    assert list(training.client.objects) == children
    (_, job) = children[-1]
    template = training.client.applied("Job", job)["spec"]["template"]
    run_config = json.loads(template["metadata"]["annotations"][c.ANNOTATION_RUN_CONFIG])
    assert run_config["name"] == job.removesuffix("-train")


def test_a_trial_failed_by_the_infrastructure_gets_max_restarts_new_attempts() -> None:
    search = Training({**TUNED, "spec.maxRestarts": 1})
    search.run()  # records trial 0
    search.run()  # creates its Job
    assert search.jobs() == {"demo-t0-train": "0"}

    crash = make_pod("demo-t0-train-0-a", "Failed", index=0, exit_code=1)
    search.fail("demo-t0-train", "BackoffLimitExceeded", "backoff limit", crash)
    search.run()
    assert search.jobs() == {"demo-t0-train-1": "1"}  # the next attempt, after 1 restart
    assert search.client.deleted == ["demo-t0-train"]
    trial = search.body["status"]["trials"][0]
    assert (trial["phase"], trial["restarts"]) == ("Pending", 1)
    template = search.client.applied("Job", "demo-t0-train-1")["spec"]["template"]
    run_config = template["metadata"]["annotations"][c.ANNOTATION_RUN_CONFIG]
    assert '"name": "demo-t0"' in run_config  # the same run: it resumes its checkpoints

    crash = make_pod("demo-t0-train-1-0-a", "Failed", index=0, exit_code=1)
    search.fail("demo-t0-train-1", "BackoffLimitExceeded", "backoff limit", crash)
    search.run()
    trial = search.body["status"]["trials"][0]
    assert trial["phase"] == "Failed"
    assert trial["reason"].startswith("failed after 1 restart(s) (maxRestarts 1)")
    assert search.jobs() == {"demo-t0-train-1": "1"}  # no third attempt
    assert [t["name"] for t in search.body["status"]["trials"]] == ["demo-t0", "demo-t1"]


def test_a_replacement_killed_before_deleting_the_old_attempt_keeps_the_newest() -> None:
    search = Training({**TUNED, "spec.maxRestarts": 2})
    search.run()
    search.run()
    crash = make_pod("demo-t0-train-0-a", "Failed", index=0, exit_code=1)
    search.fail("demo-t0-train", "BackoffLimitExceeded", "backoff limit", crash)
    before = copy.deepcopy(search.body["status"])
    search.run()
    old = search.client.deleted.pop()
    owner = [{"uid": search.body["metadata"].get("uid")}]
    labels = {c.LABEL_RUN: "demo-t0", c.LABEL_ATTEMPT: "0"}
    search.client.objects[("Job", old)] = {
        "metadata": {"name": old, "labels": labels, "ownerReferences": owner},
        "spec": {},
    }
    search.body["status"] = before  # and before its status patch
    search.run()
    assert search.jobs() == {"demo-t0-train-1": "1"}
    assert search.body["status"]["trials"][0]["restarts"] == 1


def test_suspending_a_search_suspends_its_running_trials_and_starts_none() -> None:
    search = Training({**TUNED, "spec.tuning.parallelTrials": 2, "spec.tuning.maxTrials": 4})
    search.run()
    search.run()
    assert sorted(search.jobs()) == ["demo-t0-train", "demo-t1-train"]

    search.change({"spec.suspend": True})
    assert search.run() == "Suspended"
    assert all(
        job["spec"]["suspend"] for (kind, _), job in search.client.objects.items() if kind == "Job"
    )
    assert search.condition("Suspended")["status"] == "True"
    search.complete("demo-t0-train", since=NOW, message=json.dumps(TRIAL_RESULT))
    assert search.run() == "Suspended"
    assert len(search.body["status"]["trials"]) == 2  # no trial replaces the finished one

    search.change({"spec.suspend": False})
    search.run()
    assert not search.client.applied("Job", "demo-t1-train")["spec"]["suspend"]
    assert [t["name"] for t in search.body["status"]["trials"]][-1] == "demo-t2"
    assert search.condition("Suspended")["status"] == "False"


def test_a_search_edited_out_of_limits_midway_is_refused_and_continues_once_fixed() -> None:
    search = Training({**TUNED, "spec.tuning.maxTrials": 3})
    search.run()
    search.run()
    assert search.jobs() == {"demo-t0-train": "0"}

    # The space is edited while trial 0 runs: new trials would sample from it, so the
    # operator judges it now rather than failing trial after trial in pods.
    space = {"learningRate": {"type": "uniform", "min": 0.001, "max": 50}}
    search.change({"spec.tuning.space": space})
    assert search.run() == "Failed"
    assert search.condition("Failed")["reason"] == "InvalidSpec"
    assert "spec.tuning.space.learningRate.max" in search.condition("Failed")["message"]

    search.change({"spec.tuning.space": {**space, "learningRate": {**space["learningRate"],
                                                                   "max": 0.1}}})  # fmt: skip
    search.run()
    # The search goes on with the trial it had: no second demo-t0 with other parameters.
    assert [t["name"] for t in search.body["status"]["trials"]] == ["demo-t0"]
    assert search.jobs() == {"demo-t0-train": "0"}
    assert search.condition("Failed")["status"] == "False"


def test_a_search_that_fails_stops_its_running_trials() -> None:
    search = Training(
        {**TUNED, "spec.tuning.parallelTrials": 2, "spec.tuning.maxTrials": 4,
         "spec.tuning.maxFailedTrials": 0, "spec.maxRestarts": 0}
    )  # fmt: skip
    search.run()
    search.run()
    assert sorted(search.jobs()) == ["demo-t0-train", "demo-t1-train"]
    crash = make_pod("demo-t0-train-0-a", "Failed", index=0, exit_code=1)
    search.fail("demo-t0-train", "BackoffLimitExceeded", "backoff limit", crash)
    assert search.run() == "Failed"
    assert search.condition("Failed")["reason"] == "TooManyFailedTrials"
    # Trial 1 would run on with nobody to reconcile it: it is stopped with the search.
    assert "demo-t1-train" in search.client.deleted
    trial = search.body["status"]["trials"][1]
    assert (trial["phase"], trial["reason"]) == (
        "Stopped",
        "the search failed: 1 trials failed (maxFailedTrials 0)",
    )


TRIAL_RESULT = {
    "version": 1,
    "run": "demo-t0",
    "metrics": {"f1": 0.8},
    "artifact_uri": "pvc://models/demo/demo-t0",
    "digest": "sha256:1",
}


def test_the_result_grace_is_a_setting_the_chart_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_environ().result_grace_seconds == 60
    monkeypatch.setenv("MODELPLANE_RESULT_GRACE_SECONDS", "2")
    assert Settings.from_environ().result_grace_seconds == 2
