"""What the kubelet says about a pod whose container does not start: one reading shared
by every kind, so a training and a deployment name the same trouble the same way.

Pure: pod manifests in, the first problem out. The kubelet keeps retrying every kind of
problem (pulling with back-off, restarting with back-off), so they explain why a resource
is not there yet; they are not a phase of their own.

A container the kernel killed for exceeding its memory limit (`OOMKilled`, now or as its
last end) is named as such, with that limit, whether or not it crash-loops since: the fix
is more memory, not a look at the logs. An OOM kill that a container has recovered from
(it is ready again) is history, not a problem.
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
CONFIG_WAITING = "CreateContainerConfigError"
"""The kubelet cannot build the container's environment or mounts: most often a Secret
or ConfigMap (or one of its keys) that does not exist, such as spec.storage.secretRef."""
OOM_KILLED = "OOMKilled"
"""The kubelet's termination reason for a container the kernel killed at its limit."""


@dataclass(frozen=True)
class PodProblem:
    reason: str
    """The condition reason: ImagePullFailed, CrashLoopBackOff or OOMKilled."""
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


def _oom_killed(container: Manifest) -> bool:
    """Killed at its memory limit: it ended so now, or last time and is not ready since."""
    now = ((container.get("state") or {}).get("terminated") or {}).get("reason")
    last = ((container.get("lastState") or {}).get("terminated") or {}).get("reason")
    return now == OOM_KILLED or (last == OOM_KILLED and not container.get("ready"))


def _memory_limit(pod: Manifest, container: str) -> str | None:
    spec = pod.get("spec") or {}
    for each in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if each.get("name") == container:
            limit = ((each.get("resources") or {}).get("limits") or {}).get("memory")
            return str(limit) if limit else None
    return None


def _oom_problem(pod: Manifest, name: str, container: Manifest) -> PodProblem | None:
    """The container's OOM kill, with its memory limit and the fix; None if none."""
    if not _oom_killed(container):
        return None
    cname = str(container.get("name"))
    limit = _memory_limit(pod, cname)
    restarts = int(container.get("restartCount") or 0)
    detail = f"memory limit {limit}" if limit else "no memory limit: the node ran out"
    if restarts:
        detail += f"; {restarts} restart(s)"
    # The Ray head's limit is the operator's, not the spec's (builders/serving.py).
    labels = (pod.get("metadata") or {}).get("labels") or {}
    fix = (
        "the Ray head's memory limit is the operator's own, not the spec's"
        if labels.get(c.LABEL_ROLE) == "head"
        else "raise spec.resources.memory"
    )
    message = f"pod {name}: container {cname} was OOM-killed ({detail}); {fix}"
    return PodProblem(c.REASON_OOM_KILLED, name, message[:MESSAGE_LIMIT])


def oom_killed(pods: Iterable[Manifest]) -> PodProblem | None:
    """The first pod, in the order given, with a container killed at its memory limit."""
    for pod in pods:
        name = str((pod.get("metadata") or {}).get("name") or "(unnamed)")
        for container in _container_statuses(pod):
            if (problem := _oom_problem(pod, name, container)) is not None:
                return problem
    return None


def pod_problem(pods: Iterable[Manifest]) -> PodProblem | None:
    """The first pod, in the order given, whose container cannot pull its image, cannot
    be configured (a missing Secret or key), was killed at its memory limit or keeps
    crashing; None when no container shows any.
    Within a container, an OOM kill wins over the crash loop it causes."""
    for pod in pods:
        name = str((pod.get("metadata") or {}).get("name") or "(unnamed)")
        for container in _container_statuses(pod):
            if (problem := _oom_problem(pod, name, container)) is not None:
                return problem
            waiting = (container.get("state") or {}).get("waiting") or {}
            why = waiting.get("reason")
            kubelet = str(waiting.get("message") or why)
            if why in IMAGE_PULL_WAITING:
                message = f"pod {name} cannot pull its image ({why}): {kubelet}"
                return PodProblem(c.REASON_IMAGE_PULL, name, message[:MESSAGE_LIMIT])
            if why == CONFIG_WAITING:
                message = f"pod {name} cannot start its container: {kubelet}"
                return PodProblem(c.REASON_CONTAINER_CONFIG, name, message[:MESSAGE_LIMIT])
            if why == CRASH_LOOP_WAITING:
                message = (
                    f"pod {name}: container {container.get('name')} keeps crashing "
                    f"({_crash_detail(container)}{kubelet})"
                )
                return PodProblem(c.REASON_CRASH_LOOP, name, message[:MESSAGE_LIMIT])
    return None
