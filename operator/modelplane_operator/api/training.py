"""ModelTraining: train, tune and evaluate a PyTorch model as a distributed job."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema

from modelplane_operator.api.base import ApiModel, CelRule, StatusModel
from modelplane_operator.api.common import (
    CONDITIONS_LIST,
    ArtifactRef,
    Condition,
    Quantity,
    Scheduling,
    Uri,
)

Architecture = Literal["transformer", "bert", "resnet", "mlp"]
Task = Literal["text-classification", "masked-lm", "image-classification", "tabular-classification"]
TASKS_BY_ARCHITECTURE: dict[str, tuple[str, ...]] = {
    "transformer": ("text-classification",),
    "bert": ("text-classification", "masked-lm"),
    "resnet": ("image-classification",),
    "mlp": ("tabular-classification", "image-classification"),
}
EvalMetric = Literal["accuracy", "f1", "precision", "recall", "top5Accuracy", "perplexity"]
ObjectiveMetric = Literal[
    "accuracy", "f1", "precision", "recall", "top5Accuracy", "perplexity", "loss"
]
TrainingPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]

# Hyperparameters a tuning space may name, by the kind of value they take.
TUNABLE_FLOATS = ("learningRate", "weightDecay", "maxGradNorm")
TUNABLE_INTS = ("epochs", "batchSize", "warmupSteps", "gradientAccumulation")
TUNABLE_CHOICES = ("optimizer", "schedule", "precision")
TUNABLE = TUNABLE_FLOATS + TUNABLE_INTS + TUNABLE_CHOICES


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


def _cel_map(mapping: dict[str, tuple[str, ...]]) -> str:
    return "{" + ", ".join(f"'{k}': {_cel_list(v)}" for k, v in mapping.items()) + "}"


class ModelParams(ApiModel):
    """Size of the network. Unset fields take the architecture's tiny default."""

    cel_rules = (
        CelRule(
            rule="!has(self.hidden) || !has(self.heads) || self.hidden % self.heads == 0",
            message="hidden must be divisible by heads",
            check=lambda p: p.hidden is None or p.heads is None or p.hidden % p.heads == 0,
            field_path=".heads",
        ),
    )

    layers: int | None = Field(default=None, ge=1, le=64)
    """Encoder layers (transformer, bert), hidden layers (mlp) or blocks per stage (resnet)."""
    hidden: int | None = Field(default=None, ge=4, le=16384)
    """Hidden width: model dimension (transformer, bert), layer width (mlp), base channels
    (resnet)."""
    heads: int | None = Field(default=None, ge=1, le=128)
    """Attention heads (transformer, bert); hidden must be divisible by heads."""
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Dropout probability."""
    max_length: int | None = Field(default=None, ge=8, le=8192)
    """Longest token sequence; longer texts are truncated (text tasks)."""
    vocab_size: int | None = Field(default=None, ge=64, le=262144)
    """Size of the tokenizer vocabulary trained on the data (text tasks)."""


class ModelInit(ApiModel):
    """Saved weights to start from instead of a random initialisation."""

    uri: Uri
    """Location of a modelplane artifact (for example a masked-LM pre-training run)."""


class ModelSpec(ApiModel):
    """What network to build and what it learns to do."""

    cel_rules = (
        CelRule(
            rule=f"self.task in {_cel_map(TASKS_BY_ARCHITECTURE)}[self.architecture]",
            message=(
                "task does not fit architecture: transformer does text-classification; "
                "bert does text-classification or masked-lm; resnet does "
                "image-classification; mlp does tabular-classification or "
                "image-classification"
            ),
            check=lambda m: m.task in TASKS_BY_ARCHITECTURE[m.architecture],
            field_path=".task",
        ),
    )

    architecture: Architecture
    """Network family: transformer (encoder classifier), bert (encoder with masked-LM and
    classification heads), resnet (image classifier) or mlp (tabular classifier)."""
    task: Task
    """What the model learns; must fit the architecture."""
    params: ModelParams = Field(default_factory=ModelParams)
    """Network size; unset fields take tiny defaults that train in seconds on a CPU."""
    init: ModelInit | None = None
    """Start from saved weights (same architecture) instead of random ones."""


class DataSource(ApiModel):
    """One data set."""

    uri: Uri
    """JSONL or CSV text (text and label columns), an image folder, an NPZ file, or a
    built-in data set such as builtin://digits."""


