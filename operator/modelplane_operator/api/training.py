"""ModelTraining: train, tune and evaluate a PyTorch model as a distributed job."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, WithJsonSchema

from modelplane_operator.api.base import ApiModel, CelRule, StatusModel
from modelplane_operator.api.common import (
    CONDITIONS_LIST,
    ArtifactRef,
    Condition,
    CpuQuantity,
    MemoryQuantity,
    Scheduling,
    StorageSpec,
    Uri,
    artifact_uri_rules,
    is_s3,
)
from modelplane_runtime.contract import (
    BUILTIN_MODELS,
    HUGGINGFACE_ARCHITECTURES,
    LOWER_IS_BETTER_METRICS,
)

Architecture = Literal["transformer", "bert", "resnet", "mlp", "llama", "huggingface"]
Task = Literal[
    "text-classification",
    "masked-lm",
    "image-classification",
    "tabular-classification",
    "text-generation",
]
TASKS_BY_ARCHITECTURE: dict[str, tuple[str, ...]] = {
    "transformer": ("text-classification",),
    "bert": ("text-classification", "masked-lm"),
    "resnet": ("image-classification",),
    "mlp": ("tabular-classification", "image-classification"),
    "llama": ("text-generation",),
    "huggingface": ("text-generation", "text-classification"),
}
EvalMetric = Literal[
    "accuracy", "f1", "precision", "recall", "top5Accuracy", "perplexity", "tokenAccuracy"
]
ObjectiveMetric = Literal[
    "accuracy", "f1", "precision", "recall", "top5Accuracy", "perplexity", "tokenAccuracy", "loss"
]
TrainingPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]

ENCODERS = ("transformer", "bert")
# Architectures built from transformers' classes (the contract's HUGGINGFACE_ARCHITECTURES):
# their artifact is a Hugging Face folder, and they take an adapter and FSDP.
HF_ARCHITECTURES = HUGGINGFACE_ARCHITECTURES
# Architectures with attention heads: hidden must be divisible by heads.
WITH_HEADS = (*ENCODERS, "llama")
# The Llama decoder's linear layers, which adapter.targetModules may name (a huggingface
# model's are only known from its folder: the runtime checks them there).
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The model.params each architecture reads (the runtime's models/registry.py DEFAULTS; a
# unit test holds the two together). A structural CRD schema cannot give one field
# different properties by architecture (a discriminated union of differing objects), so
# ModelSpec refuses each param an architecture does not read with a rule of its own.
PARAMS_BY_ARCHITECTURE: dict[str, tuple[str, ...]] = {
    "layers": ("transformer", "bert", "resnet", "mlp", "llama"),
    "hidden": ("transformer", "bert", "resnet", "mlp", "llama"),
    "heads": WITH_HEADS,
    "dropout": (*ENCODERS, "mlp"),
    "maxLength": (*WITH_HEADS, "huggingface"),
    "vocabSize": WITH_HEADS,
}
# The encoders' hidden and heads when params leave them unset (registry.DEFAULTS).
ENCODER_HIDDEN, ENCODER_HEADS = 64, 4
# What the run computes without evaluation.metrics (the runtime's evaluate.py), and the
# metrics where lower is better; loss is always computed.
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "text-classification": ("accuracy", "f1", "precision", "recall"),
    "masked-lm": ("perplexity",),
    "image-classification": ("accuracy", "f1", "precision", "recall"),
    "tabular-classification": ("accuracy", "f1", "precision", "recall"),
    "text-generation": ("perplexity", "tokenAccuracy"),
}
LOWER_IS_BETTER = LOWER_IS_BETTER_METRICS

# Hyperparameters a tuning space may name, by the kind of value they take.
TUNABLE_FLOATS = ("learningRate", "weightDecay", "maxGradNorm")
TUNABLE_INTS = ("epochs", "batchSize", "warmupSteps", "gradientAccumulation")
TUNABLE_CHOICES = ("optimizer", "schedule", "precision")
TUNABLE = TUNABLE_FLOATS + TUNABLE_INTS + TUNABLE_CHOICES


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


def _cel_map(mapping: dict[str, tuple[str, ...]]) -> str:
    return "{" + ", ".join(f"'{k}': {_cel_list(v)}" for k, v in mapping.items()) + "}"


def _spoken(items: tuple[str, ...]) -> str:
    """("a", "b", "c") -> "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


