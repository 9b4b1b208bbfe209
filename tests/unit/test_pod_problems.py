"""One reading of the kubelet's waiting reasons, shared by trainings and deployments."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane_operator import constants as c
from modelplane_operator.status.pods import pod_problem
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
