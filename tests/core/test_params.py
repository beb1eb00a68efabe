"""CleanseParams: ranges, presets, method weights, schedules and JSON round trips."""

from __future__ import annotations

import itertools
import json

import pytest
from pydantic import ValidationError

from argd.core.params import CleanseParams, scale_to_image


def test_defaults_are_valid_and_json_friendly() -> None:
    params = CleanseParams()
    assert params.method == "argd" and params.embedding_trainable
    schema = CleanseParams.model_json_schema()
    assert schema["additionalProperties"] is False
    assert {"lr", "beta", "w_node", "w_edge", "w_emb", "embedding_trainable", "amp"} <= set(
        schema["properties"]
    )
    again = CleanseParams.model_validate(json.loads(params.model_dump_json()))
    assert again == params


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", 0, "greater than 0"),
        ("batch_size", 1, "greater than or equal to 2"),
        ("val_fraction", 0.6, "less than or equal to 0.5"),
        ("method", "prune", "'argd', 'nad', 'finetune', 'fst' or 'ft-sam'"),
        ("teacher", "random", "'finetune', 'fst', 'sam', 'fst-sam' or 'uploaded'"),
        ("student_head", "drop", "'keep' or 'fst'"),
        ("sam_rho", 0, "greater than 0"),
        ("amp", "fp8", "'auto', 'bf16', 'fp16' or 'off'"),
        ("w_edge", -1, "greater than or equal to 0"),
        ("unknown_field", 1, "Extra inputs are not permitted"),
        ("beta", [], "non-empty"),
        ("beta", [1.0, -2.0], "non-empty list of weights"),
        ("milestones", [6, 3], "strictly increasing"),
        ("selection", "validation", "needs val_fraction"),
        ("lr_per_epoch", [0.1, 0.1], "needs 10 values"),
    ],
)
def test_bad_values_are_rejected_with_the_reason(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CleanseParams.model_validate({field: value})


def test_reference_preset_reproduces_the_paper_code() -> None:
    ref = CleanseParams.preset("reference")
    assert [ref.lr_at(e) for e in range(10)] == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 4)
    assert ref.beta == [2000.0, 5000.0, 2000.0]
    assert (ref.w_node, ref.w_edge, ref.w_emb) == (1.0, 1.0, 1.0)
    assert not ref.embedding_trainable and ref.embedding_dim == 128
    assert (ref.epochs, ref.batch_size, ref.teacher_epochs) == (10, 64, 10)
    assert ref.nesterov and ref.momentum == 0.9 and ref.weight_decay == 1e-4
    assert ref.selection == "last"
    assert ref.augmentation_sizes(32) == (4, 3)


def test_presets_take_validated_overrides() -> None:
    assert CleanseParams.preset("reference", method="nad").method == "nad"
    assert CleanseParams.preset("default") == CleanseParams()
    with pytest.raises(ValidationError):
        CleanseParams.preset("reference", epochs=0)
    with pytest.raises(ValueError, match="unknown preset 'paper'"):
        CleanseParams.preset("paper")


def test_method_decides_the_effective_weights() -> None:
    base = {"w_node": 2.0, "w_edge": 3.0, "w_emb": 4.0}
    argd = CleanseParams(method="argd", w_logit=0.5, w_uploaded_logit=0.25, **base).effective_weights()
    assert argd == {"node": 2.0, "edge": 3.0, "emb": 4.0, "logit": 0.5, "uploaded": 0.25}
    nad = CleanseParams(method="nad", w_logit=0.5, w_uploaded_logit=0.25, **base).effective_weights()
    assert nad == {"node": 2.0, "edge": 0.0, "emb": 0.0, "logit": 0.0, "uploaded": 0.0}
    finetune = CleanseParams(method="finetune", **base)
    zero = {"node": 0.0, "edge": 0.0, "emb": 0.0, "logit": 0.0, "uploaded": 0.0}
    assert finetune.effective_weights() == zero
    assert not finetune.needs_teacher and CleanseParams(method="nad").needs_teacher


def test_schedules() -> None:
    cosine = CleanseParams(lr=0.02, epochs=4, lr_schedule="cosine")
    values = [cosine.lr_at(e, f) for e in range(4) for f in (0.0, 0.5)]
    assert values[0] == pytest.approx(0.02)
    assert all(a > b for a, b in itertools.pairwise(values))
    assert cosine.lr_at(3, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert CleanseParams(lr=0.05, lr_schedule="constant").lr_at(7, 0.9) == 0.05
    explicit = CleanseParams(epochs=3, lr_per_epoch=[0.3, 0.2, 0.1], lr_schedule="constant")
    assert [explicit.lr_at(e) for e in range(3)] == [0.3, 0.2, 0.1]
    teacher = CleanseParams(teacher_lr=0.04, teacher_epochs=2, teacher_lr_schedule="cosine")
    assert teacher.teacher_lr_at(0) == pytest.approx(0.04) and teacher.teacher_lr_at(1) == pytest.approx(0.02)


def test_augmentation_sizes_scale_with_the_image() -> None:
    params = CleanseParams()
    assert params.augmentation_sizes(32) == (4, 3)
    assert params.augmentation_sizes(16) == (2, 2)
    assert params.augmentation_sizes(64) == (8, 6)
    assert params.augmentation_sizes(224) == (28, 21)
    assert CleanseParams(crop_padding=1, cutout=0).augmentation_sizes(64) == (1, 0)
    assert scale_to_image(3, 8) == 1 and scale_to_image(0, 64) == 0
