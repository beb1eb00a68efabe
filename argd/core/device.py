"""Device selection and mixed-precision helpers shared by the trainer, the metrics and the pipeline.

Kept in one place so that every phase of a job makes the same choice: the same device, the same autocast
dtype, the same loss scaling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from argd.core.errors import InvalidInput

AmpMode = Literal["auto", "bf16", "fp16", "off"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" into a usable torch.device, or say why it cannot be used."""
    name = str(device) if isinstance(device, torch.device) else device.strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise InvalidInput(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise InvalidInput(
            f"unsupported device type {resolved.type!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )
    if not torch.cuda.is_available():
        raise InvalidInput(f"device {name!r} requested but CUDA is not available on this machine")
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InvalidInput(
            f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return resolved


def amp_dtype(device: torch.device, mode: AmpMode = "auto") -> torch.dtype | None:
    """The autocast dtype for `mode` on `device`, or None for full float32.

    "auto" means bf16 on CUDA devices that support it, fp16 on older CUDA devices, and float32 on CPU (CPU
    autocast rarely pays off for the small convolutional nets this project serves). An explicit "bf16" or
    "fp16" is honoured on any device.
    """
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if mode != "auto":
        raise InvalidInput(f"unknown amp mode {mode!r}: use 'auto', 'bf16', 'fp16' or 'off'")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to `dtype` on `device`; a no-op when `dtype` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 training (its narrow exponent needs loss scaling); None for bf16 and float32."""
    if dtype is not torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator living on `device`, so that on-device sampling never needs a host round trip."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def in_memory_format(module: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """`module.to(memory_format=...)`: channels_last for convolutions on CUDA, contiguous for the output."""
    # torch's stubs list no `memory_format` overload of Module.to, though the method takes it.
    return module.to(memory_format=memory_format)  # type: ignore[call-overload,no-any-return]
