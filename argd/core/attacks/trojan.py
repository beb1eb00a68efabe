"""Trojan (TrojanNN, Liu et al., 2018): a small patch optimised to excite chosen neurons of a clean model.

The patch sits at rows/cols 25-27 of a 32-pixel image (scaled with the image) and is ADDED to the image,
then clamped. `fit` optimises its values by gradient ascent on the mean activation of the chosen neurons of
the clean model's penultimate layer (the input of its last `nn.Linear`). Without `fit` the patch is a
seeded uniform random one in [-255, 255]: still a fixed trigger, but not TrojanNN's (a warning is logged
the first time it is used).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from argd.core.attacks.base import (
    Normaliser,
    PatchAttack,
    make_normaliser,
    model_device,
    round_half_up,
    scaled,
    to_uint8,
)
from argd.core.data import ImageData
from argd.core.errors import InvalidInput, InvalidModel
from argd.core.spec import ModelSpec

log = logging.getLogger(__name__)


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last `nn.Linear` in registration order: its input is the penultimate layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidModel(
            "Trojan needs a model with an nn.Linear classifier head to find its penultimate layer"
        )
    return linears[-1]


class Trojan(PatchAttack):
    """Additive patch trigger; `fit(model, data)` makes it TrojanNN's neuron-exciting patch."""

    name = "trojan"
    needs_model = True

    def __init__(
        self,
        *,
        size: int = 3,
        offset: int = 25,
        neurons: Sequence[int] | None = None,
        num_neurons: int = 1,
        steps: int = 100,
        lr: float = 0.1,
        fit_images: int = 128,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if num_neurons < 1 or steps < 1 or fit_images < 1 or lr <= 0:
            raise InvalidInput("Trojan needs num_neurons, steps, fit_images >= 1 and lr > 0")
        self.size = size
        self.offset = offset
        self.neurons = list(neurons) if neurons is not None else None
        self.num_neurons = num_neurons
        self.steps = steps
        self.lr = lr
        self.fit_images = fit_images
        #: Fitted patch in [-1, 1] (fractions of full scale), [C, rows, cols]; None until `fit`.
        self.patch: torch.Tensor | None = None
        self._warned = False

    @property
    def fitted(self) -> bool:
        return self.patch is not None

    def box(self, h: int, w: int) -> tuple[slice, slice]:
        """Rows and cols of the patch on an h x w image (25-27 at 32 px)."""
        rows, cols = scaled(self.size, h, minimum=2), scaled(self.size, w, minimum=2)
        top = min(round_half_up(self.offset * h / 32), h - rows)
        left = min(round_half_up(self.offset * w / 32), w - cols)
        return slice(top, top + rows), slice(left, left + cols)

    def random_patch(self, c: int, h: int, w: int) -> torch.Tensor:
        """The seeded fallback patch in [-1, 1], [c, rows, cols]."""
        rows, cols = self.box(h, w)
        g = torch.Generator().manual_seed(self.seed)
        shape = (c, rows.stop - rows.start, cols.stop - cols.start)
        return torch.rand(shape, generator=g) * 2 - 1

    @torch.enable_grad()
    def fit(
        self,
        model: nn.Module,
        data: ImageData,
        *,
        spec: ModelSpec | None = None,
        normalise: Normaliser | None = None,
    ) -> Trojan:
        """Optimise the patch on `model` (clean) with up to `fit_images` images of `data`; returns self.

        The model takes `normalise(x)` for x in [0, 1] (from `spec`'s mean/std, or identity). The chosen
        neurons are `neurons` or the `num_neurons` penultimate units with the largest outgoing weights (L1),
        as TrojanNN picks the units most connected to the next layer. Runs on the model's device; the
        model's parameters and train/eval mode are left as they were.
        """
        if not isinstance(data, ImageData) or len(data) == 0:
            raise InvalidInput("Trojan.fit needs a non-empty ImageData")
        norm = make_normaliser(spec, normalise)
        head = last_linear(model)
        width = head.in_features
        if self.neurons is not None:
            bad = [n for n in self.neurons if not 0 <= n < width]
            if bad:
                raise InvalidInput(f"neurons {bad} are outside the penultimate layer's {width} units")
            neurons = torch.tensor(self.neurons)
        else:
            strength = head.weight.detach().abs().sum(dim=0)
            neurons = strength.topk(min(self.num_neurons, width)).indices.cpu()
        self.neurons = neurons.tolist()

        device = model_device(model)
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(len(data), generator=g)[: self.fit_images]
        x = data.x[pick].to(device).float() / 255
        _, c, h, w = x.shape
        rows, cols = self.box(h, w)
        init = self.random_patch(c, h, w).clamp(-0.99, 0.99)
        raw = torch.atanh(init).to(device).requires_grad_(True)
        optimiser = torch.optim.Adam([raw], lr=self.lr)

        captured: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        was_training = model.training
        model.eval()
        try:
            for _ in range(self.steps):
                captured.clear()
                patch = torch.tanh(raw)
                canvas = torch.zeros_like(x[:1])
                canvas[:, :, rows, cols] = patch
                model(norm((x + canvas).clamp(0, 1)))
                activation = captured[-1].flatten(1)[:, neurons.to(device)].mean()
                (grad,) = torch.autograd.grad(-activation, raw)
                optimiser.zero_grad(set_to_none=True)
                raw.grad = grad
                optimiser.step()
        finally:
            handle.remove()
            model.train(was_training)
        self.patch = torch.tanh(raw.detach()).cpu()
        return self

    def neuron_activation(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        spec: ModelSpec | None = None,
        normalise: Normaliser | None = None,
    ) -> torch.Tensor:
        """Mean activation of the chosen neurons on uint8 images `x` (for checking what `fit` achieved)."""
        if self.neurons is None:
            raise InvalidInput("no neurons chosen yet: call fit or pass neurons")
        norm = make_normaliser(spec, normalise)
        captured: list[torch.Tensor] = []
        handle = last_linear(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            with torch.no_grad():
                model(norm(x.to(model_device(model)).float() / 255))
        finally:
            handle.remove()
        return captured[-1].flatten(1)[:, self.neurons].mean().cpu()

    def _stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _, c, h, w = x.shape
        rows, cols = self.box(h, w)
        if self.patch is None:
            if not self._warned:
                log.warning("Trojan: no clean model was fitted; using a seeded random patch instead")
                self._warned = True
            patch = self.random_patch(c, h, w)
        else:
            patch = self.patch
            want = (c, rows.stop - rows.start, cols.stop - cols.start)
            if tuple(patch.shape) != want:
                raise InvalidInput(
                    f"the Trojan patch was fitted as {tuple(patch.shape)}, these images need {want}"
                )
        out = x.clone()
        region = out[:, :, rows, cols].float() + patch.to(x.device) * 255
        out[:, :, rows, cols] = to_uint8(region)
        return out

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "size": self.size,
            "offset": self.offset,
            "neurons": self.neurons,
            "fitted": self.fitted,
            "steps": self.steps,
            "lr": self.lr,
        }
