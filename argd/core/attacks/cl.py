"""CL, the label-consistent attack (Turner et al., 2019): clean-label, made hard by PGD, four corner triggers.

Only target-class training images are poisoned and every label is kept. Each one is first pushed away from
its own class by an untargeted L-inf PGD perturbation computed on a clean model (so the model cannot fit it
from its content and leans on the trigger), then stamped with the 3x3 checkerboard in all four corners.
Without a fitted model the PGD step is skipped (the attack is then a plain clean-label corner patch, much
weaker; a warning is logged). Evaluation images get the corner triggers only.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from argd.core.attacks.base import (
    Normaliser,
    PatchAttack,
    checkerboard,
    make_normaliser,
    model_device,
    to_uint8,
)
from argd.core.data import ImageData
from argd.core.errors import InvalidInput
from argd.core.spec import ModelSpec

log = logging.getLogger(__name__)

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


class CL(PatchAttack):
    """Clean-label: PGD (`eps`, `steps`, `step_size`: fractions of full scale), then corner patches."""

    name = "cl"
    clean_label = True
    needs_model = True

    def __init__(
        self,
        *,
        size: int = 3,
        margin: int = 1,
        eps: float = 16 / 255,
        steps: int = 10,
        step_size: float | None = None,
        batch_size: int = 256,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if not 0 <= eps <= 1 or steps < 0 or batch_size < 1:
            raise InvalidInput("CL needs eps in [0, 1], steps >= 0 and batch_size >= 1")
        self.size = size
        self.margin = margin
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / max(1, self.steps)
        self.batch_size = batch_size
        self.model: nn.Module | None = None
        self._normalise: Normaliser = make_normaliser()

    def fit(
        self,
        model: nn.Module,
        data: ImageData | None = None,
        *,
        spec: ModelSpec | None = None,
        normalise: Normaliser | None = None,
    ) -> CL:
        """Keep a reference to the clean `model` (input: `normalise(x)`, x in [0, 1]) for PGD; returns self.

        `data` is accepted for the same call shape as `Trojan.fit` and not used.
        """
        if data is not None and not isinstance(data, ImageData):
            raise InvalidInput(
                "CL.fit's second argument is the (unused) data set: pass normalise= by keyword"
            )
        self.model = model
        self._normalise = make_normaliser(spec, normalise)
        return self

    @torch.enable_grad()
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Untargeted L-inf PGD away from labels `y`, batched; uint8 in and out (a copy without a model).

        Every pixel stays within `round(eps * 255)` of the original.
        """
        if self.model is None:
            log.warning("CL: no clean model was fitted; the PGD perturbation is skipped")
            return x.clone()
        model = self.model
        device = model_device(model)
        was_training = model.training
        model.eval()
        out = []
        try:
            for xb, yb in zip(torch.split(x, self.batch_size), torch.split(y, self.batch_size), strict=True):
                clean = xb.to(device).float() / 255
                target = yb.to(device)
                delta = torch.zeros_like(clean, requires_grad=True)
                for _ in range(self.steps):
                    loss = F.cross_entropy(model(self._normalise((clean + delta).clamp(0, 1))), target)
                    (grad,) = torch.autograd.grad(loss, delta)
                    with torch.no_grad():
                        delta += self.step_size * grad.sign()
                        delta.clamp_(-self.eps, self.eps)
                        delta.copy_((clean + delta).clamp(0, 1) - clean)
                out.append(to_uint8((clean + delta.detach()) * 255).to(x.device))
        finally:
            model.train(was_training)
        return torch.cat(out)

    def _stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        out = x.clone()
        for corner in CORNERS:
            rows, cols = self.corner_box(h, w, self.size, self.margin, corner)
            pattern = checkerboard(rows.stop - rows.start, cols.stop - cols.start).to(torch.uint8)
            out[:, :, rows, cols] = pattern.to(x.device)
        return out

    def _poison_selected(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(self.perturb(x, y), generator)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "size": self.size,
            "margin": self.margin,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "pgd": self.model is not None,
        }
