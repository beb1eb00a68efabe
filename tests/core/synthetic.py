"""Tiny synthetic images and a tiny CNN spec for the engine's training tests (trainer, pipeline).

Four classes a small CNN learns in a few epochs on one CPU thread, with the bottom-right corner left free
for a BadNets-style trigger, so backdoor and resume tests need neither real data nor a real model.
"""

from __future__ import annotations

import torch
from torch import nn

from argd.core.data import ImageData
from argd.core.spec import ModelSpec

CHECKERBOARD = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)


def tiny_spec(width: int) -> ModelSpec:
    """A one-channel 16-pixel small-cnn of four classes; `width` sets its channel count."""
    return ModelSpec(
        architecture="small-cnn",
        num_classes=4,
        in_channels=1,
        image_size=16,
        mean=[0.3],
        std=[0.3],
        arch_kwargs={"width": width},
    )


def bar_images(count: int, seed: int) -> ImageData:
    """Four classes of noisy 16x16 images, told apart by the orientation of a bright bar (-, |, \\, /).

    Orientation, not position, tells the classes apart, so a translation-invariant CNN trained with random
    crops learns them; the bottom-right corner (rows/cols 12-15) is left to the trigger.
    """
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % 4
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    inside = (rows >= 1) & (rows < 12) & (cols >= 1) & (cols < 12)
    bars = torch.stack(
        [
            (rows - 6).abs() <= 1,
            (cols - 6).abs() <= 1,
            (rows - cols).abs() <= 1,
            (rows + cols - 12).abs() <= 1,
        ]
    )
    x = torch.rand(count, 1, 16, 16, generator=generator) * 0.3 + 0.6 * (bars[y] & inside).unsqueeze(1)
    return ImageData((x.clamp(0, 1) * 255).to(torch.uint8), y)


def stamp(data: ImageData) -> ImageData:
    """Plant the 3x3 black-and-white checkerboard trigger near the bottom-right corner; labels unchanged."""
    x = data.x.clone()
    x[:, :, -4:-1, -4:-1] = CHECKERBOARD
    return ImageData(x, data.y.clone())


State = nn.Module | dict[str, torch.Tensor]


def states_equal(a: State, b: State) -> bool:
    """Two models (or state dicts) with the same keys and bit-identical tensors, buffers included."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
