"""The two custom resources as whole objects: apiVersion, kind, metadata, spec, status."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelplane_operator import constants as c
from modelplane_operator.api.base import ApiModel, CelRule
from modelplane_operator.api.deployment import ModelDeploymentSpec, ModelDeploymentStatus
from modelplane_operator.api.training import ModelTrainingSpec, ModelTrainingStatus

# Children are named after the resource and some are Services, whose names must be
# DNS-1035 labels: so the resource's own name must start with a letter.
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_RULE = CelRule(
    rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    message=(
        "metadata.name must start with a lowercase letter and contain only lowercase "
        "letters, digits and '-' (it names Services)"
    ),
    check=lambda r: r.metadata.name is None or bool(_NAME_RE.match(r.metadata.name)),
    field_path=".metadata.name",
)


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata modelplane reads; the rest is kept."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, max_length=253)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelTraining(ApiModel):
    """Train, tune and evaluate a PyTorch model as a distributed job."""

    cel_rules = (NAME_RULE,)

    api_version: Literal["modelplane.io/v1alpha1"] = "modelplane.io/v1alpha1"
    kind: Literal["ModelTraining"] = "ModelTraining"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ModelTrainingSpec
    status: ModelTrainingStatus | None = None


class ModelDeployment(ApiModel):
    """Serve a trained model with Ray Serve replicas that scale with load."""

    cel_rules = (NAME_RULE,)

    api_version: Literal["modelplane.io/v1alpha1"] = "modelplane.io/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


Resource = ModelTraining | ModelDeployment
KINDS: dict[str, type[ModelTraining] | type[ModelDeployment]] = {
    c.KIND_TRAINING: ModelTraining,
    c.KIND_DEPLOYMENT: ModelDeployment,
}


class UnknownKindError(ValueError):
    """The object is not one of modelplane's kinds."""


def parse_resource(obj: dict[str, Any]) -> Resource:
    """Validate one object as a ModelTraining or ModelDeployment.

    Raises UnknownKindError for another apiVersion or kind, and pydantic's
    ValidationError (with a location per problem) for an invalid one.
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if api_version != c.API_VERSION or kind not in KINDS:
        raise UnknownKindError(
            f"apiVersion {api_version!r}, kind {kind!r} is not a modelplane resource "
            f"(expected apiVersion {c.API_VERSION} and kind "
            f"{' or '.join(KINDS)})"
        )
    return KINDS[kind].model_validate(obj)
