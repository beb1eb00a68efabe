"""The ARG losses against values worked out by hand, their gradients, and the NAD special case."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from argd.core.attention import attention_maps
from argd.core.data import ImageData
from argd.core.losses import (
    ARGLoss,
    EmbeddingLoss,
    descriptor_grid,
    edge_distances,
    edge_loss,
    level_pairs,
    node_loss,
    normalize_by_batch_max,
)
from argd.core.params import CleanseParams
from argd.core.spec import ModelSpec
from argd.core.trainer import Trainer


def maps(*rows: list[float], size: tuple[int, int]) -> torch.Tensor:
    """A [B, 1, H, W] batch from one flat list of pixel values per sample."""
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, *size)


# ---------------------------------------------------------------------------------------------- node


def test_node_loss_by_hand() -> None:
    # Level 1 (2x2): sample 0 differs in two pixels by 1 each, sample 1 is identical -> 2 / 8 = 0.25.
    s1 = maps([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], size=(2, 2))
    t1 = maps([0, 1, 0, 0], [0.5, 0.5, 0.5, 0.5], size=(2, 2))
    # Level 2 (1x1): samples differ by 1 and 0 -> mean 0.5.
    s2 = maps([1], [1], size=(1, 1))
    t2 = maps([0], [1], size=(1, 1))
    assert node_loss([s1, s2], [t1, t2], [2.0, 10.0]).item() == pytest.approx(2 * 0.25 + 10 * 0.5)
    assert node_loss([s1, s2], [t1, t2], [0.0, 1.0]).item() == pytest.approx(0.5)


def test_node_loss_rejects_mismatches() -> None:
    a = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="one weight per level"):
        node_loss([a], [a], [1.0, 2.0])
    with pytest.raises(ValueError, match="same resolution"):
        node_loss([a], [torch.zeros(2, 1, 4, 4)], [1.0])


# ---------------------------------------------------------------------------------------------- edge


def edge_case() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two samples, a 4x4 level and a 2x2 level, for student and teacher (see the hand computation)."""
    top_left = [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # pools to [[1, 0], [0, 0]]
    top_half = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]  # pools to [[1, 1], [0, 0]]
    student = [maps(top_left, top_half, size=(4, 4)), maps([0, 0, 0, 0], [0, 0, 0, 0], size=(2, 2))]
    teacher = [maps(top_left, top_half, size=(4, 4)), maps([1, 0, 0, 0], [0, 0, 0, 0], size=(2, 2))]
    return student, teacher


def test_edge_distances_pool_the_larger_map() -> None:
    student, teacher = edge_case()
    # Student: d(b0) = |[1,0,0,0] - 0|^2 = 1, d(b1) = |[1,1,0,0] - 0|^2 = 2.
    assert edge_distances(student).tolist() == [[1.0, 2.0]]
    # Teacher: d(b0) = 0 (pooled map equals the small one), d(b1) = 2.
    assert edge_distances(teacher).tolist() == [[0.0, 2.0]]


def test_edge_loss_by_hand_with_batch_max_normalisation() -> None:
    student, teacher = edge_case()
    # Normalised by the batch max: student [0.5, 1.0], teacher [0.0, 1.0] -> mean((0.5)^2, 0^2) = 0.125.
    assert edge_loss(student, teacher).item() == pytest.approx(0.125)
    # Scaling one network's maps leaves its normalised edges unchanged.
    assert edge_loss([m * 3 for m in student], teacher).item() == pytest.approx(0.125)


def test_edge_loss_fractional_pooling() -> None:
    # 3x3 -> 2x2 with adaptive bins: [[1..9]] pools to [[3, 4], [6, 7]].
    big = maps(list(range(1, 10)), [0] * 9, size=(3, 3))
    small = maps([3, 4, 6, 7], [1, 0, 0, 0], size=(2, 2))
    # Sample 0: distance 0; sample 1: pooled zeros vs one pixel of 1 -> distance 1.
    assert edge_distances([big, small]).tolist() == [[0.0, 1.0]]


def test_batch_max_guard_keeps_zero_rows() -> None:
    distances = torch.tensor([[0.0, 0.0], [1.0, 4.0]])
    assert normalize_by_batch_max(distances).tolist() == [[0.0, 0.0], [0.25, 1.0]]
    same = [maps([1, 0, 0, 0], [0, 1, 0, 0], size=(2, 2))] * 2
    assert edge_loss(same, same).item() == 0.0


def test_edge_loss_is_the_mean_over_all_pairs() -> None:
    assert level_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    generator = torch.Generator().manual_seed(0)
    student = [torch.rand(4, 1, s, s, generator=generator) for s in (8, 4, 2)]
    teacher = [torch.rand(4, 1, s, s, generator=generator) for s in (8, 4, 2)]
    per_pair = [edge_loss([student[i], student[j]], [teacher[i], teacher[j]]) for i, j in level_pairs(3)]
    assert edge_loss(student, teacher).item() == pytest.approx(sum(p.item() for p in per_pair) / 3)
    assert edge_loss(student[:1], teacher[:1]).item() == 0.0


