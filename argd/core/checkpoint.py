"""Per-epoch checkpoints of a cleanse job: written atomically, read back with `weights_only=True`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (module and optimiser state dicts,
RNG states as uint8 tensors, the history), so the restricted unpickler can read it and a tampered file can
never execute code. It is written to a temporary file beside the target and renamed over it, so a worker
killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from argd.core.errors import ArgdError

FORMAT_VERSION = 1


class CheckpointError(ArgdError):
    """The checkpoint file exists but cannot be used (corrupt, another format, or another job's)."""

    code = "bad_checkpoint"


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (safe to keep while training continues)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write `state` (plus the format version) atomically to `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state saved at `path`, or None when there is no file; tensors are loaded onto the CPU."""
    source = Path(path)
    if not source.exists():
        return None
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises several types for bad files
        raise CheckpointError(f"checkpoint {source.name} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {source.name} is not a format-{FORMAT_VERSION} cleanse checkpoint")
    return state
