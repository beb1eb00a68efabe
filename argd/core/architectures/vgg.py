"""VGG-11/16 with batch norm, in torchvision's key layout (`features.N`, `classifier.0/3/6`).

Max-pools that would shrink a map below 1x1 (small images) are replaced by identities at the same index, so
the parameter indices, and therefore the key names, never move. `small_input=True` (default for images of at
most 64 px) pools the last map to 1x1 and uses a compact classifier of width `hidden` (default 512), the
common head for 32 px images; `small_input=False` keeps torchvision's 7x7 pool and 4096-wide head.
"""

from __future__ import annotations

import torch
from torch import nn

from argd.core.architectures.weight_init import init_weights

_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(
        self, features: nn.Sequential, num_classes: int, pool: int, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(
            nn.Linear(512 * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


def _make_features(config: list[int | str], in_channels: int, image_size: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    size = image_size
    for item in config:
        if item == "M":
            # A 2x2 pool on a 1x1 map would fail; an identity keeps the index of every later layer.
            if size >= 2:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            else:
                layers.append(nn.Identity())
        else:
            assert isinstance(item, int)
            layers += [
                nn.Conv2d(channels, item, kernel_size=3, padding=1),
                nn.BatchNorm2d(item),
                nn.ReLU(True),
            ]
            channels = item
    return nn.Sequential(*layers)


def build_vgg(
    depth: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    small_input: bool | None = None,
    hidden: int | None = None,
    dropout: float = 0.5,
) -> VGG:
    """Registry builder for VGG-`depth` with batch norm."""
    if small_input is None:
        small_input = image_size <= 64
    if hidden is None:
        hidden = 512 if small_input else 4096
    if not 1 <= hidden <= 16384:
        raise ValueError(f"hidden must be in [1, 16384], got {hidden}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    features = _make_features(_CONFIGS[depth], in_channels, image_size)
    return VGG(features, num_classes, pool=1 if small_input else 7, hidden=hidden, dropout=dropout)
