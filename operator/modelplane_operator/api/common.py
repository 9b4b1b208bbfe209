"""Types shared by both kinds: storage URIs, quantities, scheduling, conditions."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from modelplane_operator.api.base import CEL_KEY, ApiModel, CelRule, StatusModel

URI_SCHEMES = ("pvc", "file", "builtin", "s3")
# An S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens, starting and ending
# with a letter or digit (AWS's naming rules; S3-compatible stores follow them).
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_URI_RE = re.compile(rf"^((pvc|file|builtin)://\S+|s3://{_BUCKET}(/\S*)?)$")
_URI_CEL = f"self.matches('^((pvc|file|builtin)://[^ ]+|s3://{_BUCKET}(/[^ ]*)?)$')"
URI_MESSAGE = (
    "must be a URI with scheme pvc:// (a PersistentVolumeClaim and a path in it), "
    "file:// (a path inside the pod), builtin:// (a data set shipped with modelplane) or "
    "s3://<bucket>/<key prefix> (an S3 or S3-compatible object store; a bucket name is 3 "
    "to 63 lowercase letters, digits, dots and hyphens)"
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
"""A storage location: `pvc://<claim>/<path>`, `file:///<path>`, `builtin://<name>` or
`s3://<bucket>/<key prefix>`."""


def is_s3(uri: str | None) -> bool:
    """The URI names an object in S3 (or an S3-compatible store)."""
    return bool(uri) and str(uri).startswith("s3://")


def _s3_key_prefix(uri: str) -> str:
    return uri.removeprefix("s3://").partition("/")[2].strip("/")


BUILTIN_IS_NO_ARTIFACT = "builtin:// names a data set shipped with modelplane, not a model artifact"


def artifact_uri_rules(
    field: str, *, builtin: tuple[str, ...] = (), why: str = BUILTIN_IS_NO_ARTIFACT
) -> tuple[CelRule, ...]:
    """The rules for a model whose `uri` is an artifact's place (read or written):
    builtin:// names a data set, which holds no artifact and takes no writes (except the
    pretrained models in `builtin`, where a model is read; `why` says what else it is
    not); an s3:// artifact lives under a key prefix, never at a bucket's root, which
    other runs and other tools share."""
    models = f", or a pretrained model that ships with modelplane ({' or '.join(builtin)})"
    return (
        CelRule(
            rule=(
                "!has(self.uri) || !self.uri.startsWith('builtin://') || "
                f"self.uri in [{', '.join(repr(u) for u in builtin)}]"
            ),
            message=(
                f"{field} must be a pvc://, s3:// or file:// location"
                + (models if builtin else "")
                + f": {why}"
            ),
            check=lambda m: m.uri is None or not m.uri.startswith("builtin://") or m.uri in builtin,
            field_path=".uri",
        ),
        CelRule(
            rule=(
                "!has(self.uri) || !self.uri.startsWith('s3://') || "
                "self.uri.matches('^s3://[^/]+/+[^/ ]')"
            ),
            message=(
                f"{field} must name a key prefix after the bucket, as in "
                "s3://<bucket>/<prefix>: an artifact never goes to a bucket's root"
            ),
            check=lambda m: not is_s3(m.uri) or bool(_s3_key_prefix(m.uri)),
            field_path=".uri",
        ),
    )


# A Secret's name is a DNS-1123 subdomain.
_SECRET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class SecretRef(ApiModel):
    """A Secret in the resource's own namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=_SECRET_NAME)
    """Name of the Secret. Its keys become environment variables of the same name in the
    pods: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (required), AWS_SESSION_TOKEN,
    AWS_REGION and AWS_ENDPOINT_URL (optional; AWS_ENDPOINT_URL points at an
    S3-compatible store such as MinIO, SeaweedFS or Ceph, unset means AWS). The operator
    never reads the values."""


class StorageSpec(ApiModel):
    """Credentials for s3:// URIs."""

    secret_ref: SecretRef
    """The Secret holding the object store's credentials. Without spec.storage, pods use
    the cluster's default Secret (the chart's storage.defaultSecretName), and a resource
    with an s3:// URI fails with InvalidSpec when there is none."""


