"""Blend (Chen et al., 2017): the whole image blended with one fixed random pattern, `(1-a)*x + a*pattern`."""

from __future__ import annotations

from typing import Any

import torch

from argd.core.attacks.base import Attack, check_images, to_uint8
from argd.core.errors import InvalidInput


class Blend(Attack):
    """Blend every pixel with a fixed pattern (default alpha 0.2, as `0.8*x + 0.2*pattern`).

    The pattern is `pattern` if given (uint8 [C, H, W] or [1, H, W], a grey one replicated over channels),
    else uniform random noise drawn per channel from the attack's seed for the images' shape.
    """

    name = "blend"

    def __init__(self, *, alpha: float = 0.2, pattern: torch.Tensor | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        if not 0.0 < alpha <= 1.0:
            raise InvalidInput(f"alpha must be in (0, 1], got {alpha}")
        if pattern is not None:
            pattern = check_images(pattern.unsqueeze(0), "pattern")[0]
        self.alpha = float(alpha)
        self.pattern = pattern

    def pattern_for(self, c: int, h: int, w: int) -> torch.Tensor:
        """The uint8 pattern [c, h, w] blended into images of that shape."""
        if self.pattern is None:
            g = torch.Generator().manual_seed(self.seed)
            return torch.randint(0, 256, (c, h, w), generator=g, dtype=torch.uint8)
        pc, ph, pw = self.pattern.shape
        if (ph, pw) != (h, w) or pc not in (1, c):
            raise InvalidInput(f"the blend pattern is {pc}x{ph}x{pw}, the images {c}x{h}x{w}")
        return self.pattern.expand(c, h, w)

    def _stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pattern = self.pattern_for(*x.shape[1:]).to(x.device).float()
        return to_uint8((1 - self.alpha) * x.float() + self.alpha * pattern)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha, "custom_pattern": self.pattern is not None}
