"""The ARG distillation losses: one term per module, and `ARGLoss`, their weighted sum.

`ARGLoss` computes the attention maps of both networks once and skips every term whose weight is zero, so
NAD (node term only) pays for the node term alone and plain fine-tuning pays for nothing.

Cost. The terms are cheap in arithmetic but made of many small tensor operations (about 750 dispatched ops
forward and backward for three levels, 190 for the node term alone). Measured per training step (WRN-16-1, 32
px, batch 64): on one CPU thread they add about 10 ms to a step of about 150 ms (7-14 % in repeated
measurements on a shared machine; the node term alone 3-5 %); on an H200 with bf16 autocast, where such a
small network is bound by kernel-launch latency, the step goes from 6.9 ms (bare passes) to 8.6 ms with the
node term (+25 %) and 13.3 ms with all three (+93 %). Fusing the terms (CUDA graphs or torch.compile) is the
remedy; it is not applied because compiling costs longer than the whole distillation of a typical clean subset
(a few hundred steps) on such a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from argd.core.attention import attention_maps
from argd.core.losses.edge import edge_distances, edge_loss, level_pairs, normalize_by_batch_max
from argd.core.losses.embedding import EmbeddingLoss, descriptor_grid
from argd.core.losses.node import node_loss

__all__ = [
    "ARGLoss",
    "EmbeddingLoss",
    "descriptor_grid",
    "edge_distances",
    "edge_loss",
    "level_pairs",
    "node_loss",
    "normalize_by_batch_max",
]

TERMS = ("node", "edge", "emb")


class ARGLoss(nn.Module):
    """`w_node * L_node + w_edge * L_edge + w_emb * L_emb` from raw feature maps of student and teacher.

    `embedding` is required when `w_emb > 0`; it is a submodule, so its parameters appear in `parameters()`
    exactly when they are trainable and its state goes into checkpoints with this module's `state_dict()`.
    """

    def __init__(
        self,
        beta: Sequence[float],
        *,
        w_node: float = 1.0,
        w_edge: float = 1.0,
        w_emb: float = 1.0,
        p: float = 2.0,
        embedding: EmbeddingLoss | None = None,
    ) -> None:
        super().__init__()
        if w_emb > 0 and embedding is None:
            raise ValueError("w_emb > 0 needs an EmbeddingLoss module")
        if min(w_node, w_edge, w_emb) < 0 or any(b < 0 for b in beta):
            raise ValueError("loss weights must be >= 0")
        self.beta = [float(b) for b in beta]
        self.weights = {"node": float(w_node), "edge": float(w_edge), "emb": float(w_emb)}
        self.p = p
        self.embedding = embedding if w_emb > 0 else None

    @property
    def active(self) -> bool:
        """Whether any term contributes (False for plain fine-tuning: then no teacher pass is needed)."""
        return any(w > 0 for w in self.weights.values())

    def forward(
        self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The unweighted terms ("node", "edge", "emb", zero when switched off) and the weighted "total"."""
        s_maps = attention_maps(student_features, self.p)
        t_maps = attention_maps([f.detach() for f in teacher_features], self.p)
        zero = s_maps[0].new_zeros(())
        terms = {
            "node": node_loss(s_maps, t_maps, self.beta) if self.weights["node"] > 0 else zero,
            "edge": edge_loss(s_maps, t_maps) if self.weights["edge"] > 0 else zero,
            "emb": self.embedding(s_maps, t_maps) if self.embedding is not None else zero,
        }
        total = zero
        for name in TERMS:
            if self.weights[name] > 0:
                total = total + self.weights[name] * terms[name]
        terms["total"] = total
        return terms