# Kubernetes' resource.Quantity grammar (k8s.io/apimachinery resource.ParseQuantity): a
# signed decimal, then a binary suffix (Ki..Ei), a decimal one (n, u, m, k, M..E) or an
# integer exponent (e3, E-2). Go's parser reads a number without digits as 0 ("Ki", ".",
# "-" are quantities of 0), and so does this; the rules on each field refuse 0.
_QUANTITY_RE = re.compile(
    r"^(?P<number>[+-]?[0-9]*(?:\.[0-9]*)?)(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(value: int | str) -> Decimal:
    """The exact value of a Kubernetes quantity ("500m", "16Gi", "1e3", 2).

    The API server's CEL `isQuantity`/`quantity` and this accept the same strings, so a
    quantity refused here is refused at `kubectl apply` too. Raises ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    match = _QUANTITY_RE.match(str(value))
    if match is None or not str(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    digits = match.group("number").lstrip("+-")
    number = Decimal(digits) if digits.strip(".") else Decimal(0)
    if match.group("number").startswith("-"):
        number = -number
    suffix = match.group("suffix") or ""
    if suffix in _BINARY:
        return number * (1 << _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    return number.scaleb(int(suffix[1:]))


@dataclass(frozen=True)
class QuantityRule:
    """One rule on a quantity field: CEL on the API server, a predicate here, one message."""

    rule: str
    message: str
    check: Callable[[int | str], bool]


def _is_quantity(value: int | str) -> bool:
    try:
        parse_quantity(value)
    except ValueError:
        return False
    return True


def _within(value: int | str, low: str, high: str) -> bool:
    """False for a non-quantity: the rule that says "not a quantity" reports that one."""
    if not _is_quantity(value):
        return True
    return parse_quantity(low) <= parse_quantity(value) <= parse_quantity(high)


# The field is int-or-string, so CEL sees an int or a string: string(self) is both.
_Q = "quantity(string(self))"
_IS_Q = "isQuantity(string(self))"
MAX_CPU, MIN_MEMORY, MAX_MEMORY = "1024", "1Mi", "16Ti"

CPU_RULES = (
    QuantityRule(
        rule=_IS_Q,
        message="resources.cpu must be a Kubernetes quantity of cores, such as 4, 1.5 or 500m",
        check=_is_quantity,
    ),
    QuantityRule(
        rule="!string(self).endsWith('i')",
        message=(
            "resources.cpu counts cores (4) or millicores (500m); a binary suffix such as "
            "Gi is for memory"
        ),
        check=lambda v: not str(v).endswith("i"),
    ),
    QuantityRule(
        rule=(
            f"!{_IS_Q} || ({_Q}.compareTo(quantity('1m')) >= 0 && "
            f"{_Q}.compareTo(quantity('{MAX_CPU}')) <= 0)"
        ),
        message=f"resources.cpu must be from 1m (one millicore) to {MAX_CPU} cores",
        check=lambda v: _within(v, "1m", MAX_CPU),
    ),
)

MEMORY_RULES = (
    QuantityRule(
        rule=_IS_Q,
        message="resources.memory must be a Kubernetes quantity of bytes, such as 512Mi or 16Gi",
        check=_is_quantity,
    ),
    QuantityRule(
        rule=(
            f"!{_IS_Q} || ({_Q}.compareTo(quantity('{MIN_MEMORY}')) >= 0 && "
            f"{_Q}.compareTo(quantity('{MAX_MEMORY}')) <= 0)"
        ),
        # A number without a suffix counts bytes: "512" meant 512Mi, and no process
        # starts in 512 bytes. 1Mi is far below what the runtime needs but above any typo.
        message=(
            f"resources.memory must be from {MIN_MEMORY} to {MAX_MEMORY}; a number without "
            "a suffix counts bytes, so write 512Mi, not 512"
        ),
        check=lambda v: _within(v, MIN_MEMORY, MAX_MEMORY),
    ),
)


def _checker(rules: tuple[QuantityRule, ...]) -> Callable[[int | str], int | str]:
    def check(value: int | str) -> int | str:
        for rule in rules:
            if not rule.check(value):
                raise ValueError(rule.message)
        return value

    return check


def _schema(rules: tuple[QuantityRule, ...]) -> dict[str, Any]:
    return {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": True,
        CEL_KEY: [{"rule": r.rule, "message": r.message} for r in rules],
    }


CpuQuantity = Annotated[
    int | str, AfterValidator(_checker(CPU_RULES)), WithJsonSchema(_schema(CPU_RULES))
]
"""CPU as a Kubernetes quantity of cores: `4`, `1.5`, `500m`; from 1m to 1024 cores."""
MemoryQuantity = Annotated[
    int | str, AfterValidator(_checker(MEMORY_RULES)), WithJsonSchema(_schema(MEMORY_RULES))
]
"""Memory as a Kubernetes quantity of bytes: `512Mi`, `16Gi`; from 1Mi to 16Ti."""

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
    "CPU_RULES",
    "MEMORY_RULES",
    "URI_MESSAGE",
    "URI_SCHEMES",
    "ArtifactRef",
    "CelRule",
    "Condition",
    "CpuQuantity",
    "MemoryQuantity",
    "MetricName",
    "Scheduling",
    "SecretRef",
    "StorageSpec",
    "Toleration",
    "Uri",
    "artifact_uri_rules",
    "is_s3",
    "parse_quantity",
]
