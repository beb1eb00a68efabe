"""FST's head term and adaptive SAM: the pieces the modern baselines and ARGD's default recipe are made of."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from argd.core.architectures import ARCHITECTURES, build_model
from argd.core.data import ImageData
from argd.core.errors import InvalidModel
from argd.core.head import ShiftedHead, find_head
from argd.core.params import CleanseParams
from argd.core.sam import AdaptiveSAM
from argd.core.spec import ModelSpec
from argd.core.trainer import Trainer
from tests.core.synthetic import bar_images, states_equal, tiny_spec

CPU = torch.device("cpu")
SPEC = tiny_spec(width=4)


def test_every_architecture_names_a_linear_head() -> None:
    for arch_id, info in ARCHITECTURES.items():
        spec = ModelSpec(
            architecture=arch_id, num_classes=7, in_channels=3, image_size=32, mean=[0.5] * 3, std=[0.5] * 3
        )
        head = find_head(build_model(spec), info.head)
        assert head.out_features == 7, arch_id


def test_a_missing_or_non_linear_head_is_a_clear_error() -> None:
    model = build_model(SPEC)
    with pytest.raises(InvalidModel, match="names no linear classifier head"):
        find_head(model, None)
    with pytest.raises(InvalidModel, match=r"must be an nn\.Linear module, found missing"):
        find_head(model, "nothing.here")
    with pytest.raises(InvalidModel, match="found Conv2d"):
        find_head(model, next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)))


def test_fst_reinitialises_the_head_keeps_its_norm_and_moves_it_away_from_the_original() -> None:
    torch.manual_seed(0)
    model = build_model(SPEC)
    original = copy.deepcopy(model)
    head_name = ARCHITECTURES[SPEC.architecture].head
    assert head_name is not None
    w0 = find_head(original, head_name).weight.detach().clone()
    norms: list[float] = []
    inner: list[float] = []

    def after_epoch(trainer: Trainer) -> None:
        w = find_head(trainer.model, head_name).weight.detach()
        norms.append(float(w.norm()))
        inner.append(float((w * w0).sum()))

    params = CleanseParams(method="fst", epochs=4, batch_size=16, lr=0.05, fst_alpha=0.5)
    assert params.recipe("distill").weight_decay == 0.0  # FST tunes without weight decay, as published
    trainer = Trainer(
        model, bar_images(64, seed=1), SPEC, params, phase="distill", device=CPU, on_epoch_end=after_epoch
    )
    head = find_head(model, head_name)
    bound = 1 / math.sqrt(head.in_features)
    # Re-initialised before any step: a fresh draw, not the original head, with the bias inside the bound.
    assert not torch.equal(head.weight, w0)
    assert float(head.bias.detach().abs().max()) <= bound
    assert float(head.weight.norm()) == pytest.approx(float(w0.norm()), rel=1e-5)
    start = float((head.weight.detach() * w0).sum())
    trainer.fit()
    # After every epoch (and so after its last step) the norm is the original one ...
    assert norms == pytest.approx([float(w0.norm())] * 4, rel=1e-5)
    # ... and the head points further from the original one than its random start did.
    assert inner[-1] < start and inner[-1] < 0
    assert trainer.history[0]["losses"]["head"] != 0.0
    # The body was tuned too, not only the head.
    assert not states_equal(
        {k: v for k, v in model.state_dict().items() if not k.startswith(head_name)},
        {k: v for k, v in original.state_dict().items() if not k.startswith(head_name)},
    )


def test_shifted_head_state_round_trips() -> None:
    model = build_model(SPEC)
    head = find_head(model, ARCHITECTURES[SPEC.architecture].head)
    shifted = ShiftedHead(head, 0.2)
    saved = shifted.state_dict()
    shifted.reinitialise(torch.Generator().manual_seed(3))
    other = ShiftedHead(head, 0.2)  # built from the re-initialised head: a different W0
    other.load_state_dict(saved)
    assert torch.equal(other.original, saved["original"]) and other.norm == pytest.approx(shifted.norm)


def test_adaptive_sam_step_on_a_quadratic_matches_the_hand_computation() -> None:
    a = torch.tensor([1.0, 3.0, 0.5])
    w_start = torch.tensor([0.4, -0.2, 1.0])
    w = nn.Parameter(w_start.clone())
    optimiser = torch.optim.SGD([w], lr=0.1)
    sam = AdaptiveSAM([w], rho=0.5)

    def loss() -> torch.Tensor:
        return 0.5 * (a * w * w).sum()

    loss().backward()
    assert sam.ascend()
    loss().backward()
    sam.descend_from_original()
    optimiser.step()

    # By hand: g = a*w, e = rho * w^2 * g / ||w * g||, the gradient at w + e is a*(w + e), SGD steps from w.
    g = a * w_start
    e = 0.5 * w_start**2 * g / torch.linalg.vector_norm(w_start * g)
    expected = w_start - 0.1 * a * (w_start + e)
    assert torch.allclose(w.detach(), expected, atol=1e-7)


def test_adaptive_sam_refuses_non_finite_gradients_and_leaves_the_weights() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    w.grad = torch.tensor([float("inf"), 0.0])
    sam = AdaptiveSAM([w], rho=1.0)
    assert not sam.ascend()
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0])) and w.grad is None


def test_ft_sam_takes_two_passes_per_step_with_label_smoothing() -> None:
    calls = {"n": 0}
    model = build_model(SPEC)
    model.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    data = ImageData(bar_images(32, seed=2).x, bar_images(32, seed=2).y)
    params = CleanseParams(method="ft-sam", epochs=1, batch_size=16)
    recipe = params.recipe("distill")
    assert (recipe.sam_rho, recipe.label_smoothing, recipe.head) == (2.0, 0.1, "keep")
    Trainer(model, data, SPEC, params, phase="distill", device=CPU).fit()
    assert calls["n"] == 2 * 2  # two batches, two forward passes each


def test_teacher_recipes_follow_the_teacher_field() -> None:
    assert CleanseParams(teacher="fst").recipe("teacher").head == "fst"
    assert CleanseParams(teacher="sam").recipe("teacher").sam_rho == 2.0
    both = CleanseParams(teacher="fst-sam", sam_rho=0.5).recipe("teacher")
    assert (both.head, both.sam_rho, both.label_smoothing, both.weight_decay) == ("fst", 0.5, 0.1, 0.0)
    plain = CleanseParams(teacher="finetune").recipe("teacher")
    assert (plain.head, plain.sam_rho, plain.weight_decay) == ("keep", 0.0, 5e-4)
    student = CleanseParams(method="argd").recipe("distill")
    assert (student.head, student.sam_rho, student.distil) == ("fst", 0.5, True)
    assert CleanseParams(student_sam_rho=None).recipe("distill").sam_rho == 2.0
    assert CleanseParams(student_sam=False).recipe("distill").sam_rho == 0.0
    assert CleanseParams(method="fst").recipe("distill").distil is False


def test_the_student_sam_radius_applies_to_the_argd_and_nad_student_only() -> None:
    params = CleanseParams(teacher="fst-sam", student_sam=True, sam_rho=2.0, student_sam_rho=0.5)
    assert params.recipe("teacher").sam_rho == 2.0
    assert params.recipe("distill").sam_rho == 0.5
    assert CleanseParams(method="nad", student_sam=True, student_sam_rho=1.0).recipe("distill").sam_rho == 1.0
    # ft-sam is the whole method, not a student: it keeps sam_rho; a student without SAM steps has none.
    assert CleanseParams(method="ft-sam", student_sam_rho=0.5).recipe("distill").sam_rho == 2.0
    assert CleanseParams(student_sam=False, student_sam_rho=0.5).recipe("distill").sam_rho == 0.0
    with pytest.raises(ValidationError):
        CleanseParams(student_sam_rho=0.0)


def test_the_student_fst_weight_applies_to_the_argd_and_nad_student_only() -> None:
    params = CleanseParams(method="argd", fst_alpha=0.2, student_fst_alpha=0.05)
    assert params.recipe("teacher").fst_alpha == 0.2
    assert params.recipe("distill").fst_alpha == 0.05
    assert CleanseParams(method="nad", student_fst_alpha=0.0).recipe("distill").fst_alpha == 0.0
    # fst is the whole method, not a student: it keeps fst_alpha.
    alone = CleanseParams(method="fst", fst_alpha=0.3, student_fst_alpha=0.05)
    assert alone.recipe("distill").fst_alpha == 0.3
    assert CleanseParams(method="argd", fst_alpha=0.3).recipe("distill").fst_alpha == 0.3
    model = build_model(SPEC)
    teacher = copy.deepcopy(model)
    trainer = Trainer(
        model, bar_images(32, seed=2), SPEC, params, phase="distill", device=CPU, teacher=teacher
    )
    assert trainer.shifted_head is not None and trainer.shifted_head.alpha == 0.05


def test_the_hinged_head_term_stops_pushing_a_row_once_it_is_orthogonal() -> None:
    head = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    full, hinged = ShiftedHead(head, 0.5), ShiftedHead(head, 0.5, hinge=True)
    with torch.no_grad():  # row 0 still leans on its original row, row 1 already points away from its own
        head.weight.copy_(torch.tensor([[0.6, 0.8, 0.0], [0.0, -0.6, 0.8]]))
    assert float(full.penalty()) == pytest.approx(0.5 * (0.6 - 0.6))
    assert float(hinged.penalty()) == pytest.approx(0.5 * 0.6)
    hinged.penalty().backward()
    assert head.weight.grad is not None
    # Only the row that still leans on the original one is pushed, and only along its original row.
    assert torch.allclose(head.weight.grad, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    params = CleanseParams(method="argd", student_fst_hinge=True)
    assert params.recipe("distill").fst_hinge and not params.recipe("teacher").fst_hinge
    assert not CleanseParams(method="fst", student_fst_hinge=True).recipe("distill").fst_hinge


def test_the_student_can_also_match_the_uploaded_models_own_outputs() -> None:
    torch.manual_seed(0)
    uploaded = build_model(SPEC)
    teacher = copy.deepcopy(uploaded)
    with torch.no_grad():  # a teacher that answers differently from the uploaded model
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    data = bar_images(32, seed=3)
    params = CleanseParams(
        method="argd", epochs=1, batch_size=16, w_uploaded_logit=2.0, student_head="keep",
        w_node=0, w_edge=0, w_emb=0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="uploaded model was not given"):
        Trainer(copy.deepcopy(uploaded), data, SPEC, params, phase="distill", device=CPU, teacher=teacher)
    trainer = Trainer(
        copy.deepcopy(uploaded), data, SPEC, params, phase="distill", device=CPU, teacher=teacher,
        uploaded=copy.deepcopy(uploaded),
    )  # fmt: skip
    assert trainer.distillation is not None and trainer.distillation.w_uploaded == 2.0
    x = data.x[:8].float().div(255)
    targets = trainer.distillation.targets(x)
    assert targets.uploaded is not None
    # The student starts as the uploaded model: nothing to match there yet, but the teacher differs.
    terms = trainer.distillation.terms(uploaded.eval()(x), targets)
    assert float(terms["uploaded"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["logit"]) > 1e-4
    moved = trainer.distillation.terms(teacher(x), targets)
    assert float(moved["logit"]) == pytest.approx(0.0, abs=1e-6)
    assert float(moved["uploaded"]) > 1e-4
    assert float(moved["total"]) == pytest.approx(2.0 * float(moved["uploaded"]), rel=1e-5)
    history = trainer.fit()
    assert history[0]["losses"]["uploaded"] > 0
    # Off by default, and never for the baselines.
    assert CleanseParams().effective_weights()["uploaded"] == 0.0
    assert CleanseParams(method="nad", w_uploaded_logit=1.0).effective_weights()["uploaded"] == 0.0
