"""Safe model intake: tensors in, a validated module out; tensors out as safetensors.

Nothing a user uploads is executed. Checkpoints go through `torch.load(weights_only=True)` only (the
restricted unpickler: tensors, containers and plain numbers), safetensors through the safetensors parser;
TorchScript archives and pickled modules are refused with a message that says what to upload instead. The
tensors then have to match a registry architecture exactly, be finite, and give logits of the right shape
on one dummy batch.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from argd.core.architectures import build_model
from argd.core.errors import InvalidModel
from argd.core.spec import ModelSpec

#: Most tensors a state dict may hold (the largest registry model has a few hundred).
MAX_TENSORS = 10_000

#: Largest declared uncompressed size of a zip checkpoint (torch.save stores members uncompressed, so only a
#: crafted archive can declare far more than it uploads).
MAX_CHECKPOINT_BYTES = 4 << 30

#: Checkpoint entries that wrap the state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "state_dict_ema")

#: Prefixes added by DataParallel / DistributedDataParallel and torch.compile.
STRIPPED_PREFIXES = ("module.", "_orig_mod.")

_ALLOWED_DTYPES = {
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
}

_UPLOAD_HINT = "upload model.state_dict() saved with torch.save, or a .safetensors file"

# NumPy scalars (e.g. a best accuracy stored as np.float64 next to the weights) are plain numbers: the
# restricted unpickler may rebuild them, and nothing else from NumPy.
_MULTIARRAY = importlib.import_module(
    "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
)
_NUMPY_SCALAR_GLOBALS: list[Any] = [
    _MULTIARRAY.scalar,
    np.dtype,
    *{type(np.dtype(code)) for code in "?bhilqBHILQefdg"},
]
_NUMPY_SCALAR_NAMES = {f"{obj.__module__}.{obj.__qualname__}" for obj in _NUMPY_SCALAR_GLOBALS} | {
    "numpy.core.multiarray.scalar"
}


def _is_safetensors(head: bytes) -> bool:
    """A safetensors file starts with a little-endian u64 header length followed by a JSON object."""
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len <= 100_000_000 and head[8:9] == b"{"


def _check_zip_checkpoint(path: Path, max_bytes: int) -> None:
    """Refuse zip archives that are not plain `torch.save` checkpoints (TorchScript, exported programs) or
    that unpack to more than `max_bytes`."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidModel(f"corrupt zip checkpoint: {exc}") from exc
    names = [info.filename for info in infos]
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise InvalidModel(
            f"the checkpoint unpacks to {declared} bytes, over the limit of {max_bytes}",
            details={"declared": declared, "limit": max_bytes},
        )
    inner = [name.split("/", 1)[1] if "/" in name else name for name in names]
    if any(name == "constants.pkl" or name.startswith("code/") for name in inner):
        raise InvalidModel(
            "TorchScript archives are not accepted: save model.state_dict() with torch.save or safetensors",
            details={"found": "torchscript"},
        )
    if "data.pkl" not in inner:
        raise InvalidModel(
            f"the file is a zip archive but not a torch.save checkpoint (no data.pkl); {_UPLOAD_HINT}",
            details={"found": "zip"},
        )


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # the scan itself may fail on legacy or broken files; the message then says less
        return []


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The unpickler names the first global it stopped at (for a pickled model, the model's class); the
        # scan lists every one, in no stable order.
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        first = [match.group(1)] if match else []
        found = first + sorted(set(_unsafe_globals(path)) - set(first))
        if found and all(name in _NUMPY_SCALAR_NAMES for name in found):
            try:
                with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
                    return torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as retry_exc:
                raise InvalidModel(f"cannot read the checkpoint: {_short(retry_exc)}") from retry_exc
        if found:
            what = (
                "a whole pickled model"
                if any(n.startswith("torch.nn.modules.") for n in found)
                else "objects"
            )
            raise InvalidModel(
                f"the checkpoint holds {what}, not plain tensors ({', '.join(found[:5])}); "
                f"pickled models and custom classes cannot be loaded safely: {_UPLOAD_HINT}",
                details={"found": found[:20]},
            ) from exc
        raise InvalidModel(
            f"not a readable PyTorch checkpoint ({_short(exc)}); {_UPLOAD_HINT}", details={"found": "unknown"}
        ) from exc
    except InvalidModel:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError ... on corrupt input
        raise InvalidModel(f"not a readable PyTorch checkpoint ({_short(exc)}); {_UPLOAD_HINT}") from exc


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", text, re.S)
    if match:
        text = match.group(1)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_safetensors(path: Path, max_tensors: int) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            if len(keys) > max_tensors:
                raise InvalidModel(
                    f"the file holds {len(keys)} tensors, more than the limit of {max_tensors}",
                    details={"count": len(keys), "limit": max_tensors},
                )
            return {key: handle.get_tensor(key) for key in keys}
    except InvalidModel:
        raise
    except Exception as exc:  # SafetensorError, OSError, ValueError for truncated or malformed files
        raise InvalidModel(f"corrupt or truncated safetensors file: {_short(exc)}") from exc


def _unwrap(obj: Any, depth: int = 0) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidModel(
            f"the checkpoint holds a {type(obj).__name__}, not a state dict; {_UPLOAD_HINT}",
            details={"found": type(obj).__name__},
        )
    if obj and all(isinstance(value, torch.Tensor) for value in obj.values()):
        return obj
    if depth < 2:
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], depth + 1)
    if not obj:
        raise InvalidModel("the checkpoint holds an empty dict: no tensors")
    bad = [
        f"{key!r} ({type(value).__name__})"
        for key, value in obj.items()
        if not isinstance(value, torch.Tensor)
    ]
    raise InvalidModel(
        f"not a state dict: entries {', '.join(bad[:5])} are not tensors, and there is no "
        f"{' / '.join(repr(k) for k in WRAPPER_KEYS[:2])} entry holding the weights",
        details={
            "non_tensor_keys": [str(key) for key, v in obj.items() if not isinstance(v, torch.Tensor)][:20]
        },
    )


