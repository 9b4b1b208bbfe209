"""BERT-style encoder with a masked-LM head (pre-training) and a [CLS] classifier head.

Both heads sit on the same encoder, so a classifier can start from masked-LM weights:
the encoder's parameter names do not depend on the task.
"""

from __future__ import annotations

import torch
from torch import nn

from modelplane_runtime.models.encoder import TokenEncoder


class MaskedLMHead(nn.Module):
    def __init__(self, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(states))  # type: ignore[no-any-return]


class Bert(nn.Module):
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
        masked_lm: bool,
    ) -> None:
        super().__init__()
        self.masked_lm = masked_lm
        self.encoder = TokenEncoder(
            vocab_size=vocab_size,
            max_length=max_length,
            hidden=hidden,
            layers=layers,
            heads=heads,
            dropout=dropout,
        )
        self.head: nn.Module = (
            MaskedLMHead(hidden, vocab_size) if masked_lm else nn.Linear(hidden, num_classes)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, L] -> token logits [N, L, V] (masked-LM) or class logits [N, C]."""
        states, _ = self.encoder(ids)  # [N, L, H]
        if self.masked_lm:
            return self.head(states)  # type: ignore[no-any-return]
        return self.head(states[:, 0])  # type: ignore[no-any-return]  # the [CLS] position
