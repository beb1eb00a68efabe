"""Edge loss: how the attention maps of different levels relate to one another (ARGD's relation term).

For each pair of levels i < j the larger map is average-pooled to the smaller one's H x W and the per-sample
squared L2 distance `d_ij(b) = sum_hw (pool(Â_i) - Â_j)^2` is taken; each pair's distances are divided by
their maximum over the batch (so the edges of a network are relative, comparable between student and teacher
whatever the absolute scale). The loss is `mean over pairs of mean_b (d_ij^S(b) - d_ij^T(b))^2`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

from argd.core.attention import pool_to


def level_pairs(num_levels: int) -> list[tuple[int, int]]:
    """All pairs i < j of levels: the edges of the graph (for K = 3: (0,1), (0,2), (1,2))."""
    return list(combinations(range(num_levels), 2))


def edge_distances(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Raw squared L2 distances between all pairs of levels, a [P, B] tensor (pairs in `level_pairs` order).

    Both maps of a pair are pooled to the smaller height and the smaller width, which is "pool the larger map
    to the smaller one's size" for the usual nested resolutions; pooled maps are cached per (level, size)
    because the same shallow map is pooled to the same size by several pairs.
    """
    pooled: dict[tuple[int, int, int], torch.Tensor] = {}

    def at(level: int, size: tuple[int, int]) -> torch.Tensor:
        key = (level, *size)
        if key not in pooled:
            pooled[key] = pool_to(maps[level], size)
        return pooled[key]

    rows = []
    for i, j in level_pairs(len(maps)):
        size = (min(maps[i].shape[-2], maps[j].shape[-2]), min(maps[i].shape[-1], maps[j].shape[-1]))
        rows.append((at(i, size) - at(j, size)).pow(2).flatten(1).sum(1))
    return torch.stack(rows)


def normalize_by_batch_max(distances: torch.Tensor) -> torch.Tensor:
    """Divide each row of a [P, B] distance tensor by its batch maximum; an all-zero row stays zero."""
    top = distances.amax(dim=-1, keepdim=True)
    return distances / torch.where(top > 0, top, torch.ones_like(top))


def edge_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """`mean over pairs i<j of mean_b (d_ij^S(b) - d_ij^T(b))^2` with batch-max-normalised distances.

    `student` and `teacher` are normalised attention maps [B, 1, H, W], shallow to deep, with as many levels
    on each side (their resolutions may differ between the networks). Fewer than two levels have no edges and
    give a zero loss. The teacher's maps are detached. Student and teacher go through the pooling together
    (concatenated along the batch) when their shapes match, which halves the number of kernel launches.
    """
    if len(student) != len(teacher):
        raise ValueError(
            f"edge loss needs as many student as teacher levels, got {len(student)} and {len(teacher)}"
        )
    if len(student) < 2:
        base = student[0] if student else torch.zeros(())
        return base.new_zeros((), dtype=torch.float32)
    batch = student[0].shape[0]
    teacher = [t.detach() for t in teacher]
    if all(s.shape == t.shape for s, t in zip(student, teacher, strict=True)):
        both = edge_distances(
            [torch.cat([s.float(), t.float()]) for s, t in zip(student, teacher, strict=True)]
        )
        d_student, d_teacher = both[:, :batch], both[:, batch:]
    else:
        d_student = edge_distances([s.float() for s in student])
        d_teacher = edge_distances([t.float() for t in teacher])
    diff = normalize_by_batch_max(d_student) - normalize_by_batch_max(d_teacher)
    return diff.pow(2).mean()
