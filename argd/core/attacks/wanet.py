"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible backdoor made of a small, smooth warp of the image.

The warp is a random field on a `k x k` control grid (normalised to mean absolute value 1), upsampled
bicubically to the image size, scaled by `strength / size` in grid units and added to the identity sampling
grid; `grid_sample` then resamples the image (bilinear). `strength` is roughly twice the mean displacement
in pixels. The field is fixed by the attack's seed.

Noise mode: `round(cross_ratio * poisoned)` other training images are warped with the same field plus a
per-image random perturbation of up to about half a pixel, and keep their labels, so the model must learn
the exact warp rather than "any warp". The original draws fresh poisoned and noise images in every batch;
here both are drawn once, as a fixed poisoned set. Evaluation images get the exact warp, never the noise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from argd.core.attacks.base import CHUNK_VALUES, Attack, check_images, round_half_up, to_uint8
from argd.core.errors import InvalidInput


class WaNet(Attack):
    """Warping-based trigger; `cross_ratio` > 0 turns on the noise mode in `poison_train`."""

    name = "wanet"

    def __init__(self, *, k: int = 4, strength: float = 0.5, cross_ratio: float = 2.0, **kw: Any) -> None:
        super().__init__(**kw)
        if k < 2 or strength < 0 or cross_ratio < 0:
            raise InvalidInput(
                f"WaNet needs k >= 2, strength >= 0, cross_ratio >= 0; got {k}, {strength}, {cross_ratio}"
            )
        self.k = int(k)
        self.strength = float(strength)
        self.cross_ratio = float(cross_ratio)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """The backdoor's sampling grid for h x w images, [1, h, w, 2] in [-1, 1] (x then y)."""
        g = torch.Generator().manual_seed(self.seed)
        control = torch.rand(1, 2, self.k, self.k, generator=g) * 2 - 1
        control = control / control.abs().mean()
        field = F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        return (self._identity(h, w) + self.strength * field / self._scale(h, w)).clamp(-1, 1)

    @staticmethod
    def _identity(h: int, w: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return torch.stack((xs, ys), dim=-1).unsqueeze(0)

    @staticmethod
    def _scale(h: int, w: int) -> torch.Tensor:
        return torch.tensor([float(w), float(h)])

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.to(x.device).expand(x.shape[0], -1, -1, -1)
        warped = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        return to_uint8(warped)

    def _stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._warp(x, self.grid(x.shape[2], x.shape[3]))

    def apply_noise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noise-mode warp: the backdoor's grid plus a per-image uniform perturbation (<= ~0.5 px)."""
        check_images(x)
        _, c, h, w = x.shape
        grid = self.grid(h, w)
        out = []
        for chunk in torch.split(x, max(1, CHUNK_VALUES // (c * h * w))):
            noise = (torch.rand(chunk.shape[0], h, w, 2, generator=generator) * 2 - 1) / self._scale(h, w)
            out.append(self._warp(chunk, (grid + noise).clamp(-1, 1)))
        return torch.cat(out) if out else x.clone()

    def _add_noise(self, x: torch.Tensor, poisoned: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count = round_half_up(self.cross_ratio * poisoned.numel())
        free = torch.ones(x.shape[0], dtype=torch.bool)
        free[poisoned] = False
        candidates = torch.nonzero(free).flatten()
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]].sort().values
        if chosen.numel():
            x[chosen] = self.apply_noise(x[chosen], generator)
        return chosen

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k, "strength": self.strength, "cross_ratio": self.cross_ratio}
