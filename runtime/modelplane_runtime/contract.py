"""The contract between the operator and the runtime: torch-free, versioned.

These models are the only coupling between the two sides. The operator writes a
`RunConfig` into a ConfigMap (or local mode writes it to a file), the runtime reads it,
trains, and reports a `TrainingResult` through the pod's termination message and a file
beside the artifact. `ServeArgs` is the serving application's typed argument. Both sides
round-trip them in tests; a change that breaks an older reader bumps `CONTRACT_VERSION`.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CONTRACT_VERSION = 1

# The termination message Kubernetes keeps is at most 4096 bytes.
TERMINATION_MESSAGE_LIMIT = 4096


class ExitCode(IntEnum):
    """How a runtime process ends. The operator's pod failure policy reads these."""

    OK = 0
    """The job finished."""
    INFRASTRUCTURE = 1
    """Something outside the configuration failed (a lost peer, a full disk, an OOM):
    worth a retry from the newest checkpoint."""
    CONFIG_ERROR = 42
    """The configuration or the data is wrong: never worth a retry."""


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Contract):
    """Where the data is and how to read it."""

    train_uri: str
    validation_uri: str | None = None
    validation_split: float | None = None
    text_column: str = "text"
    label_column: str = "label"


class OptimConfig(_Contract):
    """Optimiser and schedule; mirrors spec.hyperparameters."""

    epochs: int = 3
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
    architecture: Literal["transformer", "bert", "resnet", "mlp"]
    task: Literal[
        "text-classification", "masked-lm", "image-classification", "tabular-classification"
    ]
    params: dict[str, int | float] = Field(default_factory=dict)
    init_uri: str | None = None
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint_every_steps: int = 500
    checkpoint_keep: int = 3
    output_uri: str
    metrics: tuple[str, ...] = ()
    progress_port: int = 8080

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

    def to_termination_message(self) -> str:
        """Compact JSON, refused when it would not fit the termination message."""
        text = json.dumps(self.model_dump(mode="json"), separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            raise ValueError(
                f"training result is {len(text.encode())} bytes, more than the "
                f"{TERMINATION_MESSAGE_LIMIT} a termination message holds"
            )
        return text


class ServeArgs(_Contract):
    """Arguments of the serving application (the Serve config's `args`)."""

    version: Literal[1] = 1
    model_name: str = Field(min_length=1)
    model_uri: str
    expected_digest: str | None = None
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    max_ongoing_requests: int = 64
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    quantization: Literal["none", "int8"] = "none"
    compile: bool = False
