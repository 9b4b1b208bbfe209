"""ModelDeployment: serve a trained model with Ray Serve replicas that scale with load."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelplane_operator.api.base import ApiModel, CelRule, StatusModel
from modelplane_operator.api.common import (
    CONDITIONS_LIST,
    Condition,
    CpuQuantity,
    MemoryQuantity,
    Scheduling,
    StorageSpec,
    Uri,
    artifact_uri_rules,
    is_s3,
)

# Metrics a deployment can require: a minimum of those where higher is better (fractions),
# a maximum of perplexity (the contract's LOWER_IS_BETTER_METRICS: lower is better).
FRACTION_GATE_METRICS = ("accuracy", "f1", "precision", "recall", "top5Accuracy", "tokenAccuracy")
GATE_METRICS = (*FRACTION_GATE_METRICS, "perplexity")
DeploymentPhase = Literal["Pending", "Progressing", "Ready", "Degraded", "Rejected"]


class ModelSource(ApiModel):
    """Which trained model to serve: exactly one of fromTraining and uri."""

    cel_rules = (
        CelRule(
            rule="has(self.fromTraining) != has(self.uri)",
            message="set exactly one of fromTraining and uri",
            check=lambda m: (m.from_training is None) != (m.uri is None),
        ),
        *artifact_uri_rules("model.uri"),
    )

    from_training: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """Name of a ModelTraining in the same namespace; serving waits until it Succeeded and
    serves its artifact."""
    uri: Uri | None = None
    """Location of a modelplane artifact (a folder with a model card)."""


class ReplicaRange(ApiModel):
    """Bounds for the number of model replicas."""

    cel_rules = (
        CelRule(
            rule="self.min <= self.max",
            message="min must be less than or equal to max",
            check=lambda r: r.min <= r.max,
            field_path=".min",
        ),
    )

    min: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas; 0 lets an idle deployment scale to zero."""
    max: int = Field(default=1, ge=1, le=1000)
    """Most replicas."""


class Autoscaling(ApiModel):
    """How Ray Serve's autoscaler reacts to load."""

    target_ongoing_requests: float = Field(default=2.0, gt=0.0, le=10000.0)
    """Ongoing requests per replica the autoscaler aims for."""
    upscale_delay_seconds: float = Field(default=2.0, ge=0.0, le=3600.0)
    """How long load must stay high before replicas are added."""
    downscale_delay_seconds: float = Field(default=60.0, ge=0.0, le=86400.0)
    """How long load must stay low before replicas (and then worker pods) are removed."""
    spare_workers: int = Field(default=0, ge=0, le=64)
    """Worker pods kept running beyond the replicas Serve runs (never more than
    `replicas.max` in all). A spare has already imported the serving app, so a new replica
    starts on it in about a second instead of waiting for a pod and a cold start; each
    costs one idle worker's resources (and GPUs)."""


class ServingResources(Scheduling):
    """What each replica gets and where it runs."""

    gpus_per_replica: int = Field(default=0, ge=0, le=16)
    """Whole GPUs per replica; 0 serves on the CPU. Each replica runs in a worker pod of
    its own, which holds these GPUs alone: replicas never share a GPU."""
    cpu: CpuQuantity | None = None
    """CPU request and limit per worker pod in cores or millicores, for example "4" or
    500m (from 1m to 1024)."""
    memory: MemoryQuantity | None = None
    """Memory request and limit per worker pod, for example 16Gi (from 1Mi to 16Ti)."""


class Batching(ApiModel):
    """Dynamic batching of concurrent requests."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most requests run through the model together."""
    batch_wait_timeout_ms: float = Field(default=5.0, ge=0.0, le=10000.0)
    """How long the first request of a batch waits for others."""


