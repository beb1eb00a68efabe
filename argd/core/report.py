"""The JSON report of a cleanse: what was measured, with what settings, from which files, by which software.

One builder for the one-shot command line and the service's worker, so `argd cleanse`'s report.json and
`GET /v1/jobs/{id}/report` carry the same fields and a result can be traced to its exact inputs.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argd.core.weights import sha256_file

if TYPE_CHECKING:  # types only: writing a report needs no trainer
    from argd.core.pipeline import CleanseResult
    from argd.core.spec import ModelSpec

REPORT_FORMAT = "argd-report/1"


def build_report(
    result: CleanseResult,
    inputs: Mapping[str, str | os.PathLike[str] | None],
    outputs: Mapping[str, str | os.PathLike[str] | None],
    *,
    spec: ModelSpec | None = None,
    target_label: int | None = None,
    device: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of one `run_cleanse` result.

    `inputs`/`outputs` name the files (e.g. {"model": ..., "clean": ...}); each is hashed (sha256) and
    listed with its size and base name only, never its full path, so a service report leaks no server
    paths. Entries whose path is None are skipped (an optional input that was not given). `extra` is
    merged in last (the worker adds its job id, for instance).
    """
    params = _jsonable(_dump(result.params))
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": params.get("method") if isinstance(params, dict) else None,
        "seed": params.get("seed") if isinstance(params, dict) else None,
        "selection": getattr(result, "selection", None),
        "selected_epoch": getattr(result, "selected_epoch", None),
        "seconds": getattr(result, "seconds", None),
        "feature_layers": list(getattr(result, "feature_layers", None) or []),
        "beta": _jsonable(getattr(result, "beta", None)),
        "metrics": _jsonable(result.metrics),
        "params": params,
        "spec": _jsonable(_dump(spec)) if spec is not None else None,
        "target_label": target_label,
        "device": device,
        "history": _jsonable(getattr(result, "history", [])),
        "versions": software_versions(),
        "inputs": describe_files(inputs),
        "outputs": describe_files(outputs),
    }
    if extra:
        report.update(_jsonable(dict(extra)))
    return report


def describe_files(files: Mapping[str, str | os.PathLike[str] | None]) -> dict[str, dict[str, Any]]:
    """{name: {"file", "bytes", "sha256"}} for every given path."""
    described: dict[str, dict[str, Any]] = {}
    for name, value in files.items():
        if value is None:
            continue
        path = Path(value)
        described[name] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return described


def software_versions() -> dict[str, str | None]:
    """Versions that decide a result's numbers: argd, Python, torch (and its CUDA), numpy, safetensors."""
    import torch

    from argd import __version__

    versions: dict[str, str | None] = {
        "argd": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for package in ("numpy", "safetensors", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: tensors and numpy scalars become floats, NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
