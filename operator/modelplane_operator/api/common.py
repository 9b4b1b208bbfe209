"""Types shared by both kinds: storage URIs, quantities, scheduling, conditions."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from modelplane_operator.api.base import ApiModel, CelRule, StatusModel

URI_SCHEMES = ("pvc", "file", "builtin")
_URI_RE = re.compile(r"^(pvc|file|builtin)://\S+$")
_URI_CEL = "self.matches('^(pvc|file|builtin)://[^ ]+$')"
URI_MESSAGE = (
    "must be a URI with scheme pvc:// (a PersistentVolumeClaim and a path in it), "
    "file:// (a path inside the pod) or builtin:// (a data set shipped with modelplane)"
)


def _check_uri(value: str) -> str:
    if not _URI_RE.match(value):
        raise ValueError(f"{value!r} {URI_MESSAGE}")
    return value


Uri = Annotated[
    str,
    Field(min_length=1, max_length=2048),
    AfterValidator(_check_uri),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 2048,
            "x-kubernetes-validations": [{"rule": _URI_CEL, "message": URI_MESSAGE}],
        }
    ),
]
"""A storage location: `pvc://<claim>/<path>`, `file:///<path>` or `builtin://<name>`."""

# Kubernetes' own resource.Quantity grammar, as kubebuilder emits it for int-or-string.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def _check_quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 500m, 2, 16Gi, 512Mi)")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity such as `8`, `500m` or `32Gi`."""

MetricName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]


class Toleration(ApiModel):
    """A Kubernetes toleration, copied unchanged onto the pods."""

    key: str | None = Field(default=None, max_length=316)
    """Taint key the toleration applies to; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (the Kubernetes default is Equal)."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value to match when operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """How long a NoExecute taint is tolerated before eviction; unset means forever."""


class Scheduling(ApiModel):
    """Where pods may run and what they run: shared by training and serving resources."""

    image: str = Field(default="", max_length=1024, pattern=r"^(\S+)?$")
    """Container image of the pods; empty uses the operator's runtime image (the chart's
    runtime.image value). It must run the same modelplane runtime."""

    node_selector: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Labels a node must carry for the pods to be placed on it."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the pods tolerate, for example the taint on a GPU node pool."""
    priority_class_name: str = Field(default="", max_length=253)
    """PriorityClass of the pods; empty uses the cluster default."""


class Condition(StatusModel):
    """A standard Kubernetes condition (the shape of metav1.Condition)."""

    type: str = Field(max_length=316)
    """Condition type, for example Ready, Progressing or Failed."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(max_length=1024)
    """One CamelCase word a program can switch on."""
    message: str = Field(default="", max_length=32768)
    """What happened and, when it is a problem, what to do about it."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int = Field(default=0, ge=0)
    """The metadata.generation this condition was computed from."""


# Conditions are a map keyed by type, so server-side apply merges them per type.
CONDITIONS_LIST: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class ArtifactRef(StatusModel):
    """Where a trained model is and which bytes it is."""

    uri: str = ""
    """Location of the artifact (model card, weights, tokenizer)."""
    digest: str = ""
    """sha256 digest of the weights, as `sha256:<hex>`."""


__all__ = [
    "CONDITIONS_LIST",
    "QUANTITY_PATTERN",
    "URI_MESSAGE",
    "URI_SCHEMES",
    "ArtifactRef",
    "CelRule",
    "Condition",
    "MetricName",
    "Quantity",
    "Scheduling",
    "Toleration",
    "Uri",
]
