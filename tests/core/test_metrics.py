"""ACC, ASR, RA, DER and fidelity on hand-made numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from argd.core.data import ImageData
from argd.core.errors import InvalidInput
from argd.core.metrics import accuracy, attack_metrics, attack_rates, der, evaluate, fidelity
from argd.core.spec import ModelSpec

SPEC = ModelSpec(architecture="small-cnn", num_classes=3, in_channels=1, image_size=8, mean=[0.5], std=[0.5])


class ThresholdNet(nn.Module):
    """Class 1 when the normalised top-left pixel is positive (raw pixel > 127.5), class 0 when negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0]
        return torch.stack([-v, v, torch.full_like(v, -100.0)], dim=1)


def images(pixels: list[int], labels: list[int]) -> ImageData:
    x = torch.zeros(len(pixels), 1, 8, 8, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor(pixels, dtype=torch.uint8)
    return ImageData(x, torch.tensor(labels))


def test_accuracy_normalises_batches_and_restores_mode() -> None:
    model = ThresholdNet().train()
    data = images([200, 50, 200, 10, 130], [1, 0, 0, 0, 1])
    assert accuracy(model, data, SPEC, "cpu", batch_size=2) == pytest.approx(4 / 5)
    assert model.training
    with pytest.raises(InvalidInput, match="empty"):
        accuracy(model, images([], []), SPEC)


def test_attack_rates_leave_out_target_class_samples() -> None:
    predictions = torch.tensor([0, 0, 1, 2, 0])
    original = torch.tensor([1, 2, 1, 0, 0])
    # Kept: samples 0-2 (original labels 1, 2, 1); predicted target twice, original label once.
    assert attack_rates(predictions, original, target=0) == pytest.approx((2 / 3, 1 / 3))
    with pytest.raises(InvalidInput, match="ASR needs poisoned inputs from other classes"):
        attack_rates(predictions, torch.zeros(5, dtype=torch.long), target=0)


def test_attack_metrics_and_evaluate() -> None:
    model = ThresholdNet()
    poisoned = images([200, 200, 10, 200], [0, 2, 2, 1])  # predicted 1, 1, 0, 1; target 1
    # Kept: labels 0, 2, 2 (the label-1 sample is left out); target predicted for samples 0 and 1.
    assert attack_metrics(model, poisoned, 1, SPEC) == pytest.approx({"asr": 2 / 3, "ra": 0.0})
    test = images([200, 10], [1, 1])
    assert evaluate(model, SPEC, test=test, poisoned=poisoned, target_label=1) == pytest.approx(
        {"acc": 0.5, "asr": 2 / 3, "ra": 0.0}
    )
    assert evaluate(model, SPEC) == {"acc": None, "asr": None, "ra": None}
    with pytest.raises(InvalidInput, match="needs target_label"):
        evaluate(model, SPEC, poisoned=poisoned)
    with pytest.raises(InvalidInput, match="outside"):
        attack_metrics(model, poisoned, 5, SPEC)


def test_der_by_hand() -> None:
    before = {"acc": 0.90, "asr": 1.00}
    assert der(before, {"acc": 0.85, "asr": 0.10}) == pytest.approx((0.90 - 0.05 + 1) / 2)
    # Accuracy that rises is not rewarded; ASR that rises is not penalised below "no change".
    assert der(before, {"acc": 0.95, "asr": 0.10}) == pytest.approx((0.90 + 1) / 2)
    assert der({"acc": 0.9, "asr": 0.2}, {"acc": 0.8, "asr": 0.5}) == pytest.approx((0 - 0.1 + 1) / 2)
    assert der(before, {"acc": None, "asr": 0.1}) is None


def test_fidelity_by_hand() -> None:
    before = {"acc": 0.90, "asr": 1.00}
    assert fidelity(before, {"acc": 0.85, "asr": 0.10}) == pytest.approx(0.9 * 0.85 / 0.9)
    assert fidelity({"acc": 0.8, "asr": 0.5}, {"acc": 0.8, "asr": 0.75}) == pytest.approx(-0.5)
    assert fidelity({"acc": 0.9, "asr": 0.0}, {"acc": 0.9, "asr": 0.0}) is None
    assert fidelity({"acc": 0.0, "asr": 0.5}, {"acc": 0.9, "asr": 0.0}) is None
    assert fidelity({"acc": 0.9, "asr": None}, {"acc": 0.9, "asr": 0.0}) is None
