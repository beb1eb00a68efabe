"""MobileNetV2 in torchvision's key layout (`features.N.conv.M`, `features.0.0`, `features.18.0`,
`classifier.1`).

`small_input=True` (default for images of at most 64 px) makes the 3x3 stem stride 1 instead of 2; the
kernel shape, and thus the key layout, stays the same.
"""

from __future__ import annotations

import torch
from torch import nn

from argd.core.architectures.weight_init import init_weights

# expansion t, output channels c, repeats n, first stride s
_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts to a multiple of `divisor`, never going more than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU(nn.Sequential):
    """Conv (no bias), batch norm, ReLU6: indices 0, 1, 2 as in torchvision."""

    def __init__(
        self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ):
        super().__init__(
            nn.Conv2d(
                in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_planes * expand_ratio)
        self.use_res_connect = stride == 1 and in_planes == out_planes
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_planes, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_planes, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        result: torch.Tensor = x + out if self.use_res_connect else out
        return result


class MobileNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        small_input: bool = False,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        input_channel = _make_divisible(32 * width_mult)
        last_channel = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU(in_channels, input_channel, stride=1 if small_input else 2)]
        for t, c, n, s in _SETTINGS:
            output_channel = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        layers.append(ConvBNReLU(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channel, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


def build_mobilenet_v2(
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    small_input: bool | None = None,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> MobileNetV2:
    """Registry builder; `small_input` defaults to True for images of at most 64 px."""
    if small_input is None:
        small_input = image_size <= 64
    if not 0.1 <= width_mult <= 4.0:
        raise ValueError(f"width_mult must be in [0.1, 4], got {width_mult}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return MobileNetV2(num_classes, in_channels, small_input, width_mult, dropout)
