"""A Transformer encoder over token ids, shared by the classifier and BERT."""

from __future__ import annotations

import torch
from torch import nn

from modelplane_runtime.data.preprocessing import PAD_ID


class TokenEncoder(nn.Module):
    """Token + learned position embeddings, then pre-norm Transformer layers."""

    def __init__(
        self,
        *,
        vocab_size: int,
        max_length: int,
        hidden: int,
        layers: int,
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, hidden, padding_idx=PAD_ID)
        self.positions = nn.Embedding(max_length, hidden)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=hidden,
            nhead=heads,
            dim_feedforward=4 * hidden,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [N, L] -> (hidden states [N, L, H], padding mask [N, L], True at padding)."""
        padding = ids == PAD_ID
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.tokens(ids) + self.positions(positions))  # [N, L, H]
        x = self.layers(x, src_key_padding_mask=padding)  # [N, L, H]
        return self.norm(x), padding
