"""Adaptive sharpness-aware minimisation (ASAM; the optimiser of FT-SAM, Zhu et al., ICCV 2023).

SAM takes each gradient at the worst point of a neighbourhood of the weights, so that training settles in a
flat region. The adaptive form scales the neighbourhood by the weights themselves:
`e = rho * w^2 * g / ||w * g||`, which displaces large-norm weights most, and large-norm neurons are where
backdoors tend to live. One SAM step costs two forward/backward passes: the gradient `g` at `w`, then the
gradient at `w + e`, which the base optimiser applies at `w`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Keeps the perturbation finite when every gradient is zero.
EPS = 1e-12


class AdaptiveSAM:
    """The ascent half of one SAM step over `params`; the base optimiser does the descent."""

    def __init__(self, params: Sequence[torch.nn.Parameter], rho: float) -> None:
        self.params, self.rho = list(params), float(rho)
        self._offsets: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    @torch.no_grad()
    def ascend(self, grad_scale: float = 1.0) -> bool:
        """Move every parameter with a gradient to `w + e` and clear the gradients; False (and no move)
        when the gradients are not finite. `grad_scale` undoes an AMP loss scale."""
        with_grad = [(p, p.grad) for p in self.params if p.grad is not None]
        scaled = [p.abs() * grad.float() / grad_scale for p, grad in with_grad]
        if not scaled:
            return False
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in scaled]))
        if not bool(torch.isfinite(norm)):
            for p, _ in with_grad:
                p.grad = None
            return False
        factor = self.rho / (norm + EPS)
        self._offsets = []
        for (p, _), t in zip(with_grad, scaled, strict=True):
            offset = (p.abs() * t * factor).to(p.dtype)
            p.add_(offset)
            self._offsets.append((p, offset))
            p.grad = None
        return True

    @torch.no_grad()
    def descend_from_original(self) -> None:
        """Put the parameters back at `w`, keeping the gradients taken at `w + e`."""
        for p, offset in self._offsets:
            p.sub_(offset)
        self._offsets = []
