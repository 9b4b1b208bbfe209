"""The next-token loss, and the evaluation metrics of a language model.

Metrics are plain sums over the supervised tokens (labels != -100), not torchmetrics:
perplexity = exp(total negative log-likelihood / tokens) and tokenAccuracy =
argmax-correct / tokens are exact over the whole set whatever the batch size, and the
sums add up across ranks with one all-reduce when a caller needs that.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

IGNORE = -100


def lm_loss_sum(
    model: Any, input_ids: Tensor, labels: Tensor, attention_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(sum of the token NLLs in fp32, number of supervised tokens, logits [N, L-1, V],
    targets [N, L-1]): position t predicts token t+1. The caller divides by the global
    token count, so every token weighs the same whatever batch or rank it is in."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [N, L, V]
    logits = logits[:, :-1, :]  # [N, L-1, V]
    targets = labels[:, 1:]  # [N, L-1]
    nll = functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return nll, (targets != IGNORE).sum(), logits, targets


def trim(batch: list[Tensor]) -> list[Tensor]:
    """The batch cut to its longest row (rows are right-padded for the whole set)."""
    width = int(batch[2].sum(dim=1).max().item())
    return [t[:, : max(width, 2)] for t in batch]


@torch.no_grad()
def evaluate_lm(
    model: Any,
    data: TensorDataset,
    *,
    batch_size: int,
    device: torch.device | str,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> dict[str, float]:
    """{"loss", "perplexity", "tokenAccuracy"} over every supervised token of `data`.

    Under FSDP every rank must call this with the same data (each forward pass is a
    collective); they all get the same numbers."""
    was_training = model.training
    model.eval()
    nll_total = torch.zeros((), dtype=torch.float64)
    tokens = torch.zeros((), dtype=torch.long)
    correct = torch.zeros((), dtype=torch.long)
    try:
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            input_ids, labels, mask = (t.to(device) for t in trim(list(batch)))
            with autocast() if autocast is not None else contextlib.nullcontext():
                nll, count, logits, targets = lm_loss_sum(model, input_ids, labels, mask)
            supervised = targets != IGNORE
            nll_total += nll.double().cpu()
            tokens += count.cpu()
            correct += ((logits.argmax(dim=-1) == targets) & supervised).sum().cpu()
    finally:
        model.train(was_training)
    return metrics_from_sums(float(nll_total), int(tokens), int(correct))


def metrics_from_sums(nll: float, tokens: int, correct: int) -> dict[str, float]:
    """The metrics from their sums (all ranks' sums, when a caller adds them up)."""
    if tokens == 0:
        raise ValueError("no supervised tokens to evaluate")
    loss = nll / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokenAccuracy": correct / tokens,
    }