class ModelParams(ApiModel):
    """Size of the network. Unset fields take the architecture's tiny default; a field
    the architecture does not read is refused (each field says which take it)."""

    layers: int | None = Field(default=None, ge=1, le=64)
    """All but huggingface: encoder layers (transformer, bert; default 2), decoder layers
    (llama; default 2), hidden layers (mlp; default 2) or blocks per stage (resnet;
    default 1)."""
    hidden: int | None = Field(default=None, ge=4, le=16384)
    """All but huggingface: model dimension (transformer, bert, llama; default 64,
    divisible by heads), layer width (mlp; default 64) or base channels (resnet; default
    16)."""
    heads: int | None = Field(default=None, ge=1, le=128)
    """transformer, bert and llama only: attention heads (default 4); hidden must be
    divisible by heads."""
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    """transformer, bert and mlp only (not resnet): dropout probability (default 0.1)."""
    max_length: int | None = Field(default=None, ge=8, le=8192)
    """transformer, bert, llama and huggingface only: longest token sequence (default 64;
    llama 256; huggingface the model's own limit, at most 512); longer texts are
    truncated."""
    vocab_size: int | None = Field(default=None, ge=64, le=262144)
    """transformer, bert and llama only: size of the tokenizer vocabulary trained on the
    data (default 2000)."""


_PARAM_ATTRS = {"layers": "layers", "hidden": "hidden", "heads": "heads", "dropout": "dropout"}
_PARAM_ATTRS |= {"maxLength": "max_length", "vocabSize": "vocab_size"}


def _param_rule(name: str, architectures: tuple[str, ...]) -> CelRule:
    """Refuse params.<name> on an architecture that does not read it."""
    attr = _PARAM_ATTRS[name]
    return CelRule(
        rule=(
            f"!has(self.params) || !has(self.params.{name}) || "
            f"self.architecture in {_cel_list(architectures)}"
        ),
        message=f"params.{name} is only for {_spoken(architectures)}",
        check=lambda m: getattr(m.params, attr) is None or m.architecture in architectures,
        field_path=f".params.{name}",
    )


def _hidden_divisible_by_heads(m: ModelSpec) -> bool:
    if m.architecture not in WITH_HEADS:
        return True
    hidden = m.params.hidden if m.params.hidden is not None else ENCODER_HIDDEN
    heads = m.params.heads if m.params.heads is not None else ENCODER_HEADS
    return hidden % heads == 0


_BUILTIN_MODEL_URIS = tuple(f"builtin://{name}" for name in BUILTIN_MODELS)
_BUILTIN_MODEL_TASKS = {f"builtin://{name}": task for name, task in BUILTIN_MODELS.items()}


def _cel_map_str(mapping: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in mapping.items()) + "}"


class ModelInit(ApiModel):
    """Saved weights to start from instead of a random initialisation."""

    cel_rules = artifact_uri_rules("model.init.uri", builtin=_BUILTIN_MODEL_URIS)

    uri: Uri
    """Location of a modelplane artifact (for example a masked-LM pre-training run), a
    Hugging Face model folder (config.json, safetensors weights, tokenizer files; with
    architecture huggingface), or a pretrained model that ships with modelplane:
    builtin://smollm2-135m-instruct (SmolLM2-135M-Instruct, Apache-2.0)."""


class ModelAdapter(ApiModel):
    """A low-rank adapter (LoRA, by PEFT) trained instead of every weight: the base stays
    frozen, the artifact holds the adapter and a reference (URI and digest) to its base."""

    method: Literal["lora"] = "lora"
    """lora: low-rank updates to the target modules' weights."""
    rank: int = Field(default=8, ge=1, le=1024)
    """Rank of each update (LoRA's r)."""
    alpha: float = Field(default=16.0, gt=0.0, le=4096.0)
    """Scale of the updates (LoRA's alpha; the update is multiplied by alpha / rank)."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter's input."""
    target_modules: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list, max_length=64
    )
    """Names of the linear layers to adapt (the last part of a module's name, such as
    q_proj); empty adapts every linear layer but the output head. For llama they are among
    q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and down_proj; a huggingface model's
    are checked against its folder before training starts."""
    merge: bool = False
    """Fold the trained adapter into the base weights and save a full model instead of
    the adapter."""


