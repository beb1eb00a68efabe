"""The allowlisted architecture registry: the only way a user's tensors become a runnable model.

Each entry says how to build a fresh module from a `ModelSpec`, which `arch_kwargs` it accepts, which
modules are its default attention levels (shallow to deep) and the default per-level weights of the vertex
(node) loss.

Default node weights: WideResNet uses the reference (2000, 5000, 2000). Every other family uses 2000 per
level, the magnitude the reference gives its outer levels, with no level favoured: there is no published
setting to follow, and the per-level weights stay a parameter of the cleanse job. `feature_layers=None`
means "detect automatically" (one level per spatial resolution larger than 1x1, see `argd.core.features`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn

from argd.core.architectures.mobilenet import build_mobilenet_v2
from argd.core.architectures.preact_resnet import build_preact_resnet18
from argd.core.architectures.resnet import build_resnet
from argd.core.architectures.small_cnn import build_small_cnn
from argd.core.architectures.vgg import build_vgg
from argd.core.architectures.wideresnet import build_wideresnet
from argd.core.errors import InvalidModel
from argd.core.spec import ModelSpec

#: Node-loss weight per level for architectures without a reference setting.
DEFAULT_LEVEL_WEIGHT = 2000.0


@dataclass(frozen=True)
class ArchKwarg:
    """One accepted `arch_kwargs` entry: its Python type (bool, int, float or str) and what it does."""

    type: type
    help: str


@dataclass(frozen=True)
class ArchitectureInfo:
    """Registry entry. `builder(num_classes, in_channels, image_size, **arch_kwargs) -> nn.Module`."""

    id: str
    family: str
    description: str
    builder: Callable[..., nn.Module]
    kwargs: dict[str, ArchKwarg] = field(default_factory=dict)
    feature_layers: list[str] | None = None
    node_weights: list[float] | None = None
    #: The final nn.Linear classifier (what feature-shift tuning re-initialises); None: no clear linear head.
    head: str | None = None

    @property
    def allowed_kwargs(self) -> list[str]:
        return sorted(self.kwargs)


_SMALL_INPUT = ArchKwarg(bool, "3x3 stride-1 stem without max-pool (default: True when image_size <= 64)")
_DROPOUT = ArchKwarg(float, "dropout probability (no parameters, so any value loads the same weights)")


def _registry() -> dict[str, ArchitectureInfo]:
    entries: list[ArchitectureInfo] = []
    for depth, widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
        entries.append(
            ArchitectureInfo(
                id=f"wrn-{depth}-{widen}",
                family="wideresnet",
                description=f"WideResNet-{depth}-{widen} (NAD/ARGD reference layout)",
                builder=partial(build_wideresnet, depth, widen),
                kwargs={"dropout": _DROPOUT},
                feature_layers=["block1", "block2", "block3"],
                node_weights=[2000.0, 5000.0, 2000.0],
                head="fc",
            )
        )
    entries.append(
        ArchitectureInfo(
            id="preact-resnet18",
            family="preact_resnet",
            description="PreAct-ResNet-18 (backdoor-benchmark layout: layer1..4, shortcut.0, linear)",
            builder=build_preact_resnet18,
            feature_layers=["layer2", "layer3", "layer4"],
            node_weights=[DEFAULT_LEVEL_WEIGHT] * 3,
            head="linear",
        )
    )
    for depth in (18, 34, 50):
        entries.append(
            ArchitectureInfo(
                id=f"resnet{depth}",
                family="resnet",
                description=f"ResNet-{depth} (torchvision layout)",
                builder=partial(build_resnet, depth),
                kwargs={"small_input": _SMALL_INPUT},
                feature_layers=["layer2", "layer3", "layer4"],
                node_weights=[DEFAULT_LEVEL_WEIGHT] * 3,
                head="fc",
            )
        )
    vgg_kwargs = {
        "small_input": ArchKwarg(
            bool, "1x1 pooled features and a compact head (default: True when image_size <= 64)"
        ),
        "hidden": ArchKwarg(int, "classifier width (default 512 with small_input, else 4096)"),
        "dropout": _DROPOUT,
    }
    for depth in (11, 16):
        entries.append(
            ArchitectureInfo(
                id=f"vgg{depth}-bn",
                family="vgg",
                description=f"VGG-{depth} with batch norm (torchvision layout)",
                builder=partial(build_vgg, depth),
                kwargs=vgg_kwargs,
                head="classifier.6",
            )
        )
    entries.append(
        ArchitectureInfo(
            id="mobilenet-v2",
            family="mobilenet",
            description="MobileNetV2 (torchvision layout)",
            builder=build_mobilenet_v2,
            kwargs={
                "small_input": ArchKwarg(bool, "stride-1 stem (default: True when image_size <= 64)"),
                "width_mult": ArchKwarg(float, "channel multiplier (default 1.0)"),
                "dropout": _DROPOUT,
            },
            head="classifier.1",
        )
    )
    entries.append(
        ArchitectureInfo(
            id="small-cnn",
            family="small_cnn",
            description="Tiny 3-stage CNN for tests and demos",
            builder=build_small_cnn,
            kwargs={"width": ArchKwarg(int, "channels of the first stage (default 16)")},
            feature_layers=["stage1", "stage2", "stage3"],
            node_weights=[DEFAULT_LEVEL_WEIGHT] * 3,
            head="fc",
        )
    )
    return {entry.id: entry for entry in entries}


ARCHITECTURES: dict[str, ArchitectureInfo] = _registry()


def get_architecture(architecture: str) -> ArchitectureInfo:
    """Look an id up in the allowlist; an unknown id is an InvalidModel that lists the known ones."""
    info = ARCHITECTURES.get(architecture)
    if info is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise InvalidModel(
            f"unknown architecture {architecture!r}; known architectures: {known}",
            details={"architecture": architecture, "known": sorted(ARCHITECTURES)},
        )
    return info


def _check_kwargs(info: ArchitectureInfo, arch_kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(arch_kwargs) - set(info.kwargs))
    if unknown:
        allowed = ", ".join(info.allowed_kwargs) or "none"
        raise InvalidModel(
            f"unknown arch_kwargs for {info.id}: {', '.join(unknown)}; allowed: {allowed}",
            details={"unknown": unknown, "allowed": info.allowed_kwargs},
        )
    checked: dict[str, Any] = {}
    for name, value in arch_kwargs.items():
        expected = info.kwargs[name].type
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise InvalidModel(
                f"arch_kwargs[{name!r}] for {info.id} must be {expected.__name__}, "
                f"got {type(value).__name__}",
                details={"kwarg": name, "expected": expected.__name__, "found": type(value).__name__},
            )
        checked[name] = value
    return checked


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a fresh, randomly initialised module for `spec` (train mode, CPU)."""
    info = get_architecture(spec.architecture)
    kwargs = _check_kwargs(info, dict(spec.arch_kwargs))
    try:
        return info.builder(spec.num_classes, spec.in_channels, spec.image_size, **kwargs)
    except ValueError as exc:
        raise InvalidModel(f"cannot build {info.id}: {exc}", details={"architecture": info.id}) from exc


__all__ = [
    "ARCHITECTURES",
    "DEFAULT_LEVEL_WEIGHT",
    "ArchKwarg",
    "ArchitectureInfo",
    "build_model",
    "get_architecture",
]