# ---------------------------------------------------------------------------------------------- embedding


def test_descriptor_grid_is_smallest_level_capped() -> None:
    assert descriptor_grid([(32, 32), (16, 16), (8, 8)]) == (8, 8)
    assert descriptor_grid([(28, 28), (14, 14), (7, 7)]) == (7, 7)
    assert descriptor_grid([(56, 56), (28, 28), (14, 14)]) == (8, 8)


def test_embedding_loss_by_hand_with_one_student_level() -> None:
    # With one student level the softmax over s gives alpha = 1 whatever the projections are, so the loss is
    # sum_t mean_b mean_hw (V_s->t - V_t)^2 with the student's 4x4 map pooled to each teacher level's size.
    top_left = [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    student = [maps(top_left, [0.25] * 16, size=(4, 4))]
    teacher = [maps([0.5] * 4, [0.5] * 4, size=(2, 2)), maps([0, 1], [1, 0], size=(1, 2))]
    module = EmbeddingLoss([(4, 4)], [(2, 2), (1, 2)], dim=16, seed=3)
    # Level t0 (2x2): b0 V_S = [1,0,0,0] vs V_T = [.5,.5,.5,.5] -> 0.25; b1 identical -> 0.   Mean 0.125.
    # Level t1 (1x2): b0 pooled [.5, 0] -> V_S = [1, 0] vs V_T = [0, 1] -> 1;
    #                 b1 pooled [.25, .25] -> V_S = [r, r], r = 1/sqrt(2), vs V_T = [1, 0]
    #                 -> ((r - 1)^2 + r^2) / 2.                                               Mean over b.
    r = 1 / math.sqrt(2)
    expected = 0.125 + (1 + ((r - 1) ** 2 + r**2) / 2) / 2
    assert module(student, teacher).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("teacher_shapes", [[(8, 8), (4, 4), (2, 2)], [(8, 8), (4, 4), (8, 8), (2, 2)]])
def test_embedding_weights_are_a_softmax_over_student_levels(teacher_shapes: list[tuple[int, int]]) -> None:
    generator = torch.Generator().manual_seed(1)
    shapes = [(8, 8), (4, 4), (2, 2)]
    student = attention_maps([torch.randn(5, 3, h, w, generator=generator) for h, w in shapes])
    teacher = attention_maps([torch.randn(5, 3, h, w, generator=generator) for h, w in teacher_shapes])
    module = EmbeddingLoss(shapes, teacher_shapes, dim=32, seed=0)
    alpha = module.attention_weights(student, teacher)
    assert alpha.shape == (5, len(teacher_shapes), 3)
    assert torch.allclose(alpha.sum(-1), torch.ones(5, len(teacher_shapes)))
    # The loss is the alpha-weighted sum of per-pair value distances, recomputed here level by level.
    expected = 0.0
    for t, t_map in enumerate(teacher):
        v_t = t_map.flatten(1) ** 2
        v_t = v_t / (v_t.norm(dim=1, keepdim=True) + 1e-6)
        for s, s_map in enumerate(student):
            pooled = nn.functional.adaptive_avg_pool2d(s_map, t_map.shape[-2:]).flatten(1) ** 2
            v_s = pooled / (pooled.norm(dim=1, keepdim=True) + 1e-6)
            expected += (alpha[:, t, s] * (v_s - v_t).pow(2).mean(1)).mean().item()
    assert module(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_embedding_modes_and_seeding() -> None:
    frozen = EmbeddingLoss([(4, 4), (2, 2)], [(4, 4), (2, 2)], dim=8, trainable=False, seed=7)
    again = EmbeddingLoss([(4, 4), (2, 2)], [(4, 4), (2, 2)], dim=8, trainable=False, seed=7)
    other = EmbeddingLoss([(4, 4), (2, 2)], [(4, 4), (2, 2)], dim=8, trainable=False, seed=8)
    assert not any(p.requires_grad for p in frozen.parameters())
    for (name, a), (_, b), (_, c) in zip(
        frozen.named_parameters(), again.named_parameters(), other.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        if name.endswith("weight") and a.dim() > 1:
            assert not torch.equal(a, c), name
    state = torch.get_rng_state()
    EmbeddingLoss([(4, 4)], [(4, 4)], seed=1)
    assert torch.equal(state, torch.get_rng_state()), "building the module must not consume the global RNG"
    with pytest.raises(ValueError, match="built for student level shapes"):
        frozen([torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 3, 3)], [torch.zeros(2, 1, 4, 4)] * 2)


# ---------------------------------------------------------------------------------------------- gradients


def features_pair(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Three levels of student and teacher features that both require grad (to catch leaks to the teacher)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 8, 8), (6, 4, 4), (8, 2, 2)]
    student = [torch.randn(4, *s, generator=generator).requires_grad_() for s in shapes]
    teacher = [torch.randn(4, *s, generator=generator).requires_grad_() for s in shapes]
    return student, teacher


@pytest.mark.parametrize("term", ["node", "edge", "emb"])
def test_each_term_reaches_the_student_and_never_the_teacher(term: str) -> None:
    student, teacher = features_pair()
    weights = {"w_node": 0.0, "w_edge": 0.0, "w_emb": 0.0, f"w_{term}": 1.0}
    embedding = EmbeddingLoss([(8, 8), (4, 4), (2, 2)], [(8, 8), (4, 4), (2, 2)], dim=16, seed=0)
    loss = ARGLoss([1.0, 1.0, 1.0], embedding=embedding, **weights)(student, teacher)
    assert loss["total"].item() > 0
    loss["total"].backward()
    for level, feature in enumerate(student):
        assert feature.grad is not None and feature.grad.abs().sum() > 0, (
            f"no gradient at student level {level}"
        )
    assert all(f.grad is None for f in teacher)


@pytest.mark.parametrize("trainable", [True, False])
def test_embedding_parameters_get_gradients_only_when_trainable(trainable: bool) -> None:
    student, teacher = features_pair(1)
    shapes = [(8, 8), (4, 4), (2, 2)]
    embedding = EmbeddingLoss(shapes, shapes, dim=16, trainable=trainable, seed=0)
    loss = ARGLoss([1.0] * 3, w_node=0, w_edge=0, w_emb=1.0, embedding=embedding)
    loss(student, teacher)["total"].backward()
    grads = [p.grad for p in embedding.parameters()]
    if trainable:
        assert all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads if g is not None)
        assert len(list(loss.parameters())) == len(grads)
    else:
        assert all(g is None for g in grads)
        assert not any(p.requires_grad for p in loss.parameters())
    assert student[0].grad is not None and student[0].grad.abs().sum() > 0