class DataSpec(ApiModel):
    """Training and validation data."""

    cel_rules = (
        CelRule(
            rule="!(has(self.validation) && has(self.validationSplit))",
            message="set either validation or validationSplit, not both",
            check=lambda d: d.validation is None or d.validation_split is None,
        ),
    )

    train: DataSource
    """The training data."""
    validation: DataSource | None = None
    """Separate validation data. Without it (and without validationSplit) 10% of the
    training data is held out."""
    validation_split: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Fraction of the training data held out for validation (deterministic by seed)."""
    text_column: str = Field(default="text", min_length=1, max_length=253)
    """Name of the text field in JSONL or CSV data."""
    label_column: str = Field(default="label", min_length=1, max_length=253)
    """Name of the label field in JSONL, CSV or NPZ data."""


class Hyperparameters(ApiModel):
    """How the optimiser runs. Every field can also be searched by spec.tuning."""

    epochs: int = Field(default=3, ge=1, le=10000)
    """Passes over the training data."""
    batch_size: int = Field(default=32, ge=1, le=65536)
    """Global batch size per optimiser step, before gradient accumulation, summed over all
    processes."""
    learning_rate: float = Field(default=3.0e-4, gt=0.0, le=10.0)
    """Peak learning rate, reached after warmupSteps."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """adamw or sgd (with momentum 0.9)."""
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    """Decoupled weight decay."""
    warmup_steps: int = Field(default=0, ge=0, le=10_000_000)
    """Optimizer steps of linear warm-up from zero to learningRate."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up."""
    gradient_accumulation: int = Field(default=1, ge=1, le=1024)
    """Micro-batches whose gradients are summed before one optimiser step."""
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1000.0)
    """Gradients are clipped to this global norm."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision: bf16 or fp16 on GPUs, bf16 on CPUs that support it."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seed of every random choice (initialisation, shuffling, splits)."""


class TrainingResources(Scheduling):
    """How big the job is and where it runs."""

    nodes: int = Field(default=1, ge=1, le=256)
    """Pods in the job, one per node; they form one torchrun gang."""
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    """GPUs per pod (nvidia.com/gpu), one training process each; 0 trains on the CPU with
    one process."""
    cpu: Quantity | None = None
    """CPU request and limit per pod, for example "8"."""
    memory: Quantity | None = None
    """Memory request and limit per pod, for example 32Gi."""


class Checkpointing(ApiModel):
    """When to save resumable state."""

    every_steps: int = Field(default=500, ge=1, le=10_000_000)
    """Optimizer steps between checkpoints; a restarted job resumes from the newest."""
    keep: int = Field(default=3, ge=1, le=100)
    """Checkpoints kept; older ones are deleted."""


class Output(ApiModel):
    """Where the trained artifact goes."""

    uri: Uri
    """Folder for the artifact (weights, model card, tokenizer, plots); each run writes a
    sub-folder."""


class Evaluation(ApiModel):
    """How the trained model is judged on the validation data."""

    metrics: list[EvalMetric] = Field(default_factory=list, max_length=6)
    """Metrics to compute; empty means the task's standard set (accuracy, f1, precision,
    recall for classification; perplexity for masked-lm). top5Accuracy is for images."""


# Numbers only: CEL cannot see a field whose items have no single type, so numeric and
# categorical candidates live in two typed lists (values, options).
NumberList = Annotated[
    list[int | float],
    WithJsonSchema({"type": "array", "maxItems": 256, "items": {"type": "number"}}),
]


class ParamSpec(ApiModel):
    """The range one hyperparameter is searched over."""

    cel_rules = (
        CelRule(
            rule=(
                "self.type == 'choice' || (has(self.min) && has(self.max) && self.min < self.max)"
            ),
            message="uniform, loguniform and int need min and max with min < max",
            check=lambda p: (
                p.type == "choice" or (p.min is not None and p.max is not None and p.min < p.max)
            ),
        ),
        CelRule(
            rule="self.type != 'loguniform' || !has(self.min) || self.min > 0.0",
            message="loguniform needs min > 0",
            check=lambda p: p.type != "loguniform" or p.min is None or p.min > 0,
            field_path=".min",
        ),
        CelRule(
            rule=(
                "self.type != 'choice' || "
                "(has(self.values) && size(self.values) > 0) != "
                "(has(self.options) && size(self.options) > 0)"
            ),
            message="choice needs a non-empty values list (numbers) or options list (names)",
            check=lambda p: p.type != "choice" or bool(p.values) != bool(p.options),
        ),
    )

    type: Literal["uniform", "loguniform", "int", "choice"]
    """uniform or loguniform (floats between min and max), int (integers from min to max)
    or choice (one of values, or one of options)."""
    min: float | None = None
    """Lower bound (uniform, loguniform, int)."""
    max: float | None = None
    """Upper bound (uniform, loguniform, int)."""
    values: NumberList | None = None
    """Numeric candidates (choice), for example batch sizes [16, 32, 64]."""
    options: list[str] | None = Field(default=None, max_length=64)
    """Named candidates (choice) for optimizer, schedule or precision, for example
    [adamw, sgd]."""


