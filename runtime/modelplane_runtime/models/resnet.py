"""ResNet for small images: a 3x3 stem (no early down-sampling), three stages of basic
blocks with widths hidden, 2*hidden, 4*hidden, global average pooling."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, *, channels: int, num_classes: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU()
        )
        stages: list[nn.Module] = []
        width = hidden
        for stage, out_width in enumerate((hidden, 2 * hidden, 4 * hidden)):
            for block in range(layers):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(width, out_width, stride))
                width = out_width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] -> class logits [N, K]."""
        x = self.stages(self.stem(images))  # [N, 4*hidden, H/4, W/4]
        return self.head(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]