def test_arg_loss_is_the_weighted_sum_and_skips_zero_terms() -> None:
    student, teacher = features_pair(2)
    shapes = [(8, 8), (4, 4), (2, 2)]
    embedding = EmbeddingLoss(shapes, shapes, dim=16, seed=0)
    terms = ARGLoss([2.0, 3.0, 4.0], w_node=0.5, w_edge=7.0, w_emb=11.0, embedding=embedding)(
        student, teacher
    )
    s_maps, t_maps = attention_maps(student), attention_maps(teacher)
    assert terms["node"].item() == pytest.approx(node_loss(s_maps, t_maps, [2.0, 3.0, 4.0]).item())
    assert terms["edge"].item() == pytest.approx(edge_loss(s_maps, t_maps).item())
    expected = 0.5 * terms["node"] + 7.0 * terms["edge"] + 11.0 * terms["emb"]
    assert terms["total"].item() == pytest.approx(expected.item())
    nad = ARGLoss([2.0, 3.0, 4.0], w_node=1.0, w_edge=0.0, w_emb=0.0)
    assert nad.embedding is None
    with pytest.raises(ValueError, match="needs an EmbeddingLoss"):
        ARGLoss([1.0], w_emb=1.0)


# ---------------------------------------------------------------------------------------------- NAD


class TinyNet(nn.Module):
    """Two convolutional levels (8x8 and 4x4) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.level1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.level2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.level2(self.level1(x)).mean(dim=(2, 3)))


def test_nad_trainer_computes_exactly_the_node_loss() -> None:
    torch.manual_seed(0)
    spec = ModelSpec(architecture="tiny", num_classes=3, in_channels=1, image_size=8)
    data = ImageData(torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8), torch.arange(12) % 3)
    student, teacher = TinyNet(), TinyNet()
    params = CleanseParams(
        method="nad", beta=[3.0, 5.0], w_node=2.0, w_edge=9.0, w_emb=9.0, epochs=1, student_head="keep"
    )
    trainer = Trainer(
        student,
        data,
        spec,
        params,
        phase="distill",
        device=torch.device("cpu"),
        teacher=teacher,
        feature_layers=["level1", "level2"],
    )
    assert trainer.attention is not None and trainer.attention.embedding is None
    assert trainer.attention.weights == {"node": 2.0, "edge": 0.0, "emb": 0.0}
    student_features = [torch.randn(4, 4, 8, 8), torch.randn(4, 8, 4, 4)]
    teacher_features = [torch.randn(4, 4, 8, 8), torch.randn(4, 8, 4, 4)]
    terms = trainer.attention(student_features, teacher_features)
    node = node_loss(attention_maps(student_features), attention_maps(teacher_features), [3.0, 5.0])
    assert terms["total"].item() == pytest.approx(2.0 * node.item())
    assert terms["edge"].item() == 0.0 and terms["emb"].item() == 0.0
    history = trainer.fit()
    assert history[0]["losses"]["edge"] == 0.0 and history[0]["losses"]["emb"] == 0.0
    assert history[0]["losses"]["node"] > 0.0