class Objective(ApiModel):
    """What the search optimises."""

    metric: ObjectiveMetric
    """A validation metric, or loss."""
    goal: Literal["maximize", "minimize"] = "maximize"
    """Whether higher or lower is better."""


class EarlyStopping(ApiModel):
    """When to stop unpromising trials."""

    rule: Literal["median", "none"] = "median"
    """median stops a trial whose best value so far is worse than the median of completed
    trials at the same step."""
    min_steps: int = Field(default=0, ge=0, le=10_000_000)
    """Steps a trial always runs before it can be stopped."""


class Tuning(ApiModel):
    """Hyperparameter search: each trial is a training run with sampled values."""

    cel_rules = (
        CelRule(
            rule="self.parallelTrials <= self.maxTrials",
            message="parallelTrials must not exceed maxTrials",
            check=lambda t: t.parallel_trials <= t.max_trials,
            field_path=".parallelTrials",
        ),
        CelRule(
            rule=f"self.space.all(k, k in {_cel_list(TUNABLE)})",
            message="space keys must be hyperparameter names: " + ", ".join(TUNABLE),
            check=lambda t: all(k in TUNABLE for k in t.space),
            field_path=".space",
        ),
        CelRule(
            rule=(
                f"self.space.all(k, !(k in {_cel_list(TUNABLE_CHOICES)}) "
                "|| (self.space[k].type == 'choice' && has(self.space[k].options)))"
            ),
            message=(
                "optimizer, schedule and precision can only be searched with type choice "
                "and options"
            ),
            check=lambda t: all(
                spec.type == "choice" and spec.options
                for k, spec in t.space.items()
                if k in TUNABLE_CHOICES
            ),
            field_path=".space",
        ),
        CelRule(
            rule=(
                f"self.space.all(k, k in {_cel_list(TUNABLE_CHOICES)} "
                "|| !has(self.space[k].options))"
            ),
            message=(
                "only optimizer, schedule and precision take options; numeric "
                "hyperparameters take values, or min and max"
            ),
            check=lambda t: all(
                k in TUNABLE_CHOICES or not spec.options for k, spec in t.space.items()
            ),
            field_path=".space",
        ),
        CelRule(
            rule=(
                f"self.space.all(k, !(k in {_cel_list(TUNABLE_INTS)}) "
                "|| self.space[k].type in ['int', 'choice'])"
            ),
            message=(
                "epochs, batchSize, warmupSteps and gradientAccumulation can only be "
                "searched with type int or choice"
            ),
            check=lambda t: all(
                spec.type in ("int", "choice") for k, spec in t.space.items() if k in TUNABLE_INTS
            ),
            field_path=".space",
        ),
        CelRule(
            rule=(
                "self.algorithm != 'grid' || "
                "self.space.all(k, self.space[k].type in ['int', 'choice'])"
            ),
            message="grid search needs every space entry to be int or choice",
            check=lambda t: (
                t.algorithm != "grid"
                or all(spec.type in ("int", "choice") for spec in t.space.values())
            ),
            field_path=".algorithm",
        ),
    )

    objective: Objective
    """The metric to optimise and its direction."""
    algorithm: Literal["random", "grid", "tpe"] = "tpe"
    """random, grid (every combination once) or tpe (Tree-structured Parzen Estimator)."""
    max_trials: int = Field(default=10, ge=1, le=1000)
    """Trials to run in total."""
    parallel_trials: int = Field(default=1, ge=1, le=100)
    """Trials running at once; at most maxTrials."""
    max_failed_trials: int = Field(default=3, ge=0, le=1000)
    """Failed trials tolerated before the whole search fails."""
    early_stopping: EarlyStopping | None = None
    """Stop unpromising trials early; unset runs every trial to the end."""
    space: dict[str, ParamSpec] = Field(min_length=1, max_length=11)
    """Hyperparameters to search, by name (as in spec.hyperparameters), and their ranges."""


