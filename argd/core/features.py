"""Feature taps: the outputs of named modules, taken with forward hooks, and how the attention levels are
chosen.

The models' `forward` only returns logits; every distillation term reads intermediate maps through a
`FeatureTap`, so any registry architecture (or a module a user picks) can be an attention level without
changing its code.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

import torch
from torch import nn

from argd.core.architectures import ARCHITECTURES, DEFAULT_LEVEL_WEIGHT
from argd.core.errors import InvalidModel
from argd.core.spec import ModelSpec


class FeatureTap:
    """Context manager that records the outputs of `layer_names` during each forward pass.

    After a forward inside the `with` block, `tap.features` holds one tensor per layer, in the order of
    `layer_names`, still attached to the autograd graph. A module called several times keeps its last output.
    The hooks are removed on exit, even after an exception. Outputs are not copied (copies would cost memory
    and time on every batch), so a tapped module must not be followed by an in-place op on its output.
    """

    def __init__(self, model: nn.Module, layer_names: list[str] | tuple[str, ...]) -> None:
        names = list(layer_names)
        modules = _named_layers(model, names, f"the model has e.g. {', '.join(_example_names(model))}")
        self.model = model
        self.layer_names = names
        self._modules = [modules[name] for name in names]
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> FeatureTap:
        for name, module in zip(self.layer_names, self._modules, strict=True):
            self._handles.append(module.register_forward_hook(self._make_hook(name)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hooks and drop the stored outputs (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._outputs.clear()

    def clear(self) -> None:
        """Forget the outputs of the last forward pass (keeps the hooks)."""
        self._outputs.clear()

    def _make_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise InvalidModel(
                    f"feature layer {name!r} returns {type(output).__name__}, not a tensor",
                    details={"layer": name},
                )
            self._outputs[name] = output

        return hook

    @property
    def features(self) -> list[torch.Tensor]:
        """The recorded outputs in layer order; an error if a layer did not run in the last forward."""
        missing = [name for name in self.layer_names if name not in self._outputs]
        if missing:
            raise InvalidModel(
                f"feature layer(s) {', '.join(missing)} produced no output in the forward pass",
                details={"missing": missing},
            )
        return [self._outputs[name] for name in self.layer_names]


def _named_layers(model: nn.Module, names: list[str], hint: str, owner: str = "") -> dict[str, nn.Module]:
    """The model's modules by name, after checking that every layer name exists and none repeats."""
    modules = dict(model.named_modules())
    unknown = [name for name in names if name == "" or name not in modules]
    if unknown:
        raise InvalidModel(
            f"unknown feature layer(s){owner}: {', '.join(map(repr, unknown))}; {hint}",
            details={"unknown": unknown},
        )
    if len(set(names)) != len(names):
        raise InvalidModel(f"feature layers repeat a name: {names}", details={"feature_layers": names})
    return modules


def _example_names(model: nn.Module, limit: int = 8) -> list[str]:
    names = [name for name, _ in model.named_children()]
    return names[:limit] or ["(no submodules)"]


@dataclass(frozen=True)
class _Call:
    name: str
    order: int
    shape: tuple[int, ...] | None  # None when the module did not return a tensor
    pooling: bool  # adaptive pooling heads never count as an attention level


@dataclass
class _Probe:
    calls: list[_Call]
    # (finishing order, input resolution H*W, name of the module that produced the input or None)
    downsamplers: list[tuple[int, int, str | None]]


def _first_tensor(inputs: Any) -> torch.Tensor | None:
    for item in inputs:
        if isinstance(item, torch.Tensor):
            return item
    return None


def _resolution(t: torch.Tensor | None) -> int | None:
    return int(t.shape[2] * t.shape[3]) if t is not None and t.dim() == 4 else None


def _probe(model: nn.Module, in_channels: int, image_size: int) -> _Probe:
    """Run one dummy forward (eval mode, no grad) recording every submodule call in finishing order.

    Also records each call that lowers the spatial resolution, with the name of the module that produced its
    input (tracked by tensor identity through weak references, so nothing is kept alive). Eval mode keeps
    batch-norm running statistics untouched; the model's training flag is restored afterwards.
    """
    probe = _Probe([], [])
    producers: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}
    handles = []

    def record(name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        out = output if isinstance(output, torch.Tensor) else None
        order = len(probe.calls)
        pooling = isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)
        probe.calls.append(_Call(name, order, None if out is None else tuple(out.shape), pooling))
        if out is None or out.dim() != 4:
            return
        source = _first_tensor(inputs)
        in_res, out_res = _resolution(source), _resolution(out)
        if source is not None and in_res is not None and out_res is not None and in_res > out_res:
            known = producers.get(id(source))
            producer = known[1] if known is not None and known[0]() is source else None
            probe.downsamplers.append((order, in_res, producer))
        producers[id(out)] = (weakref.ref(out), name)

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(partial(record, name)))
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return probe


