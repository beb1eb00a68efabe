"""Upload validation through the engine (torch), run in a worker thread and imported only when needed.

The API process never imports torch at start-up: these functions import `argd.core.weights` /
`argd.core.data` on first use, and the routes call them with `run_in_threadpool` so a slow model check
does not stall the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from argd.core.spec import ModelSpec


@dataclass(frozen=True)
class ModelIntake:
    """A model upload that passed every check, converted to safetensors at `path`."""

    path: Path
    parameters: int


@dataclass(frozen=True)
class DatasetIntake:
    """A dataset upload that passed every check; `path` is the file to store (canonical .npz)."""

    path: Path
    count: int
    shape: list[int]
    labels: list[int]
    class_names: list[str]
    class_counts: list[int]
    source_format: str


def check_model_file(upload: Path, spec: ModelSpec, out_path: Path, *, max_tensors: int) -> ModelIntake:
    """Read the weights safely, build the spec's architecture, load strictly, run one dummy batch, and
    write the tensors as `.safetensors` at `out_path`. Raises `argd.core.errors.InvalidModel`."""
    from argd.core import weights

    state = weights.read_state_dict(upload, max_tensors=max_tensors)
    model = weights.load_model(state, spec)
    # One metadata entry only: safetensors writes several in varying order, and the stored file is
    # content-addressed, so the same weights must always give the same bytes.
    weights.save_weights(model, out_path, metadata={"format": "pt"})
    return ModelIntake(path=out_path, parameters=weights.parameter_count(model))


def check_dataset_file(upload: Path, out_path: Path) -> DatasetIntake:
    """Read an `.npz` or a `.zip` of class folders within the engine's limits and describe it.

    An `.npz` is stored as uploaded (its bytes passed the checks); a `.zip` of images is decoded once here
    and stored as the canonical `.npz` at `out_path`, so workers never decode images again.
    Raises `argd.core.errors.InvalidDataset`.
    """
    from argd.core import data

    images, info = data.load_dataset_with_info(upload)
    stored = upload
    if info.format != "npz":
        data.save_npz(images, out_path, compressed=False)
        stored = out_path
    return DatasetIntake(
        path=stored,
        count=info.count,
        shape=list(info.shape),
        labels=list(info.labels),
        class_names=list(info.classes),
        class_counts=list(info.class_counts),
        source_format=info.format,
    )
