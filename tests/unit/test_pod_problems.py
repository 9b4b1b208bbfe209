"""One reading of the kubelet's waiting reasons, shared by trainings and deployments."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.status.pods import oom_killed, pod_problem
from tests.unit.pods import CRASH_BACKOFF, NO_SUCH_IMAGE, make_pod

CASES: list[tuple[str, list[dict[str, Any]], str | None, list[str]]] = [
    (
        "an image that does not exist is an image pull failure with the kubelet's words",
        [make_pod("p-0", waiting=("ErrImagePull", NO_SUCH_IMAGE))],
        c.REASON_IMAGE_PULL,
        ["pod p-0 cannot pull its image (ErrImagePull)", NO_SUCH_IMAGE],
    ),
    (
        "the back-off between pulls is the same failure",
        [make_pod("p-0", waiting=("ImagePullBackOff", NO_SUCH_IMAGE))],
        c.REASON_IMAGE_PULL,
        ["(ImagePullBackOff)"],
    ),
    (
        "a malformed image name is an image pull failure",
        [make_pod("p-0", waiting=("InvalidImageName", 'couldn\'t parse image name "A:"'))],
        c.REASON_IMAGE_PULL,
        ["couldn't parse image name"],
    ),
    (
        "a Secret that does not exist is a container config error with the kubelet's words",
        [make_pod("p-0", waiting=("CreateContainerConfigError", 'secret "s3" not found'))],
        c.REASON_CONTAINER_CONFIG,
        ["pod p-0 cannot start its container", 'secret "s3" not found'],
    ),
    (
        "a crash loop names the container and how it last ended",
        [
            make_pod(
                "p-0",
                "Running",
                container="ray-head",
                waiting=("CrashLoopBackOff", CRASH_BACKOFF),
                last_exit=(1, "Error"),
            )
        ],
        c.REASON_CRASH_LOOP,
        ["pod p-0: container ray-head keeps crashing", "last exit code 1 (Error)", CRASH_BACKOFF],
    ),
    (
        "the first troubled pod in the order given is the one named",
        [
            make_pod("p-0", "Running"),
            make_pod("p-1", waiting=("CrashLoopBackOff", CRASH_BACKOFF)),
            make_pod("p-2", waiting=("ErrImagePull", NO_SUCH_IMAGE)),
        ],
        c.REASON_CRASH_LOOP,
        ["pod p-1"],
    ),
    (
        "a container still being created is no problem",
        [make_pod("p-0", waiting=("ContainerCreating", ""))],
        None,
        [],
    ),
    ("running pods are no problem", [make_pod("p-0", "Running")], None, []),
]


@pytest.mark.parametrize(
    ("pods", "reason", "says"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_a_pod_that_cannot_start_is_named_with_the_kubelets_reason(
    pods: list[dict[str, Any]], reason: str | None, says: list[str]
) -> None:
    problem = pod_problem(pods)
    assert (problem.reason if problem else None) == reason
    for text in says:
        assert problem is not None
        assert text in problem.message


def test_an_init_container_that_cannot_pull_counts_too() -> None:
    pod = make_pod("p-0")
    pod["status"]["initContainerStatuses"] = pod["status"].pop("containerStatuses")
    pod["status"]["initContainerStatuses"][0]["state"] = {
        "waiting": {"reason": "ImagePullBackOff", "message": NO_SUCH_IMAGE}
    }
    problem = pod_problem([pod])
    assert problem is not None
    assert (problem.reason, problem.pod) == (c.REASON_IMAGE_PULL, "p-0")


OOM_BACKOFF = "back-off 20s restarting failed container=ray-worker pod=s-ray-worker-abc"


def ended_oom_killed(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod's container ended now, killed at its limit (a Job's pod is not restarted)."""
    status = pod["status"]["containerStatuses"][0]
    status["state"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    return pod


def with_memory_limit(
    pod: dict[str, Any], limit: str | None, *, ready: bool = False, restarts: int = 3
) -> dict[str, Any]:
    """The pod's spec with its one container's memory limit, as the builders set it."""
    status = pod["status"]["containerStatuses"][0]
    status.update({"ready": ready, "restartCount": restarts})
    limits = {"cpu": "1", **({"memory": limit} if limit else {})}
    pod["spec"] = {"containers": [{"name": status["name"], "resources": {"limits": limits}}]}
    return pod


OOM_CASES: list[tuple[str, dict[str, Any], str | None, list[str]]] = [
    (
        "a crash loop caused by the memory limit says OOMKilled, not CrashLoopBackOff",
        with_memory_limit(
            make_pod(
                "s-ray-worker-abc",
                "Running",
                container="ray-worker",
                waiting=("CrashLoopBackOff", OOM_BACKOFF),
                last_exit=(137, "OOMKilled"),
            ),
            "300Mi",
        ),
        c.REASON_OOM_KILLED,
        [
            "pod s-ray-worker-abc: container ray-worker was OOM-killed "
            "(memory limit 300Mi; 3 restart(s)); raise spec.resources.memory"
        ],
    ),
    (
        "a container restarted after an OOM kill and not ready yet is still named",
        with_memory_limit(
            make_pod(
                "s-ray-worker-abc", "Running", container="ray-worker", last_exit=(137, "OOMKilled")
            ),
            "2Gi",
        ),
        c.REASON_OOM_KILLED,
        ["(memory limit 2Gi; 3 restart(s))"],
    ),
    (
        "a container that is ready again after an OOM kill is no problem",
        with_memory_limit(
            make_pod(
                "s-ray-worker-abc", "Running", container="ray-worker", last_exit=(137, "OOMKilled")
            ),
            "2Gi",
            ready=True,
        ),
        None,
        [],
    ),
    (
        "a container that ended OOM-killed (a training rank, never restarted) is named",
        with_memory_limit(
            ended_oom_killed(make_pod("demo-train-0-x", "Failed", container="trainer")),
            "8Gi",
            restarts=0,
        ),
        c.REASON_OOM_KILLED,
        ["pod demo-train-0-x: container trainer was OOM-killed (memory limit 8Gi); raise"],
    ),
    (
        "a container without a memory limit was killed because the node ran out",
        with_memory_limit(
            make_pod("p-0", "Running", last_exit=(137, "OOMKilled")),
            None,
        ),
        c.REASON_OOM_KILLED,
        ["(no memory limit: the node ran out; 3 restart(s))"],
    ),
    (
        "an OOM-killed Ray head is not fixed by the spec's memory, and says so",
        with_memory_limit(
            make_pod(
                "s-ray-head-1",
                "Running",
                labels={c.LABEL_ROLE: "head"},
                container="ray-head",
                last_exit=(137, "OOMKilled"),
            ),
            "4Gi",
        ),
        c.REASON_OOM_KILLED,
        ["memory limit 4Gi", "the Ray head's memory limit is the operator's own"],
    ),
    (
        "a crash loop that is no OOM kill stays a crash loop",
        with_memory_limit(
            make_pod(
                "p-0",
                "Running",
                waiting=("CrashLoopBackOff", CRASH_BACKOFF),
                last_exit=(1, "Error"),
            ),
            "1Gi",
        ),
        c.REASON_CRASH_LOOP,
        ["last exit code 1 (Error)"],
    ),
]


@pytest.mark.parametrize(
    ("pod", "reason", "says"), [case[1:] for case in OOM_CASES], ids=[case[0] for case in OOM_CASES]
)
def test_a_container_killed_at_its_memory_limit_says_so_with_the_limit(
    pod: dict[str, Any], reason: str | None, says: list[str]
) -> None:
    problem = pod_problem([pod])
    assert (problem.reason if problem else None) == reason
    for text in says:
        assert problem is not None
        assert text in problem.message, problem.message


def test_an_oom_kill_in_a_later_pod_is_found_past_other_trouble() -> None:
    pulling = make_pod("p-0", waiting=("ErrImagePull", NO_SUCH_IMAGE))
    killed = with_memory_limit(make_pod("p-1", "Running", last_exit=(137, "OOMKilled")), "1Gi")
    first = pod_problem([pulling, killed])
    assert first is not None
    assert first.reason == c.REASON_IMAGE_PULL
    oom = oom_killed([pulling, killed])
    assert oom is not None
    assert (oom.reason, oom.pod) == (c.REASON_OOM_KILLED, "p-1")
    assert oom_killed([pulling]) is None
