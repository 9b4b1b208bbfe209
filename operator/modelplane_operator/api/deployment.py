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
from modelplane_runtime.contract import BUILTIN_MODELS

# Metrics a deployment can require: a minimum of those where higher is better (fractions),
# a maximum of perplexity (the contract's LOWER_IS_BETTER_METRICS: lower is better).
FRACTION_GATE_METRICS = ("accuracy", "f1", "precision", "recall", "top5Accuracy", "tokenAccuracy")
GATE_METRICS = (*FRACTION_GATE_METRICS, "perplexity")
DeploymentPhase = Literal["Pending", "Progressing", "Ready", "Degraded", "Rejected"]
SERVED_BUILTIN_MODELS = tuple(
    f"builtin://{name}" for name, task in BUILTIN_MODELS.items() if task == "text-generation"
)
"""The pretrained models that ship with modelplane and a deployment serves as they are:
the language models (a ModelTraining starts from them too)."""


class ModelSource(ApiModel):
    """Which trained model to serve: exactly one of fromTraining and uri."""

    cel_rules = (
        CelRule(
            rule="has(self.fromTraining) != has(self.uri)",
            message="set exactly one of fromTraining and uri",
            check=lambda m: (m.from_training is None) != (m.uri is None),
        ),
        *artifact_uri_rules("model.uri", builtin=SERVED_BUILTIN_MODELS),
    )

    from_training: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """Name of a ModelTraining in the same namespace; serving waits until it Succeeded and
    serves its artifact."""
    uri: Uri | None = None
    """Location of the model: a modelplane artifact (a folder with a model card, as a
    ModelTraining writes it), a Hugging Face model folder (config.json, safetensors
    weights and tokenizer files, no model card: served as a text-generation model), or
    builtin://smollm2-135m-instruct (SmolLM2-135M-Instruct, a chat model that ships with
    modelplane: nothing is downloaded); pvc://, s3:// or file://. Other builtin:// names
    are data sets, not models."""


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
    """Ongoing requests per replica the autoscaler aims for. For a language model every
    request is one sequence, so this is ongoing sequences per replica (generating and
    waiting for a place in its batch): set it near generation.maxSequences to add
    replicas as batches fill."""
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
    """Dynamic batching of concurrent requests: a classifier's. A language model batches
    by tokens instead (spec.generation) and ignores it."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most requests run through the model together."""
    batch_wait_timeout_ms: float = Field(default=5.0, ge=0.0, le=10000.0)
    """How long the first request of a batch waits for others."""


ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Adapter(ApiModel):
    """A LoRA adapter served by name on the deployment's model."""

    cel_rules = artifact_uri_rules(
        "generation.adapters[].uri",
        why="builtin:// names a data set or a base model shipped with modelplane, not an adapter",
    )

    name: str = Field(min_length=1, max_length=128, pattern=ADAPTER_NAME)
    """The name clients put in a request's `model`, alone or as `<deployment>:<name>`:
    letters, digits, '.', '_' and '-', starting with a letter or digit."""
    uri: Uri
    """The adapter: the artifact of a text-generation ModelTraining with model.adapter
    (not merged) trained on this deployment's model; pvc://, s3:// or file://. Loaded on
    first use."""