class Parallelism(ApiModel):
    """How the training processes share the model."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp: every process holds the whole model (data parallel). fsdp: parameters,
    gradients and optimizer state are sharded over the processes (PyTorch's fully_shard),
    for models that do not fit one GPU; with precision bf16 the shards compute in bf16
    and reduce gradients in fp32. fsdp is for text-generation (llama and huggingface)."""


class ModelSpec(ApiModel):
    """What network to build and what it learns to do."""

    cel_rules = (
        CelRule(
            rule=f"self.task in {_cel_map(TASKS_BY_ARCHITECTURE)}[self.architecture]",
            message=(
                "task does not fit architecture: transformer does text-classification; "
                "bert does text-classification or masked-lm; resnet does "
                "image-classification; mlp does tabular-classification or "
                "image-classification; llama does text-generation; huggingface does "
                "text-generation or text-classification"
            ),
            check=lambda m: m.task in TASKS_BY_ARCHITECTURE[m.architecture],
            field_path=".task",
        ),
        *(
            _param_rule(name, architectures)
            for name, architectures in PARAMS_BY_ARCHITECTURE.items()
            if set(architectures) != set(TASKS_BY_ARCHITECTURE)
        ),
        CelRule(
            # An unset hidden or heads is the encoders' default, which the pod would use.
            rule=(
                f"!(self.architecture in {_cel_list(WITH_HEADS)}) || "
                f"(has(self.params) && has(self.params.hidden) ? self.params.hidden : "
                f"{ENCODER_HIDDEN}) % (has(self.params) && has(self.params.heads) ? "
                f"self.params.heads : {ENCODER_HEADS}) == 0"
            ),
            message=(
                f"hidden must be divisible by heads (unset, hidden is {ENCODER_HIDDEN} and "
                f"heads {ENCODER_HEADS})"
            ),
            check=_hidden_divisible_by_heads,
            field_path=".params.heads",
        ),
        CelRule(
            rule="self.architecture != 'huggingface' || has(self.init)",
            message=(
                "architecture huggingface trains the model of a Hugging Face folder: set "
                "model.init.uri to it (or to builtin://smollm2-135m-instruct)"
            ),
            check=lambda m: m.architecture != "huggingface" or m.init is not None,
            field_path=".init",
        ),
        CelRule(
            rule=(
                "!has(self.init) || !(self.init.uri in "
                f"{_cel_map_str(_BUILTIN_MODEL_TASKS)}) || "
                f"self.task == {_cel_map_str(_BUILTIN_MODEL_TASKS)}[self.init.uri]"
            ),
            message=(
                "the builtin:// pretrained model in model.init.uri does another task: "
                + "; ".join(f"{uri} does {task}" for uri, task in _BUILTIN_MODEL_TASKS.items())
            ),
            check=lambda m: (
                m.init is None
                or m.init.uri not in _BUILTIN_MODEL_TASKS
                or m.task == _BUILTIN_MODEL_TASKS[m.init.uri]
            ),
            field_path=".task",
        ),
        CelRule(
            rule=(
                "!has(self.init) || !self.init.uri.startsWith('builtin://') || "
                "self.architecture == 'huggingface'"
            ),
            message=(
                "a builtin:// pretrained model in model.init.uri is a Hugging Face model: "
                "use architecture huggingface"
            ),
            check=lambda m: (
                m.init is None
                or not m.init.uri.startswith("builtin://")
                or m.architecture == "huggingface"
            ),
            field_path=".architecture",
        ),
        CelRule(
            rule=(f"!has(self.adapter) || self.architecture in {_cel_list(HF_ARCHITECTURES)}"),
            message="model.adapter (LoRA) is for llama and huggingface models",
            check=lambda m: m.adapter is None or m.architecture in HF_ARCHITECTURES,
            field_path=".adapter",
        ),
        CelRule(
            rule=(
                "!has(self.adapter) || !has(self.adapter.targetModules) || "
                "self.architecture != 'llama' || "
                f"self.adapter.targetModules.all(t, t in {_cel_list(LLAMA_MODULES)})"
            ),
            message=(
                "adapter.targetModules names a module llama does not have; its linear "
                f"layers are {_spoken(LLAMA_MODULES)}"
            ),
            check=lambda m: (
                m.adapter is None
                or m.architecture != "llama"
                or all(t in LLAMA_MODULES for t in m.adapter.target_modules)
            ),
            field_path=".adapter.targetModules",
        ),
    )

    architecture: Architecture
    """Network family: transformer (encoder classifier), bert (encoder with masked-LM and
    classification heads), resnet (image classifier), mlp (tabular classifier), llama (a
    Llama decoder, transformers' class, sized by params) or huggingface (the model of
    the Hugging Face folder in init.uri, as its config.json says: a causal LM for
    text-generation, a sequence classifier such as BERT for text-classification)."""
    task: Task
    """What the model learns; must fit the architecture."""
    params: ModelParams = Field(default_factory=ModelParams)
    """Network size; unset fields take tiny defaults that train in seconds on a CPU.
    Each field names the architectures that read it; any other refuses it."""
    init: ModelInit | None = None
    """Start from saved weights (same architecture) instead of random ones; for
    huggingface, the model to train."""
    adapter: ModelAdapter | None = None
    """Train a LoRA adapter instead of every weight (llama and huggingface)."""


