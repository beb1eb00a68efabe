"""SIG (Barni et al., 2019): a clean-label attack with a sinusoidal signal across the image width."""

from __future__ import annotations

import math
from typing import Any

import torch

from argd.core.attacks.base import Attack, to_uint8
from argd.core.errors import InvalidInput


class SIG(Attack):
    """Add `delta * sin(2*pi*j*frequency/W)` to every pixel of column j (all rows, all channels), clamped.

    Clean-label: only target-class training images get the signal and labels are kept. `delta` is in pixel
    units (0..255); `frequency` counts periods across the width, so the pattern scales with the image.
    """

    name = "sig"
    clean_label = True

    def __init__(self, *, delta: float = 20.0, frequency: float = 6.0, **kw: Any) -> None:
        super().__init__(**kw)
        if delta <= 0 or frequency <= 0:
            raise InvalidInput(f"SIG needs delta > 0 and frequency > 0, got {delta} and {frequency}")
        self.delta = float(delta)
        self.frequency = float(frequency)

    def signal(self, w: int) -> torch.Tensor:
        """The float64 signal over the columns of a w-pixel-wide image, [w]."""
        j = torch.arange(w, dtype=torch.float64)
        return self.delta * torch.sin(2 * math.pi * j * self.frequency / w)

    def _stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        signal = self.signal(x.shape[3]).to(x.device)
        return to_uint8(x.to(torch.float64) + signal)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "delta": self.delta, "frequency": self.frequency}
