"""Per-task loss: classification, or masked-language modelling; a causal language model's
batches (its loss is lm.loss.lm_loss_sum)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from modelplane_runtime.data.preprocessing import MASK_ID, PAD_ID

IGNORE = -100
MASK_FRACTION = 0.15
FIRST_ORDINARY_ID = 5  # after the five special tokens


def mask_tokens(
    ids: torch.Tensor, *, vocab_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: 15% of real tokens are targets; of those 80% [MASK], 10% random, 10%
    kept. Returns (inputs [N, L], targets [N, L] with IGNORE where there is no target)."""
    real = ids >= FIRST_ORDINARY_ID
    chosen = (torch.rand(ids.shape, generator=generator) < MASK_FRACTION) & real
    targets = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (roll < 0.8)] = MASK_ID
    random_ids = torch.randint(FIRST_ORDINARY_ID, vocab_size, ids.shape, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_ids[swap]
    inputs[ids == PAD_ID] = PAD_ID
    return inputs, targets


def task_loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    masked_lm: bool,
    vocab_size: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, logits, targets) for one batch."""
    if masked_lm:
        if generator is None:
            raise ValueError("masked-LM needs a generator for its masks")
        masked, targets = mask_tokens(inputs.cpu(), vocab_size=vocab_size, generator=generator)
        masked, targets = masked.to(inputs.device), targets.to(inputs.device)
        logits = model(masked)  # [N, L, V]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
        return loss, logits, targets
    logits = model(inputs)  # [N, C]
    return F.cross_entropy(logits.float(), labels), logits, labels


def lm_batch(
    tensors: tuple[torch.Tensor, ...], indices: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A causal language model's micro-batch (input_ids, labels, attention_mask), each
    [N, W] on `device`: the rows of `indices` cut to the longest one's width W (rows are
    right-padded to the longest row of the whole set)."""
    input_ids, labels, mask = (t[indices] for t in tensors)
    width = max(2, int(mask.sum(dim=1).max()))
    return (
        input_ids[:, :width].to(device),
        labels[:, :width].to(device),
        mask[:, :width].to(device),
    )


def supervised_tokens(labels: torch.Tensor) -> int:
    """The tokens a causal LM's batch learns from: position t predicts token t + 1, so
    the first label never counts."""
    return int((labels[:, 1:] != IGNORE).sum())
