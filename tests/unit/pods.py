"""Pod manifests as the API server returns them, for the status derivations' tests."""

from __future__ import annotations

from typing import Any

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
NO_SUCH_IMAGE = (
    'Back-off pulling image "registry.example/runtime:nope": rpc error: code = NotFound '
    'desc = failed to pull and unpack image "registry.example/runtime:nope": not found'
)
CRASH_BACKOFF = "back-off 40s restarting failed container=ray-head pod=sentiment-ray-head-7d9f"


def make_pod(
    name: str,
    phase: str = "Pending",
    *,
    labels: dict[str, str] | None = None,
    index: int | None = None,
    container: str = "main",
    waiting: tuple[str, str] | None = None,
    last_exit: tuple[int, str] | None = None,
    exit_code: int | None = None,
    disrupted: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A pod whose one container waits for `waiting` (reason, kubelet message), last
    ended with `last_exit` (code, reason), ended with `exit_code`, or which Kubernetes
    is taking away: `disrupted` (the DisruptionTarget condition's reason and message)."""
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
    if index is not None:
        metadata["annotations"] = {COMPLETION_INDEX: str(index)}
    state: dict[str, Any] = {}
    if waiting is not None:
        state["waiting"] = {"reason": waiting[0], "message": waiting[1]}
    if exit_code is not None:
        state["terminated"] = {"exitCode": exit_code, "reason": "Error"}
    container_status: dict[str, Any] = {"name": container, "state": state}
    if last_exit is not None:
        container_status["lastState"] = {
            "terminated": {"exitCode": last_exit[0], "reason": last_exit[1]}
        }
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [container_status]}
    if disrupted is not None:
        status["conditions"] = [
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": disrupted[0],
                "message": disrupted[1],
            }
        ]
    return {"metadata": metadata, "status": status}
