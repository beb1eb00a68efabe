"""The model spec: everything needed to rebuild an uploaded model from its tensors alone."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelSpec(BaseModel):
    """Architecture id from the allowlisted registry plus the input geometry and normalisation."""

    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(description="Registry id, e.g. 'wrn-16-1'")
    num_classes: int = Field(ge=2, le=100_000)
    in_channels: int = Field(ge=1, le=4)
    image_size: int = Field(ge=8, le=512)
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])
    arch_kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)
    feature_layers: list[str] | None = Field(
        default=None,
        description="Module names whose outputs are the attention levels; default per architecture",
    )

    @model_validator(mode="after")
    def _check_normalisation(self) -> ModelSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.in_channels):
                raise ValueError(
                    f"{name} must have 1 or in_channels={self.in_channels} values, got {len(values)}"
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self

    def channel_mean(self) -> list[float]:
        return self.mean * self.in_channels if len(self.mean) == 1 else list(self.mean)

    def channel_std(self) -> list[float]:
        return self.std * self.in_channels if len(self.std) == 1 else list(self.std)
