"""`argd bench speed`: epoch time of fine-tuning, NAD and ARGD beside the bare passes they cannot avoid.

Every method trains the same fresh network on the same images through the engine's `Trainer` (so the numbers
include batched on-device augmentation and, on CUDA, mixed precision). The "bare passes" are the floor any
distillation method pays: student forward + backward + optimiser step, plus one teacher forward, with no loss
term beyond the cross-entropy; they run through the same Trainer with only its step replaced.

The methods are timed side by side: one warm-up epoch each, then the timed epochs round-robin (method A,
B, C, D, A, B, ...), so that a load change on a shared machine hits every method alike; each epoch is
bracketed by device synchronisation on CUDA. Reported: median seconds per epoch, images per second, and the
ratios to the bare passes and to fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from argd.bench.report import write_speed_report
from argd.core.architectures import build_model
from argd.core.data import ImageData, load_dataset, load_fashion_mnist
from argd.core.device import autocast, resolve_device
from argd.core.errors import InvalidInput
from argd.core.params import CleanseParams
from argd.core.spec import ModelSpec
from argd.core.trainer import LOSS_NAMES, Trainer

METHODS = ("bare", "finetune", "nad", "argd")


@dataclass
class SpeedConfig:
    """Settings of one speed run (all of it goes into the JSON)."""

    out: Path = Path("bench-results/speed")
    data_root: Path = Path("/usr/share/datasets/fashion-mnist")
    train_npz: Path | None = None
    architecture: str = "wrn-16-1"
    images: int = 3000
    batch_size: int | None = None
    repeats: int = 5
    preset: str = "default"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    threads: int | None = None
    quick: bool = False


def config_from_args(args: argparse.Namespace) -> SpeedConfig:
    """Turn parsed `argd bench speed` arguments into a config; --quick shrinks the work."""
    quick = bool(args.quick)
    return SpeedConfig(
        out=args.out or Path("bench-results/speed-quick" if quick else "bench-results/speed"),
        data_root=args.data_root,
        train_npz=args.train_npz,
        architecture=args.architecture,
        images=args.images or args.train_size or (512 if quick else 3000),
        batch_size=args.batch_size,
        repeats=args.repeats or (2 if quick else 5),
        preset=args.preset,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        threads=args.threads,
        quick=quick,
    )


class BareTrainer(Trainer):
    """The Trainer with its step reduced to the passes every distillation needs and nothing else."""

    def __init__(self, *args: Any, bare_teacher: nn.Module, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bare_teacher = bare_teacher.eval().requires_grad_(False)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            with torch.no_grad():
                self.bare_teacher(x)
            loss = F.cross_entropy(logits.float(), y)
        self._backward(loss)
        self._apply_step()
        # The LOSS_NAMES values: the cross-entropy is the only term, so it is also the total.
        values = loss.detach().new_zeros(len(LOSS_NAMES))
        values[LOSS_NAMES.index("ce")] = values[LOSS_NAMES.index("total")] = loss.detach()
        return values


def _load_images(config: SpeedConfig) -> ImageData:
    data = (
        load_dataset(config.train_npz) if config.train_npz else load_fashion_mnist(config.data_root, "train")
    )
    if config.images > len(data):
        raise InvalidInput(f"--images {config.images} is more than the {len(data)} images available")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))
    return data.subset(order[: config.images])


def _spec(config: SpeedConfig, data: ImageData) -> ModelSpec:
    x = data.x.float() / 255.0
    return ModelSpec(
        architecture=config.architecture,
        num_classes=max(int(data.y.max()) + 1, 2),
        in_channels=int(data.x.shape[1]),
        image_size=int(data.x.shape[2]),
        mean=[round(v, 4) for v in x.mean(dim=(0, 2, 3)).tolist()],
        std=[round(v, 4) for v in x.std(dim=(0, 2, 3)).tolist()],
    )


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU model and core count, for the reports."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_speed(config: SpeedConfig) -> dict[str, Any]:
    """Time every method side by side and write `speed.md` / `speed.json`; returns the results."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    data = _load_images(config)
    spec = _spec(config, data)
    on_device = ImageData(data.x.to(device), data.y.to(device))
    torch.manual_seed(config.seed)
    base = build_model(spec).to(device)
    teacher = copy.deepcopy(base).eval()
    epochs = config.repeats + 1  # one warm-up epoch

    trainers: dict[str, Trainer] = {}
    for method in METHODS:
        overrides: dict[str, Any] = {"method": "finetune" if method == "bare" else method}
        overrides.update(epochs=epochs, seed=config.seed, amp=config.amp)
        if config.batch_size is not None:
            overrides["batch_size"] = config.batch_size
        params = CleanseParams.preset(config.preset, **overrides)
        student = copy.deepcopy(base).train()
        if method == "bare":
            trainers[method] = BareTrainer(
                student, on_device, spec, params, phase="distill", device=device, bare_teacher=teacher
            )
        else:
            needs = params.needs_teacher
            trainers[method] = Trainer(
                student,
                on_device,
                spec,
                params,
                phase="distill",
                device=device,
                teacher=teacher if needs else None,
            )

    print(
        f"speed: {config.architecture}, {len(data)} images/epoch, batch {trainers['argd'].batch_size}, "
        f"{config.repeats} timed epochs + 1 warm-up per method, on {device}",
        flush=True,
    )
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for epoch in range(epochs):
        for method, trainer in trainers.items():
            trainer.epochs = epoch + 1  # fit() runs exactly one more epoch
            _sync(device)
            started = time.perf_counter()
            trainer.fit()
            _sync(device)
            seconds = time.perf_counter() - started
            if epoch > 0:
                times[method].append(seconds)
            print(f"  epoch {epoch}{' (warm-up)' if epoch == 0 else ''} {method}: {seconds:.3f}s", flush=True)

    methods: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        median = statistics.median(times[method])
        methods[method] = {
            "seconds_per_epoch": median,
            "images_per_second": len(data) / median,
            "epoch_seconds": times[method],
        }
    bare = methods["bare"]["seconds_per_epoch"]
    finetune = methods["finetune"]["seconds_per_epoch"]
    for row in methods.values():
        row["ratio_to_bare"] = row["seconds_per_epoch"] / bare
        row["ratio_to_finetune"] = row["seconds_per_epoch"] / finetune
    results = {
        "settings": {
            **asdict(config),
            "images": len(data),
            "batch_size": trainers["argd"].batch_size,
            "device": str(device),
            "device_name": device_description(device),
            "amp": str(trainers["argd"].amp_dtype) if trainers["argd"].amp_dtype is not None else None,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "params": trainers["argd"].params.model_dump(),
        },
        "methods": methods,
    }
    paths = write_speed_report(results, config.out)
    for method, row in methods.items():
        print(
            f"{method:>9}: {row['seconds_per_epoch']:.3f} s/epoch, {row['images_per_second']:.0f} img/s, "
            f"x{row['ratio_to_bare']:.2f} bare, x{row['ratio_to_finetune']:.2f} fine-tuning",
            flush=True,
        )
    print("wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
    return results