class Optimization(ApiModel):
    """Inference optimisations, each checked against the fp32 model's predictions."""

    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights and activations type; bf16 and fp16 are for GPUs (bf16 also runs on CPUs;
    fp16 needs resources.gpusPerReplica > 0)."""
    quantization: Literal["none", "int8"] = "none"
    """int8 applies dynamic int8 quantisation to linear layers (CPU serving only)."""
    compile: bool = False
    """Compile the model with torch.compile at start-up."""


class ModelDeploymentSpec(ApiModel):
    """The desired serving deployment."""

    cel_rules = (
        CelRule(
            rule=(
                "!has(self.requireMetrics) || self.requireMetrics.all(k, k in "
                + "["
                + ", ".join(f"'{m}'" for m in GATE_METRICS)
                + "])"
            ),
            message="requireMetrics keys must be among " + ", ".join(GATE_METRICS),
            check=lambda s: all(k in GATE_METRICS for k in s.require_metrics),
            field_path=".requireMetrics",
        ),
        CelRule(
            rule=(
                "!has(self.optimization) || !has(self.optimization.quantization) || "
                "self.optimization.quantization == 'none' || "
                "!has(self.resources) || !has(self.resources.gpusPerReplica) || "
                "self.resources.gpusPerReplica == 0"
            ),
            message="int8 quantization is for CPU serving: set resources.gpusPerReplica to 0",
            check=lambda s: (
                s.optimization.quantization == "none" or s.resources.gpus_per_replica == 0
            ),
            field_path=".optimization.quantization",
        ),
        CelRule(
            rule=(
                "!has(self.optimization) || !has(self.optimization.dtype) || "
                "self.optimization.dtype != 'fp16' || (has(self.resources) && "
                "has(self.resources.gpusPerReplica) && self.resources.gpusPerReplica > 0)"
            ),
            message=(
                "optimization.dtype fp16 needs a GPU: set resources.gpusPerReplica, or use "
                "bf16 or fp32 on CPUs"
            ),
            check=lambda s: s.optimization.dtype != "fp16" or s.resources.gpus_per_replica > 0,
            field_path=".optimization.dtype",
        ),
        CelRule(
            rule=(
                "!has(self.requireMetrics) || "
                "self.requireMetrics.all(k, k == 'perplexity' || "
                "(self.requireMetrics[k] >= 0.0 && self.requireMetrics[k] <= 1.0))"
            ),
            message=(
                "requireMetrics values must be from 0 to 1: the gate metrics are fractions "
                "(f1: 0.9, not 90)"
            ),
            check=lambda s: all(
                k == "perplexity" or 0.0 <= v <= 1.0 for k, v in s.require_metrics.items()
            ),
            field_path=".requireMetrics",
        ),
        CelRule(
            rule=(
                "!has(self.requireMetrics) || !('perplexity' in self.requireMetrics) || "
                "self.requireMetrics['perplexity'] >= 1.0"
            ),
            message=(
                "requireMetrics.perplexity is the most perplexity allowed (lower is better), "
                "and no model's perplexity is below 1"
            ),
            check=lambda s: s.require_metrics.get("perplexity", 1.0) >= 1.0,
            field_path=".requireMetrics.perplexity",
        ),
        CelRule(
            rule=(
                "!has(self.maxOngoingRequests) || !has(self.batching) || "
                "!has(self.batching.maxBatchSize) || "
                "self.maxOngoingRequests >= self.batching.maxBatchSize"
            ),
            message=(
                "maxOngoingRequests must be at least batching.maxBatchSize, "
                "or a replica can never fill a batch"
            ),
            check=lambda s: s.max_ongoing_requests >= s.batching.max_batch_size,
            field_path=".maxOngoingRequests",
        ),
        CelRule(
            # A fromTraining model is wherever the training put it, maybe in s3://.
            rule=(
                "!has(self.storage) || has(self.model.fromTraining) || "
                "(has(self.model.uri) && self.model.uri.startsWith('s3://'))"
            ),
            message=(
                "storage holds credentials for an s3:// model, and model.uri is not s3:// "
                "(nor is the model fromTraining, whose artifact may be): remove storage, or "
                "it would be ignored"
            ),
            check=lambda s: (
                s.storage is None or s.model.from_training is not None or is_s3(s.model.uri)
            ),
            field_path=".storage",
        ),
    )

    model: ModelSource
    """The trained model to serve."""
    require_metrics: dict[str, float] = Field(default_factory=dict, max_length=16)
    """The validation metrics the model must meet, by name: a minimum for accuracy, f1,
    precision, recall, top5Accuracy and tokenAccuracy (fractions from 0 to 1, for example
    f1: 0.9), a maximum for perplexity (lower is better, for example perplexity: 12). A
    model that misses any of them is Rejected and not rolled out."""
    replicas: ReplicaRange = Field(default_factory=ReplicaRange)
    """Replica bounds for the autoscaler."""
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    """Autoscaler targets and delays."""
    resources: ServingResources = Field(default_factory=ServingResources)
    """Per-replica resources and placement."""
    batching: Batching = Field(default_factory=Batching)
    """Dynamic batching."""
    optimization: Optimization = Field(default_factory=Optimization)
    """Inference optimisations."""
    max_ongoing_requests: int = Field(default=64, ge=1, le=100000)
    """Requests one replica works on at once (a batch is drawn from them)."""
    max_queued_requests: int = Field(default=64, ge=0, le=100000)
    """Requests one replica lets wait beyond maxOngoingRequests; beyond that callers get
    503 with Retry-After at once instead of waiting ever longer."""
    storage: StorageSpec | None = None
    """Credentials for an s3:// model (model.uri, or the artifact of the fromTraining
    ModelTraining). Unset, the pods use the cluster's default Secret, if the operator has
    one."""


class ModelInfo(StatusModel):
    """The model being served."""

    uri: str = ""
    """Location of the served artifact."""
    digest: str = ""
    """sha256 digest of its weights."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Its validation metrics."""


