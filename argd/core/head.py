"""Feature-shift tuning's head term (FST; Min et al., NeurIPS 2023).

A backdoor lives in features that the compromised classifier head reads. Fine-tuning from that head keeps
the features where they are, so the backdoor survives; FST re-initialises the head, adds
`alpha * <W, W0>` (the inner product with the original head weight `W0`) to the loss, which pushes the new
head away from the compromised direction, and rescales `W` to `||W0||` after every step so the push cannot
be met by shrinking the head. The features have to shift to serve the new head, and the trigger's path
through them breaks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from argd.core.errors import InvalidModel


def find_head(model: nn.Module, name: str | None) -> nn.Linear:
    """The classifier head module `name` of `model`; a clear error when it is missing or not linear."""
    if not name:
        raise InvalidModel(
            "this architecture names no linear classifier head, so feature-shift tuning cannot run on it; "
            "use a teacher or method without the FST head (e.g. teacher 'finetune', student_head 'keep')"
        )
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Linear):
        found = "missing" if module is None else type(module).__name__
        raise InvalidModel(f"classifier head {name!r} must be an nn.Linear module, found {found}")
    return module


class ShiftedHead:
    """The FST head of one phase: remembers `W0`, re-initialises the head, gives the penalty, renormalises."""

    def __init__(self, head: nn.Linear, alpha: float, hinge: bool = False) -> None:
        self.head, self.alpha, self.hinge = head, float(alpha), hinge
        self.original = head.weight.detach().clone()
        self.norm = float(self.original.norm())

    def reinitialise(self, generator: torch.Generator) -> None:
        """Weight and bias drawn from U(-1/sqrt(d), 1/sqrt(d)) with `generator` (d: input features), then
        the weight rescaled to `||W0||`, as after every step."""
        bound = 1.0 / math.sqrt(self.head.in_features)
        with torch.no_grad():
            for tensor in self.head.parameters():  # the weight, and the bias where there is one
                values = torch.rand(tensor.shape, generator=generator, device=generator.device)
                tensor.copy_((values * 2 - 1) * bound)
        self.renormalise()

    def penalty(self) -> torch.Tensor:
        """`alpha * <W, W0>`: lowest when the head points away from the original one. With `hinge`, each
        class's row is pushed only until it is orthogonal to its original row (`alpha * sum_i max(<w_i,
        w0_i>, 0)`): the compromised direction is left, but the features need not be rebuilt for its
        opposite."""
        rows = (self.head.weight.float() * self.original.float()).sum(dim=1)
        if self.hinge:
            rows = rows.clamp(min=0)
        return self.alpha * rows.sum()

    def renormalise(self) -> None:
        """Rescale the head weight to the original norm."""
        with torch.no_grad():
            norm = self.head.weight.norm()
            if float(norm) > 0:
                self.head.weight.mul_(self.norm / norm)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"original": self.original.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.original = state["original"].to(self.head.weight.device)
        self.norm = float(self.original.norm())