class Generation(ApiModel):
    """How a language model generates: token-level (continuous) batching with a KV cache.
    Each field's default is the replica's own."""

    cel_rules = (
        CelRule(
            rule=(
                "!has(self.adapters) || "
                "self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))"
            ),
            message=(
                "generation.adapters names must be unique: a request's model names one adapter"
            ),
            check=lambda g: len({a.name for a in g.adapters}) == len(g.adapters),
            field_path=".adapters",
        ),
    )

    max_sequences: int = Field(default=16, ge=1, le=1024)
    """Sequences one replica generates at once (its continuous batch); more wait."""
    max_waiting: int = Field(default=32, ge=0, le=100000)
    """Sequences that may wait in a replica for a place in its batch; beyond that a
    request is answered 429 with Retry-After. Serve sends a replica at most
    maxSequences + maxWaiting requests and queues maxQueuedRequests more (503 with
    Retry-After beyond them); maxOngoingRequests does not apply."""
    max_tokens: int = Field(default=512, ge=1, le=131072)
    """The most new tokens a request may ask for (`max_tokens`), and what one that names
    none gets; the model's context may cap it lower."""
    kv_cache_tokens: int = Field(default=8192, ge=256, le=16_777_216)
    """Tokens the paged KV cache of a replica holds, over all its sequences (prompts and
    answers): its memory, which resources.memory (or the GPU) must hold on top of the
    weights. Greedy (temperature 0) and sampled sequences run in two batches with a
    cache of this size each, the second made when the first sampled request comes."""
    max_batch_tokens: int = Field(default=512, ge=16, le=1_048_576)
    """Tokens in one forward pass (prompt chunks and one decode step per sequence): larger
    passes use the hardware better, smaller ones keep time between tokens short."""
    adapters: list[Adapter] = Field(default_factory=list, max_length=64)
    """LoRA adapters served by name on the model, each loaded on first use."""
    max_loaded_adapters: int = Field(default=2, ge=1, le=64)
    """Adapters a replica keeps loaded (each a copy of the model with the adapter merged);
    the least recently used idle one makes room for another."""


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
                "(has(self.model.uri) && self.model.uri.startsWith('s3://')) || "
                "(has(self.generation) && has(self.generation.adapters) && "
                "self.generation.adapters.exists(a, a.uri.startsWith('s3://')))"
            ),
            message=(
                "storage holds credentials for an s3:// model or adapter, and neither "
                "model.uri nor any generation.adapters[].uri is s3:// (nor is the model "
                "fromTraining, whose artifact may be): remove storage, or it would be ignored"
            ),
            check=lambda s: (
                s.storage is None
                or s.model.from_training is not None
                or is_s3(s.model.uri)
                or any(is_s3(a.uri) for a in (s.generation.adapters if s.generation else ()))
            ),
            field_path=".storage",
        ),
        CelRule(
            rule=(
                "!has(self.requireMetrics) || size(self.requireMetrics) == 0 || "
                "!has(self.model.uri) || !self.model.uri.startsWith('builtin://')"
            ),
            message=(
                "requireMetrics gates a trained model by its validation metrics, and a "
                "builtin:// model ships with none: remove requireMetrics, or serve a "
                "training of it (model.fromTraining)"
            ),
            check=lambda s: (
                not s.require_metrics
                or s.model.uri is None
                or not s.model.uri.startswith("builtin://")
            ),
            field_path=".requireMetrics",
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
    """Dynamic batching of a classifier's requests. A language model ignores it: it
    batches by tokens, as spec.generation says."""
    generation: Generation | None = None
    """For a language model (a text-generation training, a Hugging Face folder, or
    builtin://smollm2-135m-instruct), which answers the OpenAI API (/v1/models,
    /v1/completions, /v1/chat/completions, streaming or not): how it generates, and the
    LoRA adapters it serves. Unset, a language model generates with the defaults; a
    classifier refuses it."""
    optimization: Optimization = Field(default_factory=Optimization)
    """Inference optimisations."""
    max_ongoing_requests: int = Field(default=64, ge=1, le=100000)
    """Requests one classifier replica works on at once (a batch is drawn from them). A
    language model's replica takes generation.maxSequences + generation.maxWaiting
    instead."""
    max_queued_requests: int = Field(default=64, ge=0, le=100000)
    """Requests one replica lets wait beyond maxOngoingRequests; beyond that callers get
    503 with Retry-After at once instead of waiting ever longer."""
    storage: StorageSpec | None = None
    """Credentials for an s3:// model (model.uri, or the artifact of the fromTraining
    ModelTraining) or LoRA adapter (spec.generation.adapters). Unset, the pods use the
    cluster's default Secret, if the operator has one."""


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
    tokens_per_second: float | None = None
    """A language model's generated tokens per second over all replicas, over about the
    last 30 seconds; absent for a classifier."""
    running_sequences: int | None = None
    """A language model's sequences being generated now, over all replicas (their
    continuous batches); absent for a classifier."""
    waiting_sequences: int | None = None
    """A language model's sequences waiting in the replicas for a place in a batch;
    absent for a classifier."""


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
    """HTTP endpoint inside the cluster: the OpenAI API under /v1 for a language model,
    Open Inference Protocol v2 and /predict for a classifier."""
    engine: str | None = None
    """What the replicas run the model with: transformers-continuous-batching for a
    language model (transformers' continuous batching: a paged KV cache, batches of
    tokens), torch-dynamic-batching for a classifier (one forward pass per batch of
    requests). The operator knows a language model by spec.generation, a text-generation
    training or a builtin:// model; a model.uri artifact is served as its card says,
    which only the replica reads, so set spec.generation (even {}) on a language model
    there. Set while the deployment rolls out."""
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
