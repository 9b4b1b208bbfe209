"""What the kubelet says about a pod whose container does not start: one reading shared
by every kind, so a training and a deployment name the same trouble the same way.

Pure: pod manifests in, the first problem out. The kubelet keeps retrying both kinds of
problem (pulling with back-off, restarting with back-off), so they explain why a resource
is not there yet; they are not a phase of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from modelplane_operator import constants as c

Manifest = dict[str, Any]
MESSAGE_LIMIT = 1024
IMAGE_PULL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
        "SignatureValidationFailed",
    }
)
"""Container waiting reasons of an image the kubelet cannot pull."""
CRASH_LOOP_WAITING = "CrashLoopBackOff"


@dataclass(frozen=True)
class PodProblem:
    reason: str
    """The condition reason: ImagePullFailed or CrashLoopBackOff."""
    pod: str
    message: str
    """Names the pod and carries the kubelet's own words."""


def _container_statuses(pod: Manifest) -> list[Manifest]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _crash_detail(container: Manifest) -> str:
    """How the container last ended: exit code, reason and its termination message."""
    last = (container.get("lastState") or {}).get("terminated") or {}
    if not last:
        return ""
    detail = f"last exit code {last.get('exitCode')}"
    if last.get("reason"):
        detail += f" ({last['reason']})"
    if last.get("message"):
        detail += f": {str(last['message']).strip()}"
    return detail + "; "


def pod_problem(pods: Iterable[Manifest]) -> PodProblem | None:
    """The first pod, in the order given, whose container cannot pull its image or keeps
    crashing; None when no container waits for either reason."""
    for pod in pods:
        name = str((pod.get("metadata") or {}).get("name") or "(unnamed)")
        for container in _container_statuses(pod):
            waiting = (container.get("state") or {}).get("waiting") or {}
            why = waiting.get("reason")
            kubelet = str(waiting.get("message") or why)
            if why in IMAGE_PULL_WAITING:
                message = f"pod {name} cannot pull its image ({why}): {kubelet}"
                return PodProblem(c.REASON_IMAGE_PULL, name, message[:MESSAGE_LIMIT])
            if why == CRASH_LOOP_WAITING:
                message = (
                    f"pod {name}: container {container.get('name')} keeps crashing "
                    f"({_crash_detail(container)}{kubelet})"
                )
                return PodProblem(c.REASON_CRASH_LOOP, name, message[:MESSAGE_LIMIT])
    return None
