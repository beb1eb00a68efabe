"""Embedding (global) loss: every teacher level attends over all student levels (ARGD's third term).

Each teacher level `t` forms a query, each student level `s` a key; a bilinear map turns a key into one key
per teacher level, learned level embeddings `p_t`, `p_s` add a positional prior, and a softmax over `s` gives
weights `alpha_{b,t,s}`. The loss pulls every student level towards every teacher level in proportion to those
weights, after pooling the student's map to the teacher level's resolution:

    L_emb = sum_t mean_b sum_s alpha_{b,t,s} * mean_hw (V_{s->t}^S - V_t^T)^2,   V = L2norm(flatten(Â ⊙ Â)).

Input of the query/key projections. The method's text feeds `mean_hw Â` to a Linear layer, but a normalised
attention map [B, 1, H, W] averaged over its pixels is one number per sample (and nearly the same number for
every sample, since Â has unit norm), which would leave the 128-wide projections almost nothing to work with.
The vector that a Linear layer can make sense of here is the map's spatial layout. So each level is described
by its Â average-pooled to a common small grid: the smallest resolution among all levels of both networks,
capped at 8 x 8 (e.g. 8 x 8 for a 32/16/8 WideResNet, 7 x 7 for 28/14/7). Shallow maps are pooled down to it
without ever being upsampled, the input width is the same for every level (so the projections of all levels
run as one batched matmul), and the descriptor tells where in the image a level attends - exactly what a
corner trigger changes. Descriptors are multiplied by sqrt(H*W) so that a uniform map reads 1 at any
resolution and the levels enter the projections on the same scale.

Two behaviours behind `trainable`: True (what the method describes: the projections, the bilinear map and the
level embeddings are parameters that join the student's optimiser) and False (what the reference code does:
they stay at their random initialisation). The initialisation is seeded in both modes and never touches the
global RNG, so a run is reproducible and resuming from a checkpoint restores the same module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from argd.core.attention import EPS, pool_to

MAX_GRID = 8


def descriptor_grid(shapes: Sequence[tuple[int, int]], cap: int = MAX_GRID) -> tuple[int, int]:
    """The common grid the levels are described on: smallest height and width among `shapes`, capped."""
    if not shapes:
        raise ValueError("the embedding loss needs at least one level per network")
    return min(min(h for h, _ in shapes), cap), min(min(w for _, w in shapes), cap)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension the way the attention maps are normalised (norm + 1e-6)."""
    unit: torch.Tensor = x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + EPS)
    return unit