def _output_shapes(model: nn.Module, in_channels: int, image_size: int) -> dict[str, tuple[int, ...] | None]:
    return {call.name: call.shape for call in _probe(model, in_channels, image_size).calls}


def auto_feature_layers(model: nn.Module, in_channels: int, image_size: int) -> list[str]:
    """One attention level per spatial resolution larger than 1x1, shallow to deep.

    A level is the last map at its resolution: the input of the outermost module that lowers the resolution
    from there (named after the module that produced it, e.g. `layer1` feeding `layer2`), so that partial
    computations inside a downsampling block are never picked. The deepest resolution has no downsampler
    after it; there, and wherever the input came from a functional op, the last module (in finishing order)
    with a 4-D output at that resolution is used. Modules called more than once (shared activations) and
    adaptive pooling heads are skipped, because a tap on them would be ambiguous or empty.
    """
    probe = _probe(model, in_channels, image_size)
    counts: dict[str, int] = {}
    for call in probe.calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    levels: dict[int, str] = {}
    for _, resolution, producer in sorted(probe.downsamplers):
        if producer is not None and counts[producer] == 1 and resolution > 1:
            levels[resolution] = producer  # the outermost downsampler finishes last and wins
    fallback: dict[int, str] = {}
    for call in probe.calls:
        if counts[call.name] != 1 or call.pooling or call.shape is None or len(call.shape) != 4:
            continue
        resolution = call.shape[2] * call.shape[3]
        if resolution > 1:
            fallback[resolution] = call.name
    for resolution, name in fallback.items():
        levels.setdefault(resolution, name)
    return [levels[resolution] for resolution in sorted(levels, reverse=True)]


def _check_layers(model: nn.Module, names: list[str], spec: ModelSpec) -> None:
    _named_layers(
        model,
        names,
        f"top-level modules: {', '.join(_example_names(model, 20))}",
        owner=f" for {spec.architecture}",
    )
    shapes = _output_shapes(model, spec.in_channels, spec.image_size)
    for name in names:
        shape = shapes.get(name)
        if shape is None or len(shape) != 4:
            found = "no tensor output" if shape is None else f"shape {list(shape)}"
            raise InvalidModel(
                f"feature layer {name!r} must output a 4-D map [B, C, H, W], found {found}",
                details={"layer": name},
            )
        if shape[2] * shape[3] <= 1:
            raise InvalidModel(
                f"feature layer {name!r} outputs a 1x1 map at image_size={spec.image_size}: its attention "
                "map is constant and carries nothing; pick a shallower layer",
                details={"layer": name, "shape": list(shape)},
            )


def resolve_feature_layers(model: nn.Module, spec: ModelSpec) -> list[str]:
    """The attention levels for `spec`: its explicit `feature_layers` (validated), else the registry default,
    keeping only levels larger than 1x1 at this image size, else `auto_feature_layers`."""
    if spec.feature_layers:
        explicit = list(spec.feature_layers)
        _check_layers(model, explicit, spec)
        return explicit
    info = ARCHITECTURES.get(spec.architecture)
    names: list[str] = []
    if info is not None and info.feature_layers:
        shapes = _output_shapes(model, spec.in_channels, spec.image_size)
        names = [
            name
            for name in info.feature_layers
            if (shape := shapes.get(name)) is not None and len(shape) == 4 and shape[2] * shape[3] > 1
        ]
    if not names:
        names = auto_feature_layers(model, spec.in_channels, spec.image_size)
    if not names:
        raise InvalidModel(
            f"no layer of {spec.architecture} gives a map larger than 1x1 at image_size={spec.image_size}",
            details={"architecture": spec.architecture},
        )
    return names


def default_node_weights(spec: ModelSpec, num_levels: int) -> list[float]:
    """Per-level node-loss weights: the registry's when the default levels are used, else 2000 per level."""
    info = ARCHITECTURES.get(spec.architecture)
    uses_default_levels = spec.feature_layers is None or (
        info is not None
        and info.feature_layers is not None
        and list(spec.feature_layers) == info.feature_layers
    )
    if (
        info is not None
        and info.node_weights
        and uses_default_levels
        and len(info.node_weights) == num_levels
    ):
        return list(info.node_weights)
    return [DEFAULT_LEVEL_WEIGHT] * num_levels


__all__ = [
    "FeatureTap",
    "auto_feature_layers",
    "default_node_weights",
    "resolve_feature_layers",
]