def _clean_state_dict(state: Mapping[Any, Any], max_tensors: int) -> dict[str, torch.Tensor]:
    """Check names, count, dtypes and layouts; strip wrapper prefixes shared by every key."""
    if len(state) > max_tensors:
        raise InvalidModel(
            f"the state dict holds {len(state)} tensors, more than the limit of {max_tensors}",
            details={"count": len(state), "limit": max_tensors},
        )
    result: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise InvalidModel(f"state dict keys must be strings, found {type(key).__name__} {key!r}")
        if not isinstance(value, torch.Tensor):
            raise InvalidModel(
                f"state dict entry {key!r} is a {type(value).__name__}, not a tensor", details={"key": key}
            )
        if value.layout != torch.strided or value.is_quantized or value.dtype not in _ALLOWED_DTYPES:
            raise InvalidModel(
                f"tensor {key!r} has unsupported type {value.dtype} ({value.layout}); "
                "only dense float, integer and bool tensors are accepted",
                details={"key": key, "dtype": str(value.dtype)},
            )
        result[key] = value
    if not result:
        raise InvalidModel("the state dict is empty: no tensors")
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(key.startswith(prefix) for key in result):
                result = {key[len(prefix) :]: value for key, value in result.items()}
                changed = True
    return result


def read_state_dict(
    path: str | os.PathLike[str], *, max_tensors: int = MAX_TENSORS, max_bytes: int = MAX_CHECKPOINT_BYTES
) -> dict[str, torch.Tensor]:
    """Read the tensors of a `.safetensors` file or a `torch.save` checkpoint, without executing anything.

    Accepts a bare state dict or one wrapped as `{"state_dict": ...}` / `{"model": ...}` (other wrapper
    entries such as `epoch` or `optimizer` are ignored), and strips `module.` prefixes. Raises InvalidModel
    saying what was found and what to upload instead. `max_bytes` bounds what a zip checkpoint may declare.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise InvalidModel(f"cannot read the weights file: {exc.strerror or exc}") from exc
    if not head:
        raise InvalidModel("the weights file is empty")
    if path.suffix == ".safetensors" or _is_safetensors(head):
        return _clean_state_dict(_read_safetensors(path, max_tensors), max_tensors)
    if zipfile.is_zipfile(path):
        _check_zip_checkpoint(path, max_bytes)
    return _clean_state_dict(_unwrap(_torch_load(path)), max_tensors)


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_keys(state: dict[str, torch.Tensor], model: nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    state = dict(state)
    for key, value in expected.items():
        # Older checkpoints predate BatchNorm's step counter; it only matters for momentum=None.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched: list[dict[str, Any]] = []
    for key, want in expected.items():
        found = state.get(key)
        if found is None:
            continue
        if tuple(found.shape) != tuple(want.shape):
            mismatched.append({"key": key, "expected": list(want.shape), "found": list(found.shape)})
        elif want.is_floating_point() and not found.is_floating_point():
            mismatched.append({"key": key, "expected": str(want.dtype), "found": str(found.dtype)})
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_preview(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_preview(unexpected)})")
        if mismatched:
            described = [f"{m['key']}: expected {m['expected']}, found {m['found']}" for m in mismatched]
            parts.append(f"{len(mismatched)} mismatched ({_preview(described, 3)})")
        raise InvalidModel(
            f"the weights do not match {spec.architecture} with num_classes={spec.num_classes}, "
            f"in_channels={spec.in_channels}, arch_kwargs={dict(spec.arch_kwargs)}: " + "; ".join(parts),
            details={"missing": missing, "unexpected": unexpected, "mismatched": mismatched},
        )
    return state


def _check_finite(state: dict[str, torch.Tensor]) -> None:
    bad = [
        key for key, value in state.items() if value.is_floating_point() and not bool(value.isfinite().all())
    ]
    if bad:
        raise InvalidModel(
            f"non-finite values (NaN or Inf) in {len(bad)} tensor(s): {_preview(bad)}",
            details={"non_finite": bad},
        )


def load_model(source: str | os.PathLike[str] | Mapping[str, torch.Tensor], spec: ModelSpec) -> nn.Module:
    """Build `spec`'s architecture and load the weights strictly; returns the model on CPU in eval mode.

    `source` is a weights file (see `read_state_dict`) or a state dict already in memory. Raises InvalidModel
    for missing, unexpected or mis-shaped keys (all listed in `details`), non-finite weights, or a dummy
    forward pass that fails or gives logits other than [2, num_classes].
    """
    state = _clean_state_dict(source, MAX_TENSORS) if isinstance(source, Mapping) else read_state_dict(source)
    model = build_model(spec)
    state = _check_keys(state, model, spec)
    _check_finite(state)
    model.load_state_dict(state, strict=True)
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size))
    except Exception as exc:
        raise InvalidModel(f"the model fails on a dummy batch: {_short(exc)}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        found = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidModel(f"the model returns {found} for a batch of 2, expected [2, {spec.num_classes}]")
    if not bool(out.isfinite().all()):
        raise InvalidModel(
            "the model returns non-finite logits on a dummy batch (check batch-norm statistics)"
        )
    return model


def save_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write the tensors as a `.safetensors` file (CPU, contiguous, shared storage copied apart).

    The file appears atomically: it is written beside `path` and renamed into place.
    """
    state = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("safetensors metadata must map str to str")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so that large uploads never sit in memory whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def parameter_count(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_TENSORS",
    "load_model",
    "parameter_count",
    "read_state_dict",
    "save_weights",
    "sha256_file",
]
