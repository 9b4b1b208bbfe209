"""Validation metrics: from torchmetrics for the classifiers and masked-LM (rank 0 alone),
from exact sums over every rank's share of the data for a causal language model."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
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
TEXT_GENERATION_DEFAULT = ("perplexity", "tokenAccuracy")
EVAL_SEED = 20_240_601  # fixed masks: the same model always gets the same perplexity


def default_metrics(task: str) -> tuple[str, ...]:
    if task == "text-generation":
        return TEXT_GENERATION_DEFAULT
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


def check_lm_metrics(metrics: tuple[str, ...]) -> None:
    """A ConfigError for a metric a language model does not report."""
    unknown = [m for m in metrics if m not in (*TEXT_GENERATION_DEFAULT, "loss")]
    if unknown:
        raise ConfigError(
            f"evaluation.metrics: {', '.join(map(repr, unknown))} is not a text-generation "
            f"metric; use {' or '.join(TEXT_GENERATION_DEFAULT)}"
        )


@torch.no_grad()
def evaluate_lm_sharded(
    model: nn.Module,
    data: TensorDataset,
    *,
    metrics: tuple[str, ...],
    rank: int,
    world_size: int,
    device: torch.device,
    batch_size: int = 16,
    autocast: Any = None,
) -> dict[str, float]:
    """A causal language model's metrics ("loss" always) over all of `data`; every rank
    calls it and gets the same numbers.

    Rank r evaluates rows r, r + W, r + 2W, ... and the sums (negative log-likelihood,
    supervised tokens, correct argmax tokens) are added up over the ranks, so the result
    is exact and each rank does 1/W of the work. Under FSDP each forward pass is a
    collective (parameters are gathered from the shards), so every rank runs the same
    number of them: a rank out of rows runs one on a row whose labels are all ignored."""
    from modelplane_runtime.lm.loss import (  # noqa: PLC0415 (transformers: LM runs only)
        lm_loss_sum,
        metrics_from_sums,
        trim,
    )

    tensors = data.tensors
    rows = torch.arange(rank, len(tensors[0]), world_size)
    per_rank = -(-len(tensors[0]) // world_size)
    batches = max(1, -(-per_rank // batch_size))
    sums = torch.zeros(3, dtype=torch.float64)  # nll, supervised tokens, correct tokens
    was_training = model.training
    model.eval()
    try:
        for b in range(batches):
            chosen = rows[b * batch_size : (b + 1) * batch_size]
            batch = [t[chosen] if len(chosen) else t[:1] for t in tensors]
            if not len(chosen):
                batch[1] = torch.full_like(batch[1], IGNORE)  # forward pass only
            input_ids, labels, mask = (t.to(device) for t in trim(batch))
            with autocast() if autocast else torch.autocast("cpu", enabled=False):
                nll, count, logits, targets = lm_loss_sum(model, input_ids, labels, mask)
            correct = ((logits.argmax(dim=-1) == targets) & (targets != IGNORE)).sum()
            sums += torch.stack([nll.double(), count.double(), correct.double()]).cpu()
    finally:
        model.train(was_training)
    if world_size > 1:
        on_device = sums.to(device)  # NCCL reduces GPU tensors only
        dist.all_reduce(on_device)
        sums = on_device.cpu()
    nll_total, tokens, right = (float(x) for x in sums)
    if tokens == 0:
        raise ConfigError(
            "data.validation: no token to evaluate (every validation example's labels are "
            "masked); give the validation records a response or text"
        )
    results = metrics_from_sums(nll_total, int(tokens), int(right))
    return {name: results[name] for name in (*metrics, "loss")}