class DataSource(ApiModel):
    """One data set."""

    uri: Uri
    """JSONL or CSV text (text and label columns), an image folder, an NPZ file, or a
    built-in data set such as builtin://digits."""


# A column set to its default name reads as unset: a spec dumped with its defaults and
# parsed again must stay valid, and CEL agrees (the CRD fills the same defaults in).
COLUMN_DEFAULTS = {"textColumn": "text", "labelColumn": "label"}


def _column_unset(name: str, data: str) -> str:
    return f"(!has({data}.{name}) || {data}.{name} == '{COLUMN_DEFAULTS[name]}')"


_BUILTIN_ONLY_CEL = (
    "self.train.uri.startsWith('builtin://') && "
    "(!has(self.validation) || self.validation.uri.startsWith('builtin://'))"
)


def _builtin_only(d: DataSpec) -> bool:
    sources = [d.train] if d.validation is None else [d.train, d.validation]
    return all(s.uri.startswith("builtin://") for s in sources)


def _column_rule(name: str) -> CelRule:
    """Refuse data.<name> when only builtin:// data is read: its columns are fixed, and
    the runtime reads a built-in data set without looking at column names."""
    attr = {"textColumn": "text_column", "labelColumn": "label_column"}[name]
    default = COLUMN_DEFAULTS[name]
    return CelRule(
        rule=f"{_column_unset(name, 'self')} || !({_BUILTIN_ONLY_CEL})",
        message=(
            f"data.{name} names a column of your own JSONL, CSV or NPZ data; builtin:// "
            "data sets have fixed columns and never read it"
        ),
        check=lambda d: getattr(d, attr) == default or not _builtin_only(d),
        field_path=f".{name}",
    )


