"""The attack interface shared by every backdoor attack, and the trigger geometry helpers they build on.

An attack poisons a uint8 image set: `poison_train` returns the training set a backdoored model is trained on,
`poison_eval` the triggered test images (non-target images, ORIGINAL labels) that ASR is measured on.
Trigger sizes are given for 32-pixel images, as in the papers, and scaled to the images at hand.

Conventions every attack follows:
- `rate` is the fraction of the WHOLE training set that is poisoned: `round(rate * N)` images (halves up),
  capped by the number of candidates. Dirty-label attacks draw the candidates from the non-target images
  (all-to-one) or from all images (all-to-all) and relabel them; clean-label attacks draw them from the
  target class only and keep every label, so at the same rate both kinds inject the same number of images
  until the target class runs out (`PoisonedTrainSet.poisoned_index` says how many were poisoned).
- All-to-one (default): poisoned training images are relabelled `target`; the evaluation set holds the
  non-target test images, triggered, with their original labels; ASR = fraction classified as `target`.
- All-to-all (dirty-label attacks only): an image of class `y` is relabelled `(y + 1) % num_classes`; the
  evaluation set holds ALL test images, triggered, with their original labels, and ASR is the fraction whose
  prediction equals `target_for(y)`, i.e. `(y + 1) % num_classes` (per sample; never `y` itself).
- Everything random is drawn from seeded `torch.Generator`s: the attack's `seed` fixes the trigger and what
  `apply` draws; the poisoning `seed` fixes which images are poisoned.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from argd.core.data import ImageData
from argd.core.errors import InvalidInput
from argd.core.spec import ModelSpec

Mode = Literal["all-to-one", "all-to-all"]
Normaliser = Callable[[torch.Tensor], torch.Tensor]

#: The image size the papers' trigger sizes refer to.
REFERENCE_SIZE = 32
#: Pixel values (N*C*H*W) stamped per batch in `apply`, to bound the float memory of large sets.
CHUNK_VALUES = 1 << 24


@dataclass
class PoisonedTrainSet:
    """A poisoned training set: the images and labels to train on, and which of them carry the backdoor."""

    data: ImageData
    #: Sorted int64 indices (into `data`) of the images that carry the trigger.
    poisoned_index: torch.Tensor
    #: Sorted int64 indices of images changed WITHOUT carrying the backdoor, labels kept (WaNet's noise
    #: mode); empty for the other attacks.
    noise_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------- helpers


def round_half_up(value: float) -> int:
    """Nearest integer with halves rounded up (Python's `round` rounds halves to even)."""
    return math.floor(value + 0.5)


def scaled(length: float, size: int, minimum: int = 1) -> int:
    """A length given for 32-pixel images, scaled to `size` pixels, at least `minimum`."""
    return max(minimum, round_half_up(length * size / REFERENCE_SIZE))


def checkerboard(rows: int, cols: int) -> torch.Tensor:
    """The 3x3 black-and-white checkerboard (white corners and centre) resized by nearest neighbour.

    Returns float values in {0, 255}, shape [rows, cols]; a 3x3 request gives the pattern itself.
    """
    base = torch.tensor([[255.0, 0.0, 255.0], [0.0, 255.0, 0.0], [255.0, 0.0, 255.0]])
    ri = torch.arange(rows) * 3 // rows
    ci = torch.arange(cols) * 3 // cols
    return base[ri][:, ci]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixel values (0..255 scale) rounded and clamped back to uint8."""
    return x.round().clamp_(0, 255).to(torch.uint8)


def check_images(x: Any, what: str = "x") -> torch.Tensor:
    """Reject anything but a uint8 [N, C, H, W] tensor with a message naming the problem."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInput(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise InvalidInput(f"{what} must be a uint8 [N, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
    return x


def make_normaliser(spec: ModelSpec | None = None, normalise: Normaliser | None = None) -> Normaliser:
    """Map float images in [0, 1] to the model's input: the spec's mean/std, a given function, or identity."""
    if spec is not None and normalise is not None:
        raise InvalidInput("pass either spec or normalise, not both")
    if normalise is not None:
        return normalise
    if spec is None:
        return lambda x: x
    mean = torch.tensor(spec.channel_mean()).view(1, -1, 1, 1)
    std = torch.tensor(spec.channel_std()).view(1, -1, 1, 1)
    return lambda x: (x - mean.to(x.device)) / std.to(x.device)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------------ base


class Attack(ABC):
    """A backdoor attack on uint8 images: stamps its trigger and builds poisoned train / eval sets.

    `target`, `rate` and `seed` set here are the defaults of `poison_train` / `poison_eval`, which may
    override them per call (pass the same `target` to both, or set it here once).
    """

    name: ClassVar[str]
    #: Clean-label attacks poison target-class images only and keep all labels.
    clean_label: ClassVar[bool] = False
    #: Attacks whose trigger is built with a clean model (`fit`); without one they fall back (documented).
    needs_model: ClassVar[bool] = False

    def __init__(
        self,
        *,
        target: int = 0,
        rate: float = 0.1,
        seed: int = 0,
        mode: Mode = "all-to-one",
        num_classes: int | None = None,
    ) -> None:
        if mode not in ("all-to-one", "all-to-all"):
            raise InvalidInput(f"mode must be 'all-to-one' or 'all-to-all', got {mode!r}")
        if mode == "all-to-all":
            if self.clean_label:
                raise InvalidInput(f"{self.name} is a clean-label attack: all-to-all mode needs relabelling")
            if num_classes is None or num_classes < 2:
                raise InvalidInput(f"all-to-all mode needs num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.target = self._check_target(target)
        self.rate = self._check_rate(rate)
        self.seed = int(seed)
        self.mode: Mode = mode

    # -- public interface

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stamp the trigger on every image of `x` (uint8 [N, C, H, W]); returns a new uint8 tensor.

        Deterministic: without a generator, whatever the trigger draws comes from one seeded by the attack's
        seed. Works on the tensor's device, in chunks of about `CHUNK_VALUES` pixel values.
        """
        check_images(x)
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)
        if x.shape[0] == 0:
            return x.clone()
        per_chunk = max(1, CHUNK_VALUES // x[0].numel())
        out = [self._stamp(chunk, generator) for chunk in torch.split(x, per_chunk)]
        return torch.cat(out)

    def target_for(self, y: torch.Tensor, target: int | None = None) -> torch.Tensor:
        """The label a triggered image of true class `y` should be classified as (per sample)."""
        if self.mode == "all-to-all":
            assert self.num_classes is not None
            return (y + 1) % self.num_classes
        return torch.full_like(y, self._check_target(self.target if target is None else target))

    def poison_train(
        self,
        data: ImageData,
        *,
        rate: float | None = None,
        target: int | None = None,
        seed: int | None = None,
    ) -> PoisonedTrainSet:
        """Poison `round(rate * N)` training images (see the module docstring for who is eligible).

        The input is left untouched; `None` arguments take the attack's own settings.
        """
        self._check_data(data, "training set")
        rate = self.rate if rate is None else self._check_rate(rate)
        target = self.target if target is None else self._check_target(target)
        seed = self.seed if seed is None else int(seed)
        generator = torch.Generator().manual_seed(seed)

        if self.clean_label:
            candidates = torch.nonzero(data.y == target).flatten()
            if candidates.numel() == 0:
                raise InvalidInput(
                    f"{self.name} is clean-label and the training set has no image of class {target}"
                )
        elif self.mode == "all-to-all":
            candidates = torch.arange(len(data))
        else:
            candidates = torch.nonzero(data.y != target).flatten()
        count = min(round_half_up(rate * len(data)), candidates.numel())
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
        index = chosen.sort().values

        self._prepare(data, target, generator)
        x = data.x.clone()
        y = data.y.clone()
        if count > 0:
            x[index] = self._poison_selected(data.x[index], data.y[index], generator)
            if not self.clean_label:
                y[index] = self.target_for(data.y[index], target)
        noise = self._add_noise(x, index, generator)
        return PoisonedTrainSet(ImageData(x, y), index, noise)

    def poison_eval(self, test: ImageData, *, target: int | None = None) -> ImageData:
        """Triggered test images with their ORIGINAL labels, for ASR.

        All-to-one: the images whose label is not the target. All-to-all: every image (each has its own
        target, `target_for(y)`).
        """
        self._check_data(test, "evaluation set")
        if self.mode == "all-to-all":
            kept = test
        else:
            target = self.target if target is None else self._check_target(target)
            kept = test.subset(torch.nonzero(test.y != target).flatten())
        return ImageData(self.apply(kept.x), kept.y.clone())

    def config(self) -> dict[str, Any]:
        """JSON-able settings, for reports."""
        return {
            "name": self.name,
            "target": self.target,
            "rate": self.rate,
            "seed": self.seed,
            "mode": self.mode,
            "num_classes": self.num_classes,
            "clean_label": self.clean_label,
        }

    # -- hooks for subclasses

    @abstractmethod
    def _stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Stamp the trigger on a uint8 batch; returns a new uint8 tensor of the same shape."""

    def _poison_selected(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Turn the chosen training images into poisoned ones (default: stamp the trigger)."""
        return self.apply(x, generator)

    def _prepare(self, data: ImageData, target: int, generator: torch.Generator) -> None:
        """Called once per `poison_train` before poisoning, with the whole training set."""
        return None

    def _add_noise(self, x: torch.Tensor, poisoned: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Alter non-poisoned images of `x` in place, labels kept; returns their sorted indices."""
        return torch.zeros(0, dtype=torch.int64)

    # -- validation

    def _check_target(self, target: int) -> int:
        try:
            if isinstance(target, bool):
                raise TypeError
            target = operator.index(target)
        except TypeError:
            raise InvalidInput(f"target must be an integer class index, got {target!r}") from None
        if target < 0:
            raise InvalidInput(f"target must be a class index >= 0, got {target}")
        if self.num_classes is not None and target >= self.num_classes:
            raise InvalidInput(f"target {target} is not below num_classes={self.num_classes}")
        return target

    @staticmethod
    def _check_rate(rate: float) -> float:
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
            raise InvalidInput(f"rate must be a fraction in [0, 1], got {rate!r}")
        return float(rate)

    def _check_data(self, data: ImageData, what: str) -> None:
        if not isinstance(data, ImageData):
            raise InvalidInput(f"the {what} must be an ImageData, got {type(data).__name__}")
        if self.mode == "all-to-all" and len(data) > 0:
            assert self.num_classes is not None
            low, high = int(data.y.min()), int(data.y.max())
            if low < 0 or high >= self.num_classes:
                raise InvalidInput(
                    f"the {what} has labels in [{low}, {high}], outside [0, {self.num_classes}) "
                    "(all-to-all mode needs every label below num_classes)"
                )


class PatchAttack(Attack):
    """An attack whose trigger is one or more fixed rectangles placed relative to the image size."""

    @staticmethod
    def corner_box(h: int, w: int, size: int, margin: int, corner: str) -> tuple[slice, slice]:
        """Rows/cols of a `size` (at 32 px) square `margin` (at 32 px) away from the named corner's edges."""
        rows, cols = scaled(size, h, minimum=2), scaled(size, w, minimum=2)
        mr, mc = scaled(margin, h, minimum=0), scaled(margin, w, minimum=0)
        if rows + mr > h or cols + mc > w:
            raise InvalidInput(f"a {rows}x{cols} trigger with margin {mr} does not fit {h}x{w} images")
        top = mr if corner.startswith("top") else h - mr - rows
        left = mc if corner.endswith("left") else w - mc - cols
        return slice(top, top + rows), slice(left, left + cols)
