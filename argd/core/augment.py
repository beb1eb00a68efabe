"""Batched on-device augmentation (random crop with padding, horizontal flip, Cutout) and normalisation.

The clean subset lives on the training device as uint8; each batch is augmented there in a handful of tensor
operations, with per-sample randomness drawn from one `torch.Generator` on the same device (so a run is
reproducible, the generator's state goes into checkpoints, and nothing waits for a host round trip). There is
no per-image Python anywhere.

Order, as in the reference pipeline: crop (zero padding, i.e. black borders) -> flip -> Cutout (a black
square, applied before normalisation because the reference code has no normalisation and zeroes raw pixels) ->
normalisation with the spec's mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from argd.core.spec import ModelSpec


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] images to float32 in [0, 1]."""
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {x.dtype}")
    return x.float().div_(255.0)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` on every side and cut a random H x W window per sample.

    The window of sample b starts at (dy_b, dx_b), uniform in [0, 2 * padding]; it is gathered with one
    advanced-indexing operation over the whole batch.
    """
    if padding <= 0:
        return x
    batch, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=x.device)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # [B, W]
    samples = torch.arange(batch, device=x.device)[:, None, None]
    # Advanced indices separated by a slice put their broadcast shape first: [B, H, W, C].
    window = padded[samples, :, rows[:, :, None], cols[:, None, :]]
    return window.permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each sample left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one `size` x `size` square per sample, centred uniformly in the image, clipped at its borders."""
    if size <= 0:
        return x
    batch, _, height, width = x.shape
    centre_y = torch.randint(0, height, (batch,), generator=generator, device=x.device)
    centre_x = torch.randint(0, width, (batch,), generator=generator, device=x.device)
    top, left = centre_y - size // 2, centre_x - size // 2
    ys = torch.arange(height, device=x.device)
    xs = torch.arange(width, device=x.device)
    inside_y = (ys >= top[:, None]) & (ys < top[:, None] + size)  # [B, H]
    inside_x = (xs >= left[:, None]) & (xs < left[:, None] + size)  # [B, W]
    hole = inside_y[:, None, :, None] & inside_x[:, None, None, :]  # [B, 1, H, W]
    return x.masked_fill(hole, 0.0)


class Normalizer:
    """uint8 or [0, 1] images -> `(x - mean) / std` with the spec's per-channel statistics, in one op."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
    ) -> None:
        mean_t = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / std_t
        self.scale_uint8 = self.scale / 255.0
        self.shift = -mean_t / std_t

    @classmethod
    def for_spec(cls, spec: ModelSpec, device: torch.device | str = "cpu") -> Normalizer:
        return cls(spec.channel_mean(), spec.channel_std(), device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return torch.addcmul(self.shift, x.float(), self.scale_uint8)
        return torch.addcmul(self.shift, x, self.scale)


@dataclass(frozen=True)
class Augmenter:
    """The training transform: crop, flip, Cutout, normalisation; `eval_transform` only normalises."""

    normalizer: Normalizer
    crop_padding: int = 0
    flip: bool = True
    cutout_size: int = 0
    channels_last: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a uint8 [B, C, H, W] batch (on the generator's device) into a normalised float batch."""
        out = to_float(x)
        out = random_crop(out, self.crop_padding, generator)
        if self.flip:
            out = random_flip(out, generator)
        out = cutout(out, self.cutout_size, generator)
        return self._layout(self.normalizer(out))

    def eval_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 batch without augmentation (validation and evaluation)."""
        return self._layout(self.normalizer(x))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