class ModelTrainingSpec(ApiModel):
    """The desired training run."""

    cel_rules = (
        CelRule(
            rule=(
                "!has(self.evaluation) || !has(self.evaluation.metrics) || "
                "(self.model.task == 'masked-lm' "
                "? self.evaluation.metrics.all(m, m == 'perplexity') "
                ": self.evaluation.metrics.all(m, m != 'perplexity'))"
            ),
            message="perplexity is the metric of masked-lm, and masked-lm has no other",
            check=lambda s: all(
                (m == "perplexity") == (s.model.task == "masked-lm") for m in s.evaluation.metrics
            ),
            field_path=".evaluation.metrics",
        ),
        CelRule(
            rule=(
                "!has(self.evaluation) || !has(self.evaluation.metrics) || "
                "self.model.task == 'image-classification' || "
                "self.evaluation.metrics.all(m, m != 'top5Accuracy')"
            ),
            message="top5Accuracy is only for image-classification",
            check=lambda s: (
                s.model.task == "image-classification" or "top5Accuracy" not in s.evaluation.metrics
            ),
            field_path=".evaluation.metrics",
        ),
    )

    model: ModelSpec
    """The network and its task."""
    data: DataSpec
    """Training and validation data."""
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    """Optimiser settings; defaults suit the tiny default models."""
    resources: TrainingResources = Field(default_factory=TrainingResources)
    """Pods, GPUs and placement."""
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    """Checkpoint frequency and retention."""
    output: Output
    """Where the artifact is written."""
    evaluation: Evaluation = Field(default_factory=Evaluation)
    """Validation metrics."""
    tuning: Tuning | None = None
    """Optional hyperparameter search; each trial is its own job."""
    max_restarts: int = Field(default=3, ge=0, le=100)
    """Times a job failed by the infrastructure is replaced; it resumes from its newest
    checkpoint. Configuration errors are never retried."""
    suspend: bool = False
    """Suspend the job (pods are removed; resuming continues from the newest checkpoint)."""


class Progress(StatusModel):
    """Live progress of the running job, read from rank 0."""

    epoch: int | None = None
    """Current epoch (1-based)."""
    step: int | None = None
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps in the whole run."""
    percent: int | None = Field(default=None, ge=0, le=100)
    """step as a percentage of totalSteps."""
    loss: float | None = None
    """Recent training loss."""
    samples_per_second: float | None = None
    """Training throughput over all processes."""
    eta_seconds: int | None = None
    """Estimated seconds until training ends."""


class TrialStatus(StatusModel):
    """One trial of a hyperparameter search."""

    name: str
    """Trial name; its job carries the same name."""
    params: dict[str, float | int | str] = Field(default_factory=dict)
    """Sampled hyperparameters."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Final validation metrics."""
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Stopped"] = "Pending"
    """Trial state; Stopped means stopped early by the early-stopping rule."""
    reason: str = ""
    """Why the trial failed or was stopped."""
    artifact: ArtifactRef | None = None
    """The trial's trained artifact."""
    intermediate: dict[str, float] = Field(default_factory=dict)
    """The objective by optimizer step, read from the trial's progress; the median rule
    compares trials on it."""
    restarts: int = 0
    """Times the trial's job was replaced after an infrastructure failure; at most
    spec.maxRestarts, after which the trial fails."""


class ModelTrainingStatus(StatusModel):
    """What the operator observed; written by the operator only."""

    observed_generation: int | None = None
    """The metadata.generation this status describes."""
    phase: TrainingPhase | None = None
    """Pending, Running, Succeeded, Failed or Suspended."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """Ready, Progressing and Failed conditions with reasons."""
    progress: Progress | None = None
    """Live progress while running."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Final validation metrics."""
    key_metric: str | None = None
    """The headline metric as name=value, for kubectl get."""
    artifact: ArtifactRef | None = None
    """The trained artifact."""
    trials: list[TrialStatus] = Field(default_factory=list)
    """Every trial of a hyperparameter search."""
    best_trial: str | None = None
    """Name of the best trial so far."""
    trial_summary: str | None = None
    """Trials finished out of maxTrials, for kubectl get (for example 4/6)."""
    restarts: int = 0
    """Times the job was replaced after an infrastructure failure; at most maxRestarts."""
    disruptions: int = 0
    """Times every pod of the job was replaced because Kubernetes evicted, preempted or
    lost one of them; these do not count against maxRestarts."""
    job_name: str | None = None
    """Name of the current Job."""
    start_time: str | None = None
    """When the first job started (RFC 3339)."""
    completion_time: str | None = None
    """When the run ended (RFC 3339)."""
