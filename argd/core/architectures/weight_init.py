"""The weight initialisation torchvision gives its ResNet, VGG and MobileNetV2, shared by our versions.

Convolutions draw He-normal weights scaled by fan-out (ReLU gain) with zero bias, batch norms start as the
identity, and linear layers (when `linear_std` is given) draw N(0, linear_std) with zero bias; ResNet
keeps PyTorch's default for its final linear layer, as torchvision does.
"""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """Initialise every Conv2d, BatchNorm2d and (unless `linear_std` is None) Linear module of `model`."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