class EmbeddingLoss(nn.Module):
    """The embedding term of the attention relation graph, built from the (H, W) of every level.

    Channels are not needed: the inputs are attention maps. Levels may differ in number and resolution between
    student and teacher (a teacher of another architecture). Call it with the normalised attention maps of the
    student and of the teacher (lists of [B, 1, H, W], shallow to deep); it returns a float32 scalar. Needs a
    batch of at least two samples while in training mode (its BatchNorm layers use batch statistics).
    """

    def __init__(
        self,
        student_shapes: Sequence[tuple[int, int]],
        teacher_shapes: Sequence[tuple[int, int]],
        *,
        dim: int = 128,
        trainable: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.student_shapes = [(int(h), int(w)) for h, w in student_shapes]
        self.teacher_shapes = [(int(h), int(w)) for h, w in teacher_shapes]
        self.grid = descriptor_grid(self.student_shapes + self.teacher_shapes)
        self.dim = dim
        self.trainable = trainable
        n_s, n_t, width = len(self.student_shapes), len(self.teacher_shapes), self.grid[0] * self.grid[1]
        if n_s == 0 or n_t == 0:
            raise ValueError("the embedding loss needs at least one level per network")

        generator = torch.Generator().manual_seed(seed)

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound, generator=generator))

        # One Linear per level, stored as a stacked weight so that all levels project in one einsum.
        self.query_weight = uniform(n_t, width, dim, fan_in=width)
        self.query_bias = uniform(n_t, dim, fan_in=width)
        self.query_bn = nn.BatchNorm1d(n_t * dim)
        self.key_weight = uniform(n_s, width, dim, fan_in=width)
        self.key_bias = uniform(n_s, dim, fan_in=width)
        self.key_bn = nn.BatchNorm1d(n_s * dim)
        # The bilinear map: one Linear shared by all student levels, giving a key per teacher level.
        self.bilinear_weight = uniform(dim, n_t * dim, fan_in=dim)
        self.bilinear_bias = uniform(n_t * dim, fan_in=dim)
        self.bilinear_bn = nn.BatchNorm1d(n_t * dim)
        # Level embeddings (Xavier-normal scale).
        self.p_t = nn.Parameter(torch.randn(n_t, dim, generator=generator) * math.sqrt(2.0 / (n_t + dim)))
        self.p_s = nn.Parameter(torch.randn(n_s, dim, generator=generator) * math.sqrt(2.0 / (n_s + dim)))
        if not trainable:
            self.requires_grad_(False)

    def extra_repr(self) -> str:
        return (
            f"student_shapes={self.student_shapes}, teacher_shapes={self.teacher_shapes}, grid={self.grid}, "
            f"dim={self.dim}, trainable={self.trainable}"
        )

    def _describe(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B, L, grid_h * grid_w]: each level's Â pooled to the common grid, rescaled by sqrt(H*W)."""
        rows = [pool_to(m.float(), self.grid).flatten(1) * math.sqrt(m.shape[-2] * m.shape[-1]) for m in maps]
        return torch.stack(rows, dim=1)

    def attention_weights(
        self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """alpha [B, T, S]: for each sample and teacher level, a softmax over the student levels."""
        batch, n_t, n_s, dim = student[0].shape[0], len(teacher), len(student), self.dim
        query = torch.einsum("blg,lgd->bld", self._describe(teacher), self.query_weight) + self.query_bias
        query = self.query_bn(query.reshape(batch, n_t * dim)).view(batch, n_t, dim)
        key = torch.einsum("blg,lgd->bld", self._describe(student), self.key_weight) + self.key_bias
        key = F.relu(self.key_bn(key.reshape(batch, n_s * dim))).view(batch, n_s, dim)
        per_level = key.reshape(batch * n_s, dim) @ self.bilinear_weight + self.bilinear_bias
        per_level = self.bilinear_bn(per_level).view(batch, n_s, n_t, dim)
        logits = torch.einsum("bstd,btd->bts", per_level, query) + self.p_t @ self.p_s.t()
        return torch.softmax(logits / math.sqrt(dim), dim=-1)

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student) != len(self.student_shapes) or len(teacher) != len(self.teacher_shapes):
            raise ValueError(
                f"embedding loss was built for {len(self.student_shapes)} student and "
                f"{len(self.teacher_shapes)} teacher levels, got {len(student)} and {len(teacher)}"
            )
        for name, maps, shapes in (
            ("student", student, self.student_shapes),
            ("teacher", teacher, self.teacher_shapes),
        ):
            got = [tuple(m.shape[-2:]) for m in maps]
            if got != shapes:
                raise ValueError(f"embedding loss was built for {name} level shapes {shapes}, got {got}")
        teacher = [t.detach().float() for t in teacher]
        student = [s.float() for s in student]
        with torch.autocast(device_type=student[0].device.type, enabled=False):
            alpha = self.attention_weights(student, teacher)
            total = student[0].new_zeros(())
            # Teacher levels sharing a resolution share the pooled student values.
            by_size: dict[tuple[int, int], list[int]] = {}
            for t_index, size in enumerate(self.teacher_shapes):
                by_size.setdefault(size, []).append(t_index)
            for size, t_indices in by_size.items():
                pooled = torch.stack([pool_to(s, size).flatten(1) for s in student], dim=1)  # [B, S, HW]
                v_student = _unit_rows(pooled * pooled)
                teacher_maps = torch.stack([teacher[t].flatten(1) for t in t_indices], dim=1)  # [B, n, HW]
                v_teacher = _unit_rows(teacher_maps * teacher_maps)
                diff = (v_student.unsqueeze(1) - v_teacher.unsqueeze(2)).pow(2).mean(-1)  # [B, n, S]
                contiguous = t_indices == list(range(t_indices[0], t_indices[-1] + 1))
                weights = alpha[:, t_indices[0] : t_indices[-1] + 1] if contiguous else alpha[:, t_indices]
                total = total + (weights * diff).sum(-1).mean(0).sum()
        return total
