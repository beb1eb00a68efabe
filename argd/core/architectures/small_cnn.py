"""A tiny three-stage CNN for tests and quick demos (seconds per epoch on a CPU).

Stages `stage1` (full resolution), `stage2` (1/2) and `stage3` (1/4) are its three attention levels.
"""

from __future__ import annotations

import torch
from torch import nn


def _stage(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stage1 = _stage(in_channels, width, 1)
        self.stage2 = _stage(width, 2 * width, 2)
        self.stage3 = _stage(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        logits: torch.Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return logits


def build_small_cnn(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> SmallCNN:
    """Registry builder; `width` is the channel count of the first stage (then x2, x4)."""
    del image_size
    if not 1 <= width <= 256:
        raise ValueError(f"width must be in [1, 256], got {width}")
    return SmallCNN(num_classes, in_channels, width)
