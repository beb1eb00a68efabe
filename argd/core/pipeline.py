"""`run_cleanse`: a whole cleanse job, used alike by the CLI, the worker and the benchmark.

Steps: evaluate the uploaded model -> make a teacher from it on the clean subset (`params.teacher`: plain
fine-tuning, feature-shift tuning or SAM; or take an uploaded one) -> evaluate the teacher -> train a student
from the uploaded model (ARGD or NAD distil the teacher into it) -> evaluate the student. The student is the
cleansed model. The methods without a teacher (`finetune`, `fst`, `ft-sam`) skip the teacher phase: they are
the student phase with every distillation weight at zero.

With `checkpoint_path`, the job state is written after every epoch (see `argd.core.checkpoint`) and an
existing checkpoint is resumed from: the run then finishes with the same number of epochs and, on CPU, the
same final weights as an uninterrupted one. Model selection never looks at test or poisoned data: it keeps the
last epoch, or the best epoch on a validation split carved out of the clean subset.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from argd.core.checkpoint import CheckpointError, cpu_state, load_checkpoint, save_checkpoint
from argd.core.data import ImageData
from argd.core.device import in_memory_format, resolve_device
from argd.core.errors import InvalidDataset, InvalidInput
from argd.core.metrics import PhaseMetrics, der, evaluate, fidelity
from argd.core.params import CleanseParams
from argd.core.spec import ModelSpec
from argd.core.trainer import ProgressCallback, ProgressEvent, Trainer

__all__ = ["CleanseResult", "ProgressEvent", "run_cleanse", "split_validation"]


@dataclass
class CleanseResult:
    """What a cleanse job produced. `model` is the cleansed student on the CPU in eval mode.

    `metrics`: {"before", "teacher", "after"} phase dicts of {"acc", "asr", "ra"} fractions (None where the
    data could not measure it; "teacher" is None for plain fine-tuning), plus "der" and "fidelity".
    `history`: per-epoch dicts of both phases. `selection`: "last" or "validation"; `selected_epoch` is the
    student epoch whose weights were returned. `feature_layers` and `beta`: the attention levels and node
    weights actually used (empty / None when no distillation term ran).
    """

    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    params: CleanseParams
    selection: str
    selected_epoch: int
    seconds: float
    feature_layers: list[str] = field(default_factory=list)
    beta: list[float] | None = None


def split_validation(clean: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData | None]:
    """(train, val): a seeded random `fraction` of the clean subset held out; (clean, None) for 0."""
    if fraction <= 0:
        return clean, None
    count = round(len(clean) * fraction)
    if count < 1 or len(clean) - count < 2:
        raise InvalidInput(
            f"val_fraction={fraction} of {len(clean)} clean images leaves no usable validation or training "
            "split"
        )
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(seed))
    return clean.subset(order[count:]), clean.subset(order[:count])


def _check_data(name: str, data: ImageData | None, spec: ModelSpec) -> None:
    if data is None:
        return
    expected = (spec.in_channels, spec.image_size, spec.image_size)
    if tuple(data.x.shape[1:]) != expected:
        raise InvalidDataset(
            f"{name} images are {list(data.x.shape[1:])} (C, H, W) but the model expects {list(expected)}",
            details={"dataset": name, "shape": list(data.x.shape[1:]), "expected": list(expected)},
        )
    if len(data) == 0:
        raise InvalidDataset(f"{name} dataset is empty", details={"dataset": name})
    low, high = int(data.y.min()), int(data.y.max())
    if low < 0 or high >= spec.num_classes:
        raise InvalidDataset(
            f"{name} labels span [{low}, {high}] but the model has {spec.num_classes} classes",
            details={"dataset": name, "min": low, "max": high, "num_classes": spec.num_classes},
        )


def _fingerprint(params: CleanseParams, clean: ImageData, spec: ModelSpec, has_teacher: bool) -> str:
    """Identifies the job a checkpoint belongs to (settings and data size, not the data bytes)."""
    text = f"{params.model_dump_json()}|{spec.model_dump_json()}|{len(clean)}|{has_teacher}"
    return hashlib.sha256(text.encode()).hexdigest()


def _on_device(data: ImageData | None, device: torch.device) -> ImageData | None:
    return None if data is None else ImageData(data.x.to(device), data.y.to(device))


def run_cleanse(
    model: nn.Module,
    spec: ModelSpec,
    params: CleanseParams,
    clean: ImageData,
    test: ImageData | None = None,
    poisoned: ImageData | None = None,
    target_label: int | None = None,
    teacher: nn.Module | None = None,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    *,
    teacher_spec: ModelSpec | None = None,
    known_metrics: dict[str, PhaseMetrics] | None = None,
) -> CleanseResult:
    """Run a whole cleanse job; see the module docstring. `model` and `teacher` are never modified.

    `known_metrics` ("before" and/or "teacher") are taken as measured instead of measuring again: a caller
    that cleanses one model many ways (the benchmark) measures the uploaded model and a shared teacher once.

    `teacher_spec` describes an uploaded teacher of another architecture (its attention levels); by default
    the teacher is taken to share `spec`. Raises InvalidInput/InvalidDataset for unusable inputs,
    Cancelled when `should_cancel()` turns True, ArgdError("diverged") when the loss stops being finite.
    """
    started = time.perf_counter()
    run_device = resolve_device(device)
    for name, data in (("clean", clean), ("test", test), ("poisoned", poisoned)):
        _check_data(name, data, spec)
    if poisoned is not None and target_label is None:
        raise InvalidInput("a poisoned evaluation set needs target_label")
    if target_label is not None and not 0 <= target_label < spec.num_classes:
        raise InvalidInput(f"target_label {target_label} is outside [0, {spec.num_classes})")
    problem = params.teacher_problem(uploaded=teacher is not None)
    if problem is not None:
        raise InvalidInput(problem)
    previous_threads = torch.get_num_threads()
    if params.num_threads is not None:
        torch.set_num_threads(params.num_threads)
    try:
        return _run(
            model,
            spec,
            params,
            clean,
            test,
            poisoned,
            target_label,
            teacher,
            teacher_spec,
            run_device,
            progress,
            should_cancel,
            checkpoint_path,
            started,
            dict(known_metrics or {}),
        )
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    model: nn.Module,
    spec: ModelSpec,
    params: CleanseParams,
    clean: ImageData,
    test: ImageData | None,
    poisoned: ImageData | None,
    target_label: int | None,
    given_teacher: nn.Module | None,
    teacher_spec: ModelSpec | None,
    device: torch.device,
    progress: ProgressCallback | None,
    should_cancel: Callable[[], bool] | None,
    checkpoint_path: str | os.PathLike[str] | None,
    started: float,
    known_metrics: dict[str, PhaseMetrics],
) -> CleanseResult:
    fingerprint = _fingerprint(params, clean, spec, given_teacher is not None)
    state = load_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    if state is not None and state.get("fingerprint") != fingerprint:
        raise CheckpointError("the checkpoint belongs to another job (different settings or data); remove it")
    stage = state["stage"] if state is not None else None
    metrics: dict[str, Any] = dict(state["metrics"]) if state is not None else dict(known_metrics)

    train, val = split_validation(clean, params.val_fraction, params.seed)
    train_d, val_d = _on_device(train, device), _on_device(val, device)
    assert train_d is not None
    base = copy.deepcopy(model).to(device)
    if params.channels_last:
        base = in_memory_format(base, torch.channels_last)

    def measure(name: str, net: nn.Module) -> PhaseMetrics:
        result = evaluate(
            net,
            spec,
            device,
            test=test,
            poisoned=poisoned,
            target_label=target_label,
            batch_size=params.eval_batch_size,
        )
        if progress is not None:
            progress(ProgressEvent("evaluate", 0, 0, 0, 0, {}, {name: dict(result)}))
        return result

    def save(stage_name: str, trainer: Trainer, extra: dict[str, Any]) -> None:
        if checkpoint_path is None:
            return
        save_checkpoint(
            checkpoint_path,
            {
                "fingerprint": fingerprint,
                "stage": stage_name,
                "metrics": metrics,
                "trainer": trainer.state_dict(),
                **extra,
            },
        )

    if "before" not in metrics:
        metrics["before"] = measure("before", base)

    # Teacher: the uploaded one, a copy of the model tuned by the teacher recipe (fine-tuning, FST or SAM),
    # or none for the methods that learn from no teacher.
    teacher_net: nn.Module | None = None
    teacher_history: list[dict[str, Any]] = []
    if params.needs_teacher:
        teacher_net = (
            copy.deepcopy(given_teacher).to(device) if given_teacher is not None else copy.deepcopy(base)
        )
        if params.channels_last:
            teacher_net = in_memory_format(teacher_net, torch.channels_last)
        if stage == "distill":
            teacher_net.load_state_dict(state["teacher"])  # type: ignore[index]
            teacher_history = list(state["teacher_history"])  # type: ignore[index]
        elif given_teacher is None and params.teacher_epochs > 0:
            teacher_trainer = Trainer(
                teacher_net,
                train_d,
                spec,
                params,
                phase="teacher",
                device=device,
                val=val_d,
                progress=progress,
                should_cancel=should_cancel,
                on_epoch_end=lambda t: save("teacher", t, {}),
            )
            if stage == "teacher":
                teacher_trainer.load_state_dict(state["trainer"])  # type: ignore[index]
            teacher_history = teacher_trainer.fit()
        if "teacher" not in metrics:
            metrics["teacher"] = measure("teacher", teacher_net)
    else:
        metrics["teacher"] = None

    student = copy.deepcopy(base)
    teacher_state = cpu_state(teacher_net) if teacher_net is not None else None
    trainer = Trainer(
        student,
        train_d,
        spec,
        params,
        phase="distill",
        device=device,
        teacher=teacher_net,
        teacher_spec=teacher_spec if given_teacher is not None else None,
        uploaded=base,
        val=val_d,
        progress=progress,
        should_cancel=should_cancel,
        on_epoch_end=lambda t: save(
            "distill", t, {"teacher": teacher_state, "teacher_history": teacher_history}
        ),
    )
    if stage == "distill":
        trainer.load_state_dict(state["trainer"])  # type: ignore[index]
    history = teacher_history + trainer.fit()

    metrics["after"] = measure("after", student)
    metrics["der"] = der(metrics["before"], metrics["after"])
    metrics["fidelity"] = fidelity(metrics["before"], metrics["after"])

    selected = trainer.epoch
    if params.selection == "validation" and trainer.best is not None:
        selected = int(trainer.best["epoch"])
    student = in_memory_format(student.to("cpu"), torch.contiguous_format).eval()
    return CleanseResult(
        model=student,
        metrics=metrics,
        history=history,
        params=params,
        selection=params.selection,
        selected_epoch=selected,
        seconds=time.perf_counter() - started,
        feature_layers=trainer.layers,
        beta=trainer.beta,
    )
