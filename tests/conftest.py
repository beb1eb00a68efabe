"""Shared test setup: one torch thread (the CI machine's cores are shared), and a few small fixtures."""

from __future__ import annotations

import pytest
import torch

from argd.core.spec import ModelSpec

torch.set_num_threads(1)


@pytest.fixture
def small_spec() -> ModelSpec:
    """A tiny grey-scale 10-class model spec that builds and runs in milliseconds."""
    return ModelSpec(architecture="small-cnn", num_classes=10, in_channels=1, image_size=16)


@pytest.fixture
def wrn_spec() -> ModelSpec:
    """WRN-16-1 on 3x32x32 with 10 classes: the shape of the released NAD/ARGD reference checkpoints."""
    return ModelSpec(architecture="wrn-16-1", num_classes=10, in_channels=3, image_size=32)
