"""Transformer encoder classifier: mean of the non-padding token states, then a linear."""

from __future__ import annotations

import torch
from torch import nn

from modelplane_runtime.models.encoder import TokenEncoder


class TransformerClassifier(nn.Module):
    def __init__(
        self,
        *,
        vocab_size: int,
        max_length: int,
        num_classes: int,
        hidden: int,
        layers: int,
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.encoder = TokenEncoder(
            vocab_size=vocab_size,
            max_length=max_length,
            hidden=hidden,
            layers=layers,
            heads=heads,
            dropout=dropout,
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, L] -> class logits [N, C]."""
        states, padding = self.encoder(ids)  # [N, L, H], [N, L]
        keep = (~padding).unsqueeze(-1).to(states.dtype)  # [N, L, 1]
        pooled = (states * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # [N, H]
        return self.head(pooled)  # type: ignore[no-any-return]
