"""Batched augmentation: shapes, seeded determinism, and that each transform does what it says."""

from __future__ import annotations

import pytest
import torch

from argd.core.augment import Augmenter, Normalizer, cutout, random_crop, random_flip, to_float
from argd.core.spec import ModelSpec


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct_images(batch: int = 16, channels: int = 2, size: int = 8) -> torch.Tensor:
    """Images whose pixel values are all different and non-zero, so every window is recognisable."""
    return torch.arange(1, batch * channels * size * size + 1, dtype=torch.float32).view(
        batch, channels, size, size
    )


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    x = distinct_images()
    out = random_crop(x, 2, gen())
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for b in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[b], padded[b, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1, f"sample {b} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1, "all samples got the same shift: randomness is not per sample"
    assert torch.equal(random_crop(x, 0, gen()), x)


def test_flip_mirrors_some_samples_and_keeps_the_others() -> None:
    x = distinct_images(batch=32)
    out = random_flip(x, gen(1))
    flipped = [torch.equal(out[b], x[b].flip(-1)) for b in range(32)]
    kept = [torch.equal(out[b], x[b]) for b in range(32)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 32


def test_cutout_zeroes_one_square_per_sample() -> None:
    x = torch.ones(64, 3, 16, 16)
    out = cutout(x, 4, gen(2))
    full_squares = 0
    for b in range(64):
        hole = out[b] == 0
        assert torch.equal(hole[0], hole[1]) and torch.equal(hole[0], hole[2]), "same hole in every channel"
        rows = hole[0].any(dim=1).nonzero().flatten()
        cols = hole[0].any(dim=0).nonzero().flatten()
        assert len(rows) > 0 and len(rows) <= 4 and len(cols) <= 4
        # The zeroed pixels form exactly the rectangle spanned by their rows and columns.
        assert int(hole[0].sum()) == len(rows) * len(cols)
        assert rows.tolist() == list(range(int(rows[0]), int(rows[-1]) + 1))
        full_squares += len(rows) * len(cols) == 16
    assert full_squares > 0
    assert torch.equal(cutout(x, 0, gen()), x)


def test_seeded_determinism_and_shapes() -> None:
    spec = ModelSpec(
        architecture="small-cnn", num_classes=2, in_channels=3, image_size=16, mean=[0.5], std=[0.25]
    )
    augment = Augmenter(Normalizer.for_spec(spec), crop_padding=2, flip=True, cutout_size=2)
    x = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    a, b, c = augment(x, gen(5)), augment(x, gen(5)), augment(x, gen(6))
    assert a.shape == (10, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    channels_last = Augmenter(Normalizer.for_spec(spec), 2, True, 2, channels_last=True)(x, gen(5))
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(channels_last, a)


def test_normalisation_uses_the_spec_statistics() -> None:
    spec = ModelSpec(
        architecture="small-cnn", num_classes=2, in_channels=2, image_size=8, mean=[0.5, 0.0], std=[0.5, 2.0]
    )
    normalize = Normalizer.for_spec(spec)
    x = torch.tensor([[[[0]], [[255]]], [[[255]], [[0]]]], dtype=torch.uint8)
    assert normalize(x).flatten().tolist() == pytest.approx([-1.0, 0.5, 1.0, 0.0])
    assert normalize(to_float(x)).flatten().tolist() == pytest.approx([-1.0, 0.5, 1.0, 0.0])
    # Without augmentation the training transform is exactly the normalisation.
    plain = Augmenter(normalize, crop_padding=0, flip=False, cutout_size=0)
    assert torch.allclose(plain(x, gen()), normalize(x))
    assert torch.allclose(plain.eval_transform(x), normalize(x))


def test_to_float_rejects_non_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.zeros(1, 1, 2, 2))
