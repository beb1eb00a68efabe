"""Vertex (node) loss: NAD's same-level attention alignment, the first term of ARGD."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def node_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], beta: Sequence[float]
) -> torch.Tensor:
    """`sum_l beta_l * mean((Â_l^S - Â_l^T)^2)`, the mean taken over batch and pixels.

    `student` and `teacher` are the normalised attention maps (`attention.normalized_attention`) of the same
    levels, shallow to deep, each [B, 1, H, W] with matching shapes level by level. The teacher's maps are
    detached here so that no gradient can ever reach the teacher, whatever the caller did.
    """
    if not (len(student) == len(teacher) == len(beta)):
        raise ValueError(
            f"node loss needs one weight per level and as many student as teacher levels; got "
            f"{len(student)} student, {len(teacher)} teacher levels and {len(beta)} weights"
        )
    if len(student) == 0:
        raise ValueError("node loss needs at least one feature level")
    total = student[0].new_zeros((), dtype=torch.float32)
    for level, (s, t, weight) in enumerate(zip(student, teacher, beta, strict=True)):
        if s.shape != t.shape:
            raise ValueError(
                f"level {level}: student attention map {tuple(s.shape)} and teacher map {tuple(t.shape)} "
                "differ; "
                "the node loss compares maps of the same resolution"
            )
        if weight == 0:
            continue
        total = total + float(weight) * (s.float() - t.detach().float()).pow(2).mean()
    return total
