"""Image datasets as uint8 tensors, and their safe loading from user files."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageData:
    """A labelled image set kept as tensors: `x` uint8 [N, C, H, W], `y` int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"x must be uint8 [N,C,H,W], got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"y must be [N] with N={self.x.shape[0]}, got {tuple(self.y.shape)}")
        self.y = self.y.to(torch.int64)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor) -> ImageData:
        return ImageData(self.x[index], self.y[index])
