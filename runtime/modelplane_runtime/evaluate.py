"""Validation metrics from torchmetrics, per task."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.text import Perplexity

from modelplane_runtime.errors import ConfigError
from modelplane_runtime.train.tasks import IGNORE, task_loss

CLASSIFICATION_DEFAULT = ("accuracy", "f1", "precision", "recall")
MASKED_LM_DEFAULT = ("perplexity",)
EVAL_SEED = 20_240_601  # fixed masks: the same model always gets the same perplexity


def default_metrics(task: str) -> tuple[str, ...]:
    return MASKED_LM_DEFAULT if task == "masked-lm" else CLASSIFICATION_DEFAULT


def _metric(name: str, num_classes: int) -> Metric:
    # Only rank 0 evaluates: a metric that tried to gather from the other ranks at
    # compute() would wait for them forever.
    local: dict[str, Any] = {"sync_on_compute": False}
    if name == "accuracy":
        return MulticlassAccuracy(num_classes=num_classes, average="micro", **local)
    if name == "f1":
        return MulticlassF1Score(num_classes=num_classes, average="macro", **local)
    if name == "precision":
        return MulticlassPrecision(num_classes=num_classes, average="macro", **local)
    if name == "recall":
        return MulticlassRecall(num_classes=num_classes, average="macro", **local)
    if name == "top5Accuracy":
        if num_classes < 5:
            raise ConfigError(f"top5Accuracy needs at least 5 classes, the data has {num_classes}")
        return MulticlassAccuracy(num_classes=num_classes, average="micro", top_k=5, **local)
    if name == "perplexity":
        return Perplexity(ignore_index=IGNORE, **local)
    raise ConfigError(f"evaluation.metrics: unknown metric {name!r}")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TensorDataset,
    *,
    task: str,
    metrics: tuple[str, ...],
    num_classes: int,
    vocab_size: int,
    device: torch.device,
    batch_size: int = 256,
    autocast: Any = None,
) -> dict[str, float]:
    """Every requested metric plus the validation loss ("loss"), over all of `data`."""
    masked_lm = task == "masked-lm"
    names = metrics or default_metrics(task)
    meters = {name: _metric(name, num_classes).to(device) for name in names}
    generator = torch.Generator().manual_seed(EVAL_SEED) if masked_lm else None
    was_training = model.training
    model.eval()
    inputs_all, labels_all = data.tensors
    total_loss, batches = 0.0, 0
    try:
        for start in range(0, len(inputs_all), batch_size):
            inputs = inputs_all[start : start + batch_size].to(device)
            labels = labels_all[start : start + batch_size].to(device)
            with autocast() if autocast else torch.autocast("cpu", enabled=False):
                loss, logits, targets = task_loss(
                    model,
                    inputs,
                    labels,
                    masked_lm=masked_lm,
                    vocab_size=vocab_size,
                    generator=generator,
                )
            total_loss += float(loss)
            batches += 1
            for meter in meters.values():
                meter.update(logits.float(), targets)
    finally:
        model.train(was_training)
    results = {name: float(meter.compute()) for name, meter in meters.items()}
    results["loss"] = total_loss / max(1, batches)
    return results
