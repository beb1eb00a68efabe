"""PreAct-ResNet-18 in the key layout common in backdoor benchmarks.

Names: `conv1`, `layer1..layer4` of pre-activation blocks (`bn1`, `conv1`, `bn2`, `conv2`, and `shortcut.0`
when the shape changes), then `linear`. As in that layout there is no batch norm after the last stage: the
pooled output of `layer4` goes straight to `linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """Pre-activation basic block; the projection shortcut starts from the activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        result: torch.Tensor = out + shortcut
        return result


class PreActResNet(nn.Module):
    """3x3 stride-1 stem (made for small images), four stages of widths 64..512, adaptive pooling."""

    def __init__(self, num_blocks: list[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        widths = [64, 128, 256, 512]
        in_planes = 64
        for index, (width, count) in enumerate(zip(widths, num_blocks, strict=True)):
            blocks = []
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(PreActBlock(in_planes, width, stride))
                in_planes = width
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            out = getattr(self, name)(out)
        logits: torch.Tensor = self.linear(torch.flatten(self.avgpool(out), 1))
        return logits


def build_preact_resnet18(num_classes: int, in_channels: int, image_size: int) -> PreActResNet:
    """Registry builder; `image_size` is unused because pooling is adaptive."""
    del image_size
    return PreActResNet([2, 2, 2, 2], num_classes, in_channels)
