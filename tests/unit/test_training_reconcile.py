"""reconcile_training against an in-memory client: a gang's attempts, pass after pass,
as disruptions and crashes replace its Job."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from modelplane_operator import constants as c
from modelplane_operator.reconcile.training import reconcile_training
from modelplane_operator.settings import Settings
from tests.factories import make_training
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