class Counts(StatusModel):
    """Desired and ready counts."""

    desired: int = 0
    """How many are wanted."""
    ready: int = 0
    """How many are ready."""


class Load(StatusModel):
    """Traffic the deployment sees."""

    ongoing_requests: float = 0.0
    """Requests in flight or waiting for a replica, as Serve's autoscaler counts them (a
    fixed-size deployment: the replicas' own count); read every few seconds."""
    requests_per_second: float = 0.0
    """Requests the replicas answered per second, over about the last 30 seconds."""


class ModelDeploymentStatus(StatusModel):
    """What the operator observed; written by the operator only."""

    observed_generation: int | None = None
    """The metadata.generation this status describes."""
    phase: DeploymentPhase | None = None
    """Pending, Progressing, Ready, Degraded or Rejected."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """Ready, Progressing, ModelAccepted, Reconciling and Stalled conditions. The reason
    says where the deployment stands: WaitingForTraining, RollingOut, Serving,
    ApplicationError (Serve could not run the model), CrashLoopBackOff, ImagePullFailed,
    ContainerConfigError (a Secret or key the pods need is missing), OOMKilled; Rejected
    with MetricsBelowThreshold, MetricMissing, TrainingFailed (the training named by
    fromTraining failed), UnservableModel (a task serving cannot answer) or InvalidSpec
    (the operator cannot build what the spec describes; fix it and re-apply)."""
    endpoint: str | None = None
    """HTTP endpoint inside the cluster (Open Inference Protocol v2 and /predict)."""
    model: ModelInfo | None = None
    """The served model."""
    replicas: Counts | None = None
    """Model replicas wanted by the autoscaler and ready."""
    workers: Counts | None = None
    """Worker pods wanted and ready."""
    load: Load | None = None
    """Current traffic."""
    last_scale_time: str | None = None
    """When the worker pods were last resized (RFC 3339); each resize is also an Event
    with reason Scaled."""
