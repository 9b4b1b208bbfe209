"""Multi-layer perceptron for tables (or flattened small images)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(
        self, *, inputs: int, num_classes: int, hidden: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = inputs
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, F] (or [N, C, H, W], flattened) -> class logits [N, K]."""
        return self.head(self.body(x.flatten(1)))  # type: ignore[no-any-return]
