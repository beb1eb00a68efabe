"""Upload payloads for the API tests, good and bad, built in memory or in a temp folder from core helpers.

Everything is tiny (small-cnn on 1x16x16 images) so that validating it costs milliseconds.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from argd.core.architectures import build_model
from argd.core.spec import ModelSpec
from argd.core.weights import save_weights

SPEC = ModelSpec(
    architecture="small-cnn", num_classes=4, in_channels=1, image_size=16, arch_kwargs={"width": 4}
)


def spec_json(spec: ModelSpec = SPEC, **changes: Any) -> str:
    return json.dumps({**spec.model_dump(mode="json"), **changes})


def state_dict(spec: ModelSpec = SPEC, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(spec).state_dict()


def safetensors_bytes(state: dict[str, torch.Tensor], tmp: Path) -> bytes:
    path = tmp / f"w-{id(state)}.safetensors"
    save_weights(state, path)
    return path.read_bytes()


def checkpoint_bytes(obj: Any) -> bytes:
    """`torch.save` of anything, as bytes (the usual .pt/.pth/.tar layout)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def training_checkpoint(state: dict[str, torch.Tensor]) -> bytes:
    """A checkpoint as training scripts write it: weights under `state_dict`, optimizer state and numbers."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values() if v.is_floating_point()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    return checkpoint_bytes(
        {"epoch": 7, "state_dict": state, "best_prec": 91.5, "optimizer": optimizer.state_dict()}
    )


class _Exploit:
    """Unpickling this runs `open(marker, "w")`: the classic code-execution pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def malicious_pickle(marker: Path) -> bytes:
    """A torch.save checkpoint whose unpickling would create `marker` (code execution)."""
    return checkpoint_bytes({"state_dict": {"conv.weight": torch.zeros(1)}, "payload": _Exploit(marker)})


def raw_malicious_pickle(marker: Path) -> bytes:
    """A legacy (non-zip) pickle stream with the same payload."""
    return pickle.dumps({"payload": _Exploit(marker)})


def torchscript_bytes(spec: ModelSpec = SPEC) -> bytes:
    torch.manual_seed(0)
    scripted = torch.jit.script(build_model(spec).eval())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def images(count: int = 24, *, channels: int = 1, size: int = 16, classes: int = 4, seed: int = 0) -> tuple:
    """Random uint8 images [N,H,W(,C)] and labels cycling over `classes`."""
    rng = np.random.default_rng(seed)
    shape = (count, size, size) if channels == 1 else (count, size, size, channels)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    y = np.arange(count, dtype=np.int64) % classes
    return x, y


def npz_bytes(x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y, **extra)
    return buffer.getvalue()


def png_zip_bytes(per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog"), size: int = 16) -> bytes:
    """A .zip of class folders of grey PNG images."""
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in classes:
            for i in range(per_class):
                image = Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8), mode="L")
                png = io.BytesIO()
                image.save(png, format="PNG")
                archive.writestr(f"{name}/{i}.png", png.getvalue())
    return buffer.getvalue()


def traversal_zip_bytes() -> bytes:
    """A zip whose member escapes the extraction folder (`../`)."""
    buffer = io.BytesIO()
    png = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8), mode="L").save(png, format="PNG")
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat/0.png", png.getvalue())
        archive.writestr("../../evil/0.png", png.getvalue())
    return buffer.getvalue()
