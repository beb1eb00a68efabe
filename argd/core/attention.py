"""Attention maps: the vertices of the attention relation graph.

A feature map `F` [B, C, H, W] becomes a spatial map `A = sum_c |F_c|^p` [B, 1, H, W] that says where the
layer responds strongly; ARGD and NAD compare these maps rather than the raw features, which makes levels of
different width comparable. The maps are normalised per sample to unit L2 norm over H*W so that only their
shape, not their scale, is distilled. The [B, 1, H, W] layout is kept because the edge and embedding losses
pool maps of one level down to the resolution of another.

Everything here runs in float32, also inside an autocast region: squaring bf16/fp16 activations and summing
them over channels loses too much precision (and overflows in fp16) for losses whose useful signal is in
differences of order 1e-4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-6


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """`sum_c |F_c|^p` of a [B, C, H, W] feature map, as float32 [B, 1, H, W]."""
    if features.dim() != 4:
        raise ValueError(
            f"attention_map expects a [B, C, H, W] feature map, got shape {tuple(features.shape)}"
        )
    if p <= 0:
        raise ValueError(f"attention exponent p must be > 0, got {p}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = features.float()
        powered = f * f if p == 2 else f.abs().pow(p)
        return powered.sum(dim=1, keepdim=True)


def normalize_map(attention: torch.Tensor) -> torch.Tensor:
    """`A / (||A||_2 + 1e-6)` per sample, the norm taken over all of H*W; shape kept."""
    with torch.autocast(device_type=attention.device.type, enabled=False):
        a = attention.float()
        norm = torch.linalg.vector_norm(a.flatten(1), dim=1).view(-1, *([1] * (a.dim() - 1)))
        normalized: torch.Tensor = a / (norm + EPS)
        return normalized


def normalized_attention(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """The normalised attention map `Â` [B, 1, H, W] (float32) of a [B, C, H, W] feature map."""
    return normalize_map(attention_map(features, p))


def attention_maps(features: Sequence[torch.Tensor], p: float = 2.0) -> list[torch.Tensor]:
    """`Â` of every level of one network, shallow to deep."""
    return [normalized_attention(f, p) for f in features]


def pool_to(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool a [B, 1, H, W] map to `size` (adaptive average pooling); identity when already that size.

    Adaptive average pooling gives a sensible area average for any factor (e.g. 7x7 -> 4x4) and, for a target
    larger than the map, replicates its cells. Integer factors, the usual case between network stages, take
    equivalent fast paths (plain `avg_pool2d`, or replication by `expand`), whose backward passes cost a
    fraction of the adaptive kernel's on CPU.
    """
    height, width = int(attention.shape[-2]), int(attention.shape[-1])
    out_h, out_w = int(size[0]), int(size[1])
    if (height, width) == (out_h, out_w):
        return attention
    if height % out_h == 0 and width % out_w == 0:
        return F.avg_pool2d(attention, kernel_size=(height // out_h, width // out_w))
    if out_h % height == 0 and out_w % width == 0:
        fh, fw = out_h // height, out_w // width
        lead = attention.shape[:-2]
        grid = attention.reshape(*lead, height, 1, width, 1).expand(*lead, height, fh, width, fw)
        return grid.reshape(*lead, out_h, out_w)
    return F.adaptive_avg_pool2d(attention, (out_h, out_w))
