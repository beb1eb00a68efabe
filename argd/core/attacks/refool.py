"""Refool (Liu et al., 2020): a clean-label attack that blends a reflection of another image into the image.

Each poisoned image gets a reflection layer made from a different image of the dataset, in one of the two
kinds the paper models: a ghost (the reflection plus a shifted, attenuated copy of it) or an out-of-focus
layer (the reflection under a Gaussian blur). Kinds, shifts, blur widths and blend weights are drawn per image
from seeded generators. Both kinds are one per-image kernel, so a whole batch is reflected by one grouped
`conv2d`. Only target-class training images are poisoned, labels kept.

Reflections come from a pool: `set_reflections(images)`, else (rebuilt by every `poison_train`) up to
`pool_size` non-target images of the training set chosen with the attack's seed; evaluation images draw
from the same pool. `apply` before any pool draws each image's reflection from ANOTHER image of its batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from argd.core.attacks.base import Attack, check_images, round_half_up, to_uint8
from argd.core.data import ImageData
from argd.core.errors import InvalidInput


class Refool(Attack):
    """Reflection blending: `(1 - beta) * x + beta * (kernel * reflection)`, kernel = ghost or blur.

    Lengths (`shift`, `sigma`) are in pixels of a 32-pixel image and scale with the image.
    """

    name = "refool"
    clean_label = True

    def __init__(
        self,
        *,
        ghost_rate: float = 0.5,
        beta: tuple[float, float] = (0.2, 0.4),
        shift: tuple[int, int] = (3, 8),
        ghost_attenuation: tuple[float, float] = (0.5, 1.0),
        sigma: tuple[float, float] = (1.0, 2.5),
        pool_size: int = 256,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        checks = {
            "ghost_rate": 0 <= ghost_rate <= 1,
            "beta": 0 < beta[0] <= beta[1] < 1,
            "shift": 1 <= shift[0] <= shift[1],
            "ghost_attenuation": 0 < ghost_attenuation[0] <= ghost_attenuation[1] <= 1,
            "sigma": 0 < sigma[0] <= sigma[1],
            "pool_size": pool_size >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InvalidInput(f"Refool parameters out of range: {', '.join(bad)}")
        self.ghost_rate = float(ghost_rate)
        self.beta = (float(beta[0]), float(beta[1]))
        self.shift = (int(shift[0]), int(shift[1]))
        self.ghost_attenuation = (float(ghost_attenuation[0]), float(ghost_attenuation[1]))
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.pool_size = int(pool_size)
        #: uint8 [P, C, H, W] images reflections are drawn from; None: draw from the batch itself.
        self.reflections: torch.Tensor | None = None
        self._user_pool = False

    def set_reflections(self, images: torch.Tensor) -> Refool:
        """Use these uint8 [P, C, H, W] images as the reflection pool from now on; returns self."""
        check_images(images, "reflections")
        if images.shape[0] == 0:
            raise InvalidInput("the reflection pool is empty")
        self.reflections = images.clone()
        self._user_pool = True
        return self

    def _prepare(self, data: ImageData, target: int, generator: torch.Generator) -> None:
        if self._user_pool:
            return
        others = torch.nonzero(data.y != target).flatten()
        if others.numel() == 0:
            raise InvalidInput(
                "Refool needs images of other classes than the target to draw reflections from"
            )
        g = torch.Generator().manual_seed(self.seed)
        pick = others[torch.randperm(others.numel(), generator=g)[: self.pool_size]]
        self.reflections = data.x[pick].clone()

    def kernels(
        self, n: int, h: int, w: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image reflection kernels [n, K, K] (each sums to 1) and which of them are ghosts [n] (bool)."""
        size = min(h, w)
        lo_shift = max(1, round_half_up(self.shift[0] * size / 32))
        hi_shift = max(lo_shift, min(round_half_up(self.shift[1] * size / 32), size // 2))
        lo_sigma, hi_sigma = (s * size / 32 for s in self.sigma)
        radius = max(hi_shift, math.ceil(3 * hi_sigma))
        k = 2 * radius + 1

        ghost = torch.rand(n, generator=generator) < self.ghost_rate
        sigma = lo_sigma + (hi_sigma - lo_sigma) * torch.rand(n, generator=generator)
        offsets = torch.randint(lo_shift, hi_shift + 1, (n, 2), generator=generator)
        signs = torch.randint(0, 2, (n, 2), generator=generator) * 2 - 1
        lo_att, hi_att = self.ghost_attenuation
        attenuation = lo_att + (hi_att - lo_att) * torch.rand(n, generator=generator)

        d = torch.arange(-radius, radius + 1, dtype=torch.float32)
        dist2 = d.view(1, -1, 1) ** 2 + d.view(1, 1, -1) ** 2
        gauss = torch.exp(-dist2 / (2 * sigma.view(-1, 1, 1) ** 2))
        gauss = gauss / gauss.sum(dim=(1, 2), keepdim=True)

        ghosts = torch.zeros(n, k * k)
        rows = torch.arange(n)
        ghosts[rows, radius * k + radius] = 1.0
        dy, dx = (offsets * signs + radius).unbind(1)
        ghosts[rows, dy * k + dx] = attenuation
        ghosts = (ghosts / (1 + attenuation).view(-1, 1)).view(n, k, k)
        return torch.where(ghost.view(-1, 1, 1), ghosts, gauss), ghost

    def _stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.reflections is not None:
            if self.reflections.shape[1:] != x.shape[1:]:
                raise InvalidInput(
                    f"reflection images are {tuple(self.reflections.shape[1:])}, "
                    f"the images {tuple(x.shape[1:])}"
                )
            source = torch.randint(0, self.reflections.shape[0], (n,), generator=generator)
            reflection = self.reflections[source].to(x.device).float()
        else:
            if n < 2:
                raise InvalidInput("Refool without a reflection pool needs at least 2 images per batch")
            source = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
            reflection = x[source.to(x.device)].float()

        kernel, _ = self.kernels(n, h, w, generator)
        radius = kernel.shape[-1] // 2
        weight = kernel.repeat_interleave(c, dim=0).unsqueeze(1).to(x.device)
        padded = F.pad(reflection.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
        layer = F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)

        beta = self.beta[0] + (self.beta[1] - self.beta[0]) * torch.rand(n, generator=generator)
        beta = beta.view(-1, 1, 1, 1).to(x.device)
        return to_uint8((1 - beta) * x.float() + beta * layer)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "ghost_rate": self.ghost_rate,
            "beta": list(self.beta),
            "shift": list(self.shift),
            "ghost_attenuation": list(self.ghost_attenuation),
            "sigma": list(self.sigma),
            "pool_size": self.pool_size,
        }
