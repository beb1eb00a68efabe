"""Evaluation metrics: clean accuracy, attack success rate, robust accuracy, DER and fidelity.

Definitions (ARGD.md):
- ACC: fraction of a clean test set classified correctly.
- ASR: over poisoned inputs whose *original* label is not the target, the fraction classified as the target.
- RA: over the same inputs, the fraction classified as their original label.
- DER: `(max(0, ASR_b - ASR_a) - max(0, ACC_b - ACC_a) + 1) / 2`, in [0, 1]; 0.5 means "no change".
- Fidelity: `((ASR_b - ASR_a) / ASR_b) * (ACC_a / ACC_b)`; undefined (None) when ASR_b or ACC_b is 0.
All are fractions in [0, 1], never percentages.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from argd.core.augment import Normalizer
from argd.core.data import ImageData
from argd.core.device import amp_dtype, autocast
from argd.core.errors import InvalidInput
from argd.core.spec import ModelSpec

PhaseMetrics = dict[str, float | None]


@torch.no_grad()
def predict(
    model: nn.Module,
    data: ImageData,
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    *,
    amp: str = "off",
    channels_last: bool = False,
) -> torch.Tensor:
    """Predicted labels (int64, on CPU) of every image in `data`, in eval mode; the model's mode is restored.

    Predictions stay on the device until the end, so evaluating costs one host transfer, not one per batch.
    """
    device = torch.device(device)
    dtype = amp_dtype(device, amp)  # type: ignore[arg-type]
    normalizer = Normalizer.for_spec(spec, device)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, len(data), batch_size):
            x = normalizer(data.x[start : start + batch_size].to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                outputs.append(model(x).argmax(dim=1))
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(outputs).cpu()


def accuracy(
    model: nn.Module,
    data: ImageData,
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> float:
    """Fraction of `data` classified as its label."""
    if len(data) == 0:
        raise InvalidInput("cannot measure accuracy on an empty dataset")
    predictions = predict(model, data, spec, device, batch_size)
    return float((predictions == data.y.cpu()).float().mean())


def attack_rates(
    predictions: torch.Tensor, original_labels: torch.Tensor, target: int
) -> tuple[float, float]:
    """(ASR, RA) from predictions on poisoned inputs and their original labels.

    Inputs whose original label is already the target say nothing about the attack and are left out.
    """
    keep = original_labels != target
    count = int(keep.sum())
    if count == 0:
        raise InvalidInput(
            f"every poisoned sample has the target label {target} as its original label; "
            "ASR needs poisoned inputs from other classes"
        )
    kept = predictions[keep]
    asr = float((kept == target).sum()) / count
    ra = float((kept == original_labels[keep]).sum()) / count
    return asr, ra


def attack_metrics(
    model: nn.Module,
    poisoned: ImageData,
    target_label: int,
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> dict[str, float]:
    """{"asr", "ra"} of `model` on triggered images labelled with their original classes."""
    if not 0 <= target_label < spec.num_classes:
        raise InvalidInput(f"target_label {target_label} is outside [0, {spec.num_classes})")
    predictions = predict(model, poisoned, spec, device, batch_size)
    asr, ra = attack_rates(predictions, poisoned.y.cpu(), target_label)
    return {"asr": asr, "ra": ra}


def evaluate(
    model: nn.Module,
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    *,
    test: ImageData | None = None,
    poisoned: ImageData | None = None,
    target_label: int | None = None,
    batch_size: int = 512,
) -> PhaseMetrics:
    """{"acc", "asr", "ra"} with None for what the given data cannot measure."""
    result: PhaseMetrics = {"acc": None, "asr": None, "ra": None}
    if test is not None:
        result["acc"] = accuracy(model, test, spec, device, batch_size)
    if poisoned is not None:
        if target_label is None:
            raise InvalidInput("a poisoned evaluation set needs target_label")
        result.update(attack_metrics(model, poisoned, target_label, spec, device, batch_size))
    return result


def _pair(before: Mapping[str, float | None], after: Mapping[str, float | None]) -> tuple[float, ...] | None:
    values = (before.get("acc"), before.get("asr"), after.get("acc"), after.get("asr"))
    if any(v is None for v in values):
        return None
    return tuple(float(v) for v in values)  # type: ignore[arg-type]


def der(before: Mapping[str, float | None], after: Mapping[str, float | None]) -> float | None:
    """Defense effectiveness rating; None unless ACC and ASR are known before and after."""
    values = _pair(before, after)
    if values is None:
        return None
    acc_b, asr_b, acc_a, asr_a = values
    return (max(0.0, asr_b - asr_a) - max(0.0, acc_b - acc_a) + 1.0) / 2.0


def fidelity(before: Mapping[str, float | None], after: Mapping[str, float | None]) -> float | None:
    """TrojAI mitigation fidelity; None when a value is missing or ASR_before or ACC_before is 0."""
    values = _pair(before, after)
    if values is None:
        return None
    acc_b, asr_b, acc_a, asr_a = values
    if asr_b == 0 or acc_b == 0:
        return None
    return ((asr_b - asr_a) / asr_b) * (acc_a / acc_b)