class DataSpec(ApiModel):
    """Training and validation data."""

    cel_rules = (
        CelRule(
            rule="!(has(self.validation) && has(self.validationSplit))",
            message="set either validation or validationSplit, not both",
            check=lambda d: d.validation is None or d.validation_split is None,
        ),
        *(_column_rule(name) for name in ("textColumn", "labelColumn")),
    )

    train: DataSource
    """The training data."""
    validation: DataSource | None = None
    """Separate validation data. Without it (and without validationSplit) 10% of the
    training data is held out."""
    validation_split: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Fraction of the training data held out for validation (deterministic by seed)."""
    text_column: str = Field(default=COLUMN_DEFAULTS["textColumn"], min_length=1, max_length=253)
    """Name of the text field in JSONL or CSV data (text tasks; not for builtin:// data)."""
    label_column: str = Field(default=COLUMN_DEFAULTS["labelColumn"], min_length=1, max_length=253)
    """Name of the label field in JSONL, CSV or NPZ data (classification; not for
    builtin:// data)."""


class Hyperparameters(ApiModel):
    """How the optimiser runs. Every field can also be searched by spec.tuning."""

    epochs: int = Field(default=3, ge=1, le=10000)
    """Passes over the training data."""
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    """Stop after this many optimizer steps even inside an epoch (the learning-rate
    schedule spans them, and the model is evaluated where it stops); unset trains every
    epoch. For a quick fine-tune of a large data set."""
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
    """Autocast precision: bf16 or fp16 on GPUs, bf16 on CPUs that support it (fp16
    needs resources.gpusPerNode > 0)."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seed of every random choice (initialisation, shuffling, splits)."""


class TrainingResources(Scheduling):
    """How big the job is and where it runs."""

    nodes: int = Field(default=1, ge=1, le=256)
    """Pods in the job, one per node; they form one torchrun gang."""
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    """GPUs per pod (nvidia.com/gpu), one training process each; 0 trains on the CPU with
    one process."""
    cpu: CpuQuantity | None = None
    """CPU request and limit per pod in cores or millicores, for example "8" or 500m
    (from 1m to 1024)."""
    memory: MemoryQuantity | None = None
    """Memory request and limit per pod, for example 32Gi (from 1Mi to 16Ti)."""


class Checkpointing(ApiModel):
    """When to save resumable state."""

    every_steps: int = Field(default=500, ge=1, le=10_000_000)
    """Optimizer steps between checkpoints; a restarted job resumes from the newest."""
    keep: int = Field(default=3, ge=1, le=100)
    """Checkpoints kept; older ones are deleted."""


class Output(ApiModel):
    """Where the trained artifact goes."""

    cel_rules = artifact_uri_rules("output.uri")

    uri: Uri
    """Folder for the artifact (weights, model card, tokenizer, plots); each run writes a
    sub-folder."""


class Evaluation(ApiModel):
    """How the trained model is judged on the validation data."""

    metrics: list[EvalMetric] = Field(default_factory=list, max_length=6)
    """Metrics to compute (the validation loss always is); empty means the task's
    standard set (accuracy, f1, precision, recall for classification; perplexity for
    masked-lm; perplexity and tokenAccuracy, the share of response tokens predicted
    exactly, for text-generation). top5Accuracy is for images and only computed when
    listed."""


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

    cel_rules = (
        CelRule(
            # The CRD fills in goal's default (maximize); `has` guards an older CRD.
            rule=(
                "(has(self.goal) ? self.goal : 'maximize') == "
                f"(self.metric in {_cel_list(LOWER_IS_BETTER)} ? 'minimize' : 'maximize')"
            ),
            message=(
                "tuning.objective.goal must be minimize for loss and perplexity (lower is "
                "better) and maximize (the default) for the other metrics"
            ),
            check=lambda o: o.goal == ("minimize" if o.metric in LOWER_IS_BETTER else "maximize"),
            field_path=".goal",
        ),
    )

    metric: ObjectiveMetric
    """loss, or a validation metric the run computes: one of evaluation.metrics, or
    without them one of the task's standard set."""
    goal: Literal["maximize", "minimize"] = "maximize"
    """minimize for loss and perplexity, maximize for the others; nothing else is
    accepted."""


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


TEXT_TASKS = ("text-classification", "masked-lm", "text-generation")
UNLABELLED_TASKS = ("masked-lm", "text-generation")
LM_METRICS = DEFAULT_METRICS["text-generation"]
# Any of the training's storage locations in object storage: only then is spec.storage read.
_ANY_S3_CEL = (
    "self.data.train.uri.startsWith('s3://') || "
    "(has(self.data.validation) && self.data.validation.uri.startsWith('s3://')) || "
    "self.output.uri.startsWith('s3://') || "
    "(has(self.model.init) && self.model.init.uri.startsWith('s3://'))"
)


def _any_s3(s: ModelTrainingSpec) -> bool:
    uris = [s.data.train.uri, s.output.uri]
    uris += [s.data.validation.uri] if s.data.validation else []
    uris += [s.model.init.uri] if s.model.init else []
    return any(is_s3(uri) for uri in uris)


_FP16_CEL = (
    "has(self.hyperparameters) && has(self.hyperparameters.precision) && "
    "self.hyperparameters.precision == 'fp16'"
)
_FP16_SEARCHED_CEL = (
    "has(self.tuning) && 'precision' in self.tuning.space && "
    "has(self.tuning.space['precision'].options) && "
    "'fp16' in self.tuning.space['precision'].options"
)
_GPUS_CEL = (
    "(has(self.resources) && has(self.resources.gpusPerNode) && self.resources.gpusPerNode > 0)"
)


def _objective_is_computed(s: ModelTrainingSpec) -> bool:
    if s.tuning is None or s.tuning.objective.metric == "loss":
        return True
    computed = s.evaluation.metrics or DEFAULT_METRICS[s.model.task]
    return s.tuning.objective.metric in computed


def _searches_fp16(s: ModelTrainingSpec) -> bool:
    precision = s.tuning.space.get("precision") if s.tuning else None
    return precision is not None and "fp16" in (precision.options or [])


class ModelTrainingSpec(ApiModel):
    """The desired training run."""

    cel_rules = (
        CelRule(
            rule=(
                "!has(self.evaluation) || !has(self.evaluation.metrics) || "
                "(self.model.task == 'masked-lm' "
                "? self.evaluation.metrics.all(m, m == 'perplexity') "
                ": (self.model.task == 'text-generation' || "
                "self.evaluation.metrics.all(m, m != 'perplexity')))"
            ),
            message=(
                "perplexity is the metric of masked-lm, and masked-lm has no other "
                "(text-generation has perplexity and tokenAccuracy)"
            ),
            check=lambda s: all(
                (m == "perplexity") == (s.model.task == "masked-lm")
                or s.model.task == "text-generation"
                for m in s.evaluation.metrics
            ),
            field_path=".evaluation.metrics",
        ),
        CelRule(
            rule=(
                "!has(self.evaluation) || !has(self.evaluation.metrics) || "
                "(self.model.task == 'text-generation' "
                f"? self.evaluation.metrics.all(m, m in {_cel_list(LM_METRICS)}) "
                ": self.evaluation.metrics.all(m, m != 'tokenAccuracy'))"
            ),
            message=(
                "text-generation computes perplexity and tokenAccuracy, and tokenAccuracy "
                "is only for text-generation"
            ),
            check=lambda s: all(
                (m in LM_METRICS) if s.model.task == "text-generation" else m != "tokenAccuracy"
                for m in s.evaluation.metrics
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
        CelRule(
            rule=(
                "!has(self.tuning) || self.tuning.objective.metric == 'loss' || "
                "self.tuning.objective.metric in "
                "(has(self.evaluation) && has(self.evaluation.metrics) && "
                "size(self.evaluation.metrics) > 0 ? self.evaluation.metrics : "
                f"{_cel_map(DEFAULT_METRICS)}[self.model.task])"
            ),
            message=(
                "tuning.objective.metric must be loss or a metric the run computes: one of "
                "evaluation.metrics, or without them the task's standard set (accuracy, f1, "
                "precision, recall; perplexity for masked-lm; perplexity and tokenAccuracy "
                "for text-generation)"
            ),
            check=_objective_is_computed,
            field_path=".tuning.objective.metric",
        ),
        CelRule(
            rule=f"!({_FP16_CEL}) || {_GPUS_CEL}",
            message=(
                "hyperparameters.precision fp16 needs GPUs (fp16 autocast runs on CUDA "
                "only): set resources.gpusPerNode, or use bf16 or fp32 on CPUs"
            ),
            check=lambda s: s.hyperparameters.precision != "fp16" or s.resources.gpus_per_node > 0,
            field_path=".hyperparameters.precision",
        ),
        CelRule(
            rule=f"!({_FP16_SEARCHED_CEL}) || {_GPUS_CEL}",
            message=(
                "tuning.space.precision offers fp16, which needs GPUs (fp16 autocast runs "
                "on CUDA only): set resources.gpusPerNode, or search bf16 and fp32 on CPUs"
            ),
            check=lambda s: not _searches_fp16(s) or s.resources.gpus_per_node > 0,
            field_path=".tuning.space",
        ),
        CelRule(
            rule=(
                f"{_column_unset('textColumn', 'self.data')} || "
                f"self.model.task in {_cel_list(TEXT_TASKS)}"
            ),
            message=(
                "data.textColumn is for text tasks (text-classification, masked-lm, "
                "text-generation); a table's features are every column but labelColumn"
            ),
            check=lambda s: (
                s.data.text_column == COLUMN_DEFAULTS["textColumn"] or s.model.task in TEXT_TASKS
            ),
            field_path=".data.textColumn",
        ),
        CelRule(
            rule=(
                f"{_column_unset('labelColumn', 'self.data')} || "
                f"!(self.model.task in {_cel_list(UNLABELLED_TASKS)})"
            ),
            message=(
                "data.labelColumn is not read by masked-lm or text-generation, which learn "
                "from text (a response is the label of its prompt)"
            ),
            check=lambda s: (
                s.data.label_column == COLUMN_DEFAULTS["labelColumn"]
                or s.model.task not in UNLABELLED_TASKS
            ),
            field_path=".data.labelColumn",
        ),
        CelRule(
            rule=f"!has(self.storage) || {_ANY_S3_CEL}",
            message=(
                "storage holds credentials for s3:// URIs, and no URI of this training is "
                "s3:// (data.train, data.validation, model.init, output): remove storage, "
                "or it would be ignored"
            ),
            check=lambda s: s.storage is None or _any_s3(s),
            field_path=".storage",
        ),
        CelRule(
            rule=(
                "!has(self.parallelism) || !has(self.parallelism.strategy) || "
                "self.parallelism.strategy == 'ddp' || "
                f"(self.model.architecture in {_cel_list(HF_ARCHITECTURES)} && "
                "self.model.task == 'text-generation')"
            ),
            message=(
                "parallelism.strategy fsdp is for text-generation (llama and huggingface "
                "decoders); classifiers fit one GPU and train with ddp"
            ),
            check=lambda s: (
                s.parallelism.strategy == "ddp"
                or (s.model.architecture in HF_ARCHITECTURES and s.model.task == "text-generation")
            ),
            field_path=".parallelism.strategy",
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
    parallelism: Parallelism = Field(default_factory=Parallelism)
    """How the processes share the model: ddp (default) or fsdp."""
    tuning: Tuning | None = None
    """Optional hyperparameter search; each trial is its own job."""
    max_restarts: int = Field(default=3, ge=0, le=100)
    """Times a job failed by the infrastructure is replaced; it resumes from its newest
    checkpoint. The next attempt starts 10 s after a failure, the wait doubling with each
    restart (at most 5 min). Configuration errors are never retried."""
    suspend: bool = False
    """Suspend the job (pods are removed; resuming continues from the newest checkpoint)."""
    storage: StorageSpec | None = None
    """Credentials for the s3:// URIs (data, model.init, output). Unset, the pods use the
    cluster's default Secret, if the operator has one."""


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
    tokens_per_second: float | None = None
    """Tokens read per second over all processes (language models; padding excluded)."""
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
    """Ready, Progressing, Failed, Suspended, Reconciling and Stalled conditions. The
    reason says where the run stands: Created, WaitingForPods, Unschedulable,
    ImagePullFailed, ContainerConfigError (a Secret or key the pods need is missing),
    QuotaExceeded, Training, Restarting, Suspended or (a search) Searching while it
    runs; Succeeded; Failed with ConfigError (the runtime refused the configuration),
    RestartsExhausted, OOMKilled, InvalidSpec (the operator judged the spec unrunnable
    before creating a pod; fix it and re-apply), ResultMissing (the Job completed
    without rank 0's result), TooManyFailedTrials or NoTrialSucceeded. A
    SpecChangeIgnored condition (reason ImmutableFieldChanged) says a running job keeps
    its spec."""
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
