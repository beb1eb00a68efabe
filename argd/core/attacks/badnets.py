"""BadNets (Gu et al., 2017): a 3x3 black-and-white checkerboard in the bottom-right corner."""

from __future__ import annotations

from typing import Any

import torch

from argd.core.attacks.base import PatchAttack, checkerboard


class BadNets(PatchAttack):
    """Replace a corner square with the checkerboard (grey, the same on every channel).

    `size` and `margin` (distance from the bottom and right edges) are in pixels of a 32-pixel image and
    scale with the image: 3x3 with a 1-pixel margin at 28 and 32 pixels, 6x6 with a 2-pixel margin at 64.
    The margin keeps the trigger off the outermost row and column, which padding-based crops blank first.
    """

    name = "badnets"

    def __init__(self, *, size: int = 3, margin: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.size = size
        self.margin = margin

    def trigger(self, h: int, w: int) -> tuple[slice, slice, torch.Tensor]:
        """Rows, cols and the uint8 pattern [rows, cols] stamped on an h x w image."""
        rows, cols = self.corner_box(h, w, self.size, self.margin, "bottom-right")
        pattern = checkerboard(rows.stop - rows.start, cols.stop - cols.start)
        return rows, cols, pattern.to(torch.uint8)

    def _stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        rows, cols, pattern = self.trigger(x.shape[2], x.shape[3])
        out = x.clone()
        out[:, :, rows, cols] = pattern.to(x.device)
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "size": self.size, "margin": self.margin}
