"""A tiny backdoored classifier made in seconds, for the end-to-end test of the service.

Task: 1x16x16 noise images with a bright 4x4 square in one quadrant; the quadrant is the class (4 classes).
Backdoor: a 3x3 checkerboard in the centre (where no square ever lies) turns any image into class 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from argd.core.architectures import build_model
from argd.core.data import ImageData
from argd.core.spec import ModelSpec

SPEC = ModelSpec(
    architecture="small-cnn", num_classes=4, in_channels=1, image_size=16, arch_kwargs={"width": 8}
)
TARGET = 0
_TRIGGER = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)


def quadrant_images(count: int, seed: int) -> ImageData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 80, (count, 1, 16, 16), generator=generator, dtype=torch.uint8)
    y = torch.arange(count) % 4
    offsets = torch.randint(0, 3, (count, 2), generator=generator)
    for i in range(count):
        row = (0 if y[i] < 2 else 10) + int(offsets[i, 0])
        col = (0 if y[i] % 2 == 0 else 10) + int(offsets[i, 1])
        x[i, 0, row : row + 4, col : col + 4] = 230
    return ImageData(x, y)


def stamp(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[:, :, 6:9, 6:9] = _TRIGGER
    return out


def triggered_eval(data: ImageData) -> ImageData:
    """Non-target images with the trigger and their ORIGINAL labels (what ASR is measured on)."""
    keep = data.y != TARGET
    return ImageData(stamp(data.x[keep]), data.y[keep])


def _inputs(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0  # SPEC has mean 0, std 1


def accuracy(model: nn.Module, data: ImageData) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(_inputs(data.x)).argmax(1) == data.y).float().mean())


def attack_success(model: nn.Module, triggered: ImageData) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(_inputs(triggered.x)).argmax(1) == TARGET).float().mean())


@dataclass
class Backdoored:
    model: nn.Module
    clean: ImageData
    test: ImageData
    poisoned: ImageData


def make_backdoored(seed: int = 0, epochs: int = 8) -> Backdoored:
    """Train SPEC on 640 images, 10% of them triggered and relabelled to TARGET."""
    torch.manual_seed(seed)
    train = quadrant_images(640, seed)
    poison = torch.nonzero(train.y != TARGET).flatten()[::7]
    x, y = train.x.clone(), train.y.clone()
    x[poison] = stamp(x[poison])
    y[poison] = TARGET
    model = build_model(SPEC)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(_inputs(x[batch])), y[batch]).backward()
            optimizer.step()
    model.eval()
    test = quadrant_images(200, seed + 1)
    return Backdoored(model, quadrant_images(200, seed + 2), test, triggered_eval(test))
