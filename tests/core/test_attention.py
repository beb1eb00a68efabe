"""Attention maps: values worked out by hand, shapes, float32 under autocast, pooling between levels."""

from __future__ import annotations

import math

import pytest
import torch

from argd.core.attention import attention_map, attention_maps, normalize_map, normalized_attention, pool_to


def test_attention_map_sums_powered_channels() -> None:
    # Two channels over a 1x2 map: channel 0 = [1, 2], channel 1 = [3, -4].
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, -4.0]]]])
    assert attention_map(features, p=2).tolist() == [[[[10.0, 20.0]]]]
    assert attention_map(features, p=1).tolist() == [[[[4.0, 6.0]]]]


def test_normalised_map_has_unit_norm_per_sample_and_keeps_shape() -> None:
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, -4.0]]]])
    normalised = normalized_attention(features)
    assert normalised.shape == (1, 1, 1, 2)
    scale = math.sqrt(10.0**2 + 20.0**2) + 1e-6
    assert normalised.flatten().tolist() == pytest.approx([10.0 / scale, 20.0 / scale])

    batch = torch.randn(3, 5, 4, 6)
    maps = normalized_attention(batch)
    assert maps.shape == (3, 1, 4, 6)
    assert torch.linalg.vector_norm(maps.flatten(1), dim=1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)


def test_all_zero_map_stays_finite() -> None:
    maps = normalize_map(torch.zeros(2, 1, 3, 3))
    assert torch.equal(maps, torch.zeros(2, 1, 3, 3))


def test_float32_even_under_autocast() -> None:
    features = torch.randn(2, 4, 8, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = attention_maps([features, features[:, :, ::2, ::2]])
    assert [m.dtype for m in maps] == [torch.float32, torch.float32]
    assert [tuple(m.shape) for m in maps] == [(2, 1, 8, 8), (2, 1, 4, 4)]


def test_pool_to_integer_and_fractional_factors() -> None:
    grid = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    # 4x4 -> 2x2 averages 2x2 blocks: top-left block is 1, 2, 5, 6.
    assert pool_to(grid, (2, 2)).flatten().tolist() == [3.5, 5.5, 11.5, 13.5]
    # 3x3 -> 2x2 is not an integer factor: adaptive bins rows/cols [0, 2) and [1, 3).
    three = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    assert pool_to(three, (2, 2)).flatten().tolist() == [3.0, 4.0, 6.0, 7.0]
    assert pool_to(three, (3, 3)) is three


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        attention_map(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="p must be > 0"):
        attention_map(torch.zeros(1, 1, 2, 2), p=0)
