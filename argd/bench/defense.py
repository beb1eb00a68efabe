"""`argd bench defense`: fine-tuning, NAD, FST, FT-SAM and ARGD on backdoored models, one row per attack.

For every row (an attack, or an attack at its own poisoning rate such as `badnets@0.01`): a backdoored model
is trained with augmentation (or loaded from the cache), a clean subset is drawn (seeded) from the training
images the attack left untouched, and every defense runs through the engine's `run_cleanse` on that same
subset, with the same seed and epoch budget, and is evaluated on the same clean test set (ACC) and triggered
non-target test set (ASR). The baselines are the same trainer at their published settings: plain fine-tuning,
NAD (a fine-tuned teacher, node term only), FST and FT-SAM.

Then every cleansed model, and the clean model as the floor, faces the retuning attack
(`argd.bench.retune`): a short fine-tuning with five poisoned images mixed in, after which the ASR is measured
again. With `--seeds`, the defenses of `--seed-defenses` run again with each further seed (same victims, same
clean subset), and the tables give the mean and the spread.

Runs that share a teacher recipe share the teacher: it depends only on the teacher settings, the seed and the
clean subset, so it is made once per row and settings and handed to each run (the result is what each run
would have computed for itself, without paying for it twice).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

import argd
from argd.bench.attacks import ALL_ATTACKS, QUICK_ATTACKS
from argd.bench.backdoor import (
    ATTACK_SETTINGS,
    TrainSettings,
    Victim,
    data_fingerprint,
    default_cache_dir,
    train_backdoored,
    train_clean,
)
from argd.bench.report import summarise, write_defense_report
from argd.bench.retune import Retune, retune_asr, split_retune_images
from argd.bench.speed import device_description
from argd.core.architectures import build_model
from argd.core.attacks import ATTACKS, make_attack
from argd.core.data import ImageData, load_dataset, load_fashion_mnist
from argd.core.device import resolve_device
from argd.core.errors import InvalidInput
from argd.core.features import default_node_weights, resolve_feature_layers
from argd.core.metrics import evaluate
from argd.core.params import CleanseParams
from argd.core.pipeline import ProgressEvent, run_cleanse, split_validation
from argd.core.spec import ModelSpec
from argd.core.trainer import Trainer

#: ARGD variants for the ablation switches: name -> (description, CleanseParams overrides on ARGD's params).
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "frozen-embedding": (
        "embedding projections frozen at their seeded random init (as released)",
        {"embedding_trainable": False},
    ),
    "no-edge": ("edge term off", {"w_edge": 0.0}),
    "no-embedding": ("embedding term off", {"w_emb": 0.0}),
    "uniform-beta": (
        "node weight equal on every level (the mean of the per-level weights)",
        {"beta_uniform": True},
    ),
    "node-x0.5": ("node weight halved", {"w_node_scale": 0.5}),
    "node-x2": ("node weight doubled", {"w_node_scale": 2.0}),
    "no-attention": (
        "no attention term (node, edge, embedding off): logit distillation and the FST head alone",
        {"w_node": 0.0, "w_edge": 0.0, "w_emb": 0.0},
    ),
    "no-logit": ("logit distillation off", {"w_logit": 0.0}),
    "keep-head": ("the student keeps the uploaded head (no FST head term)", {"student_head": "keep"}),
    "teacher-finetune": ("teacher fine-tuned with cross-entropy instead of FST", {"teacher": "finetune"}),
    "no-student-sam": ("the student tuned with plain SGD steps (no SAM)", {"student_sam": False}),
}
DEFENSES = ("finetune", "nad", "fst", "ft-sam", "argd")
#: The --quick smoke run's defenses: ARGD and the strongest baseline (every defense runs in the full one).
QUICK_DEFENSES = ("fst", "argd")
#: The baselines' published settings where they differ from the shared defaults: NAD distils from a
#: teacher fine-tuned for 5 epochs into a student that keeps its head and takes plain SGD steps (Li et al.,
#: ICLR 2021).
BASELINE_SETTINGS: dict[str, dict[str, Any]] = {
    "nad": {"teacher": "finetune", "teacher_epochs": 5, "student_head": "keep", "student_sam": False}
}
#: Rows at a low poisoning rate, where plain fine-tuning fails most (FST's paper).
LOW_RATE_ROWS = ("badnets@0.01", "blend@0.01")
#: Defenses that run on every seed of `--seeds` (the default ARGD and the two strongest baselines).
SEED_DEFENSES = ("argd", "fst", "ft-sam")
#: Attacks whose trigger is a local patch (the retuning target compares these with the clean floor).
PATCH_ATTACKS = ("badnets", "trojan", "cl")
DEFAULT_ABLATIONS = ("no-student-sam", "no-attention", "no-logit", "keep-head", "no-edge")
DEFAULT_ABLATION_ATTACKS = ("badnets", "blend")
#: Fields of CleanseParams that determine the teacher besides its recipe (same values -> same teacher).
TEACHER_FIELDS = (
    "seed",
    "teacher",
    "batch_size",
    "teacher_epochs",
    "teacher_lr",
    "teacher_lr_schedule",
    "momentum",
    "nesterov",
    "weight_decay",
    "crop_padding",
    "flip",
    "cutout",
    "val_fraction",
    "amp",
    "channels_last",
)


@dataclass
class DefenseConfig:
    """Every setting of a defense benchmark run (all of it goes into the JSON)."""

    out: Path = Path("bench-results/defense")
    attacks: list[str] = field(default_factory=lambda: [*ALL_ATTACKS, *LOW_RATE_ROWS])
    data_root: Path = Path("/usr/share/datasets/fashion-mnist")
    train_npz: Path | None = None
    test_npz: Path | None = None
    train_size: int | None = 20_000
    test_size: int | None = None
    architecture: str = "wrn-16-1"
    target: int = 0
    poison_rate: float = 0.1
    clean_label_rate: float = 0.05
    attack_settings: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(ATTACK_SETTINGS))
    clean_fraction: float = 0.05
    clean_size: int | None = None
    seed: int = 0
    backdoor: TrainSettings = field(default_factory=TrainSettings)
    defenses: list[str] = field(default_factory=lambda: list(DEFENSES))
    preset: str = "default"
    overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    teacher_epochs: int | None = None
    reference: bool = True
    ablations: list[str] = field(default_factory=lambda: list(DEFAULT_ABLATIONS))
    ablation_attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ABLATION_ATTACKS))
    cache_dir: Path = field(default_factory=default_cache_dir)
    device: str = "auto"
    amp: str = "auto"
    threads: int | None = None
    quick: bool = False
    retune: bool = True
    seeds: list[int] = field(default_factory=list)
    seed_defenses: list[str] = field(default_factory=lambda: list(SEED_DEFENSES))


def split_row(row: str) -> tuple[str, float | None]:
    """("badnets", 0.01) for the row "badnets@0.01"; (attack, None) for a row at the attack's own rate."""
    attack, at, rate = row.partition("@")
    if not at:
        return row, None
    try:
        value = float(rate)
    except ValueError:
        raise InvalidInput(f"row {row!r}: the poisoning rate after '@' must be a number") from None
    if not 0.0 < value <= 1.0:
        raise InvalidInput(f"row {row!r}: the poisoning rate must be in (0, 1]")
    return attack, value


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise InvalidInput(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def parse_attack_settings(texts: list[str]) -> dict[str, dict[str, Any]]:
    """The benchmark's attack settings with `ATTACK.KEY=VALUE` (or `ROW.KEY=VALUE`) overrides applied."""
    settings = copy.deepcopy(ATTACK_SETTINGS)
    for text in texts:
        key, value = _parse_override(text)
        attack, dot, name = key.rpartition(".")  # a row's own rate holds a dot: badnets@0.01.size
        if not dot or not attack or not name:
            raise InvalidInput(f"--attack-set expects ATTACK.KEY=VALUE (e.g. sig.delta=30), got {text!r}")
        settings.setdefault(attack.lower(), {})[name] = value
    return settings


def attack_rate(config: DefenseConfig, row: str) -> float:
    """The poisoning rate of `row`: the rate after its '@', else its attack's own `rate` setting if it has
    one, else the clean-label rate for clean-label attacks and the dirty-label rate for the others."""
    attack, rate = split_row(row)
    if rate is not None:
        return rate
    default = config.clean_label_rate if ATTACKS[attack].clean_label else config.poison_rate
    return float(config.attack_settings.get(attack, {}).get("rate", default))


def attack_kwargs(config: DefenseConfig, row: str) -> dict[str, Any]:
    """The settings `make_attack` takes for the attack of `row` (its rate is passed separately): the
    attack's, with the row's own (settings keyed by the row, e.g. "badnets@0.01") on top."""
    attack, _ = split_row(row)
    merged = {**config.attack_settings.get(attack, {}), **config.attack_settings.get(row, {})}
    return {k: v for k, v in merged.items() if k != "rate"}


def config_from_args(args: argparse.Namespace) -> DefenseConfig:
    """Turn parsed `argd bench defense` arguments into a config; --quick fills in small sizes."""
    quick = bool(args.quick)
    # --quick: fewer, smaller batches (more steps for the same compute), so even the smoke run's victims
    # carry a real backdoor.
    backdoor = TrainSettings(
        epochs=args.backdoor_epochs or (5 if quick else TrainSettings.epochs),
        lr=args.backdoor_lr or TrainSettings.lr,
        batch_size=64 if quick else TrainSettings.batch_size,
    )
    if args.ablations is None:
        ablations = [] if quick else list(DEFAULT_ABLATIONS)
    elif args.ablations == ["none"]:
        ablations = []
    elif args.ablations == ["all"]:
        ablations = list(ABLATIONS)
    else:
        ablations = list(args.ablations)
    config = DefenseConfig(
        out=args.out or Path("bench-results/defense-quick" if quick else "bench-results/defense"),
        attacks=list(args.attacks or (QUICK_ATTACKS if quick else (*ALL_ATTACKS, *LOW_RATE_ROWS))),
        data_root=args.data_root,
        train_npz=args.train_npz,
        test_npz=args.test_npz,
        train_size=args.train_size or (4000 if quick else 20_000),
        test_size=args.test_size or (500 if quick else None),
        architecture=args.architecture,
        target=args.target,
        poison_rate=args.poison_rate,
        clean_label_rate=args.clean_label_rate,
        attack_settings=parse_attack_settings(args.attack_overrides),
        clean_fraction=args.clean_fraction,
        clean_size=args.clean_size or (400 if quick else None),
        seed=args.seed,
        backdoor=backdoor,
        defenses=list(args.defenses or (QUICK_DEFENSES if quick else DEFENSES)),
        preset=args.preset,
        overrides=dict(_parse_override(t) for t in args.overrides),
        epochs=args.epochs or (2 if quick else None),
        teacher_epochs=args.teacher_epochs or (2 if quick else None),
        reference=(not quick) if args.reference is None else bool(args.reference),
        ablations=ablations,
        ablation_attacks=list(args.ablation_attacks or DEFAULT_ABLATION_ATTACKS),
        cache_dir=args.cache_dir or default_cache_dir(),
        device=args.device,
        amp=args.amp,
        threads=args.threads,
        quick=quick,
        retune=bool(args.retune),
        seeds=list(args.seeds or []),
        seed_defenses=list(args.seed_defenses or SEED_DEFENSES),
    )
    validate(config)
    return config


def validate(config: DefenseConfig) -> None:
    """Reject unknown attacks, ablations and parameter overrides before anything is trained."""
    unknown = [a for a in config.attacks if split_row(a)[0] not in ATTACKS]
    if unknown:
        raise InvalidInput(
            f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)} (a row may add its own "
            "poisoning rate, e.g. badnets@0.01)"
        )
    unknown = [a for a in config.attack_settings if split_row(a)[0] not in ATTACKS]
    if unknown:
        raise InvalidInput(f"--attack-set names unknown attack(s) {', '.join(unknown)}")
    own_rate = [a for a, values in config.attack_settings.items() if split_row(a)[1] and "rate" in values]
    if own_rate:
        raise InvalidInput(
            f"--attack-set {own_rate[0]}.rate: a row's poisoning rate is the number after its '@'"
        )
    for row in config.attacks:  # build each attack once, so a bad setting fails before any training
        try:
            make_attack(split_row(row)[0], rate=attack_rate(config, row), **attack_kwargs(config, row))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"bad --attack-set value for {row}: {exc}") from exc
    unknown = [d for d in config.defenses if d not in DEFENSES]
    if unknown:
        raise InvalidInput(f"unknown defense(s) {', '.join(unknown)}; known: {', '.join(DEFENSES)}")
    unknown = [d for d in config.seed_defenses if d not in DEFENSES]
    if unknown:
        raise InvalidInput(f"unknown --seed-defenses {', '.join(unknown)}; known: {', '.join(DEFENSES)}")
    unknown = [a for a in config.ablations if a not in ABLATIONS]
    if unknown:
        raise InvalidInput(f"unknown ablation(s) {', '.join(unknown)}; known: {', '.join(ABLATIONS)}")
    try:
        defense_params(config, "argd")  # validates the preset and the overrides
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else None
        detail = (
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors) if errors else str(exc)
        )
        raise InvalidInput(f"bad defense parameters (--preset / --set): {detail}") from exc


# ---------------------------------------------------------------------------------------------- data


def _seeded_subset(data: ImageData, size: int | None, seed: int) -> ImageData:
    if size is None or size >= len(data):
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[:size].sort().values)


def load_data(config: DefenseConfig) -> tuple[ImageData, ImageData, int, str]:
    """(train subset, test subset, size of the full training split, dataset name)."""
    if config.train_npz is not None:
        if config.test_npz is None:
            raise InvalidInput("--train-npz needs --test-npz (the clean test set for ACC and ASR)")
        train, test = load_dataset(config.train_npz), load_dataset(config.test_npz)
        name = config.train_npz.name
    else:
        train = load_fashion_mnist(config.data_root, "train")
        test = load_fashion_mnist(config.data_root, "test")
        name = "fashion-mnist"
    if tuple(train.x.shape[1:]) != tuple(test.x.shape[1:]):
        raise InvalidInput(
            f"train images are {tuple(train.x.shape[1:])} but test images {tuple(test.x.shape[1:])}"
        )
    if train.x.shape[2] != train.x.shape[3]:
        raise InvalidInput(f"the benchmark needs square images, got {tuple(train.x.shape[2:])}")
    full = len(train)
    return (
        _seeded_subset(train, config.train_size, config.seed),
        _seeded_subset(test, config.test_size, config.seed + 1),
        full,
        name,
    )


def make_spec(config: DefenseConfig, train: ImageData) -> ModelSpec:
    """The spec of every model: the architecture, the data geometry, mean/std measured on the train subset."""
    x = train.x.float() / 255.0
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).tolist()
    num_classes = max(int(train.y.max()) + 1, 2)
    return ModelSpec(
        architecture=config.architecture,
        num_classes=num_classes,
        in_channels=int(train.x.shape[1]),
        image_size=int(train.x.shape[2]),
        mean=[round(m, 4) for m in mean],
        std=[round(s, 4) for s in std],
    )


def clean_subset(train: ImageData, excluded: torch.Tensor | None, size: int, seed: int) -> ImageData:
    """`size` images drawn (seeded) from the training images the attack did not touch."""
    keep = torch.ones(len(train), dtype=torch.bool)
    if excluded is not None and excluded.numel():
        keep[excluded] = False
    candidates = torch.nonzero(keep).flatten()
    if size > candidates.numel():
        raise InvalidInput(
            f"clean subset of {size} images asked for, only {candidates.numel()} untouched images"
        )
    order = torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed + 7))
    return train.subset(candidates[order[:size]].sort().values)


# ------------------------------------------------------------------------------------------ defenses


def defense_params(
    config: DefenseConfig,
    method: str,
    preset: str | None = None,
    *,
    spec: ModelSpec | None = None,
    levels: int | None = None,
    **extra: Any,
) -> CleanseParams:
    """CleanseParams of one defense: the preset, the run's overrides and epoch budget, then `extra`.

    Pseudo-fields act on the resolved values: `<field>_scale` multiplies a numeric field (e.g.
    `w_node_scale: 2` doubles the preset's node weight), and `beta_uniform` replaces the per-level node
    weights by their mean on every level. A preset whose `beta`
    has another length than the model's `levels` (the reference's three WRN levels on another network)
    falls back to the architecture's default node weights.
    """
    preset = preset or config.preset
    overrides = dict(config.overrides) if preset == config.preset else {}
    if config.epochs is not None:
        overrides["epochs"] = config.epochs
        base = CleanseParams.preset(preset)
        if base.lr_per_epoch is not None and len(base.lr_per_epoch) != config.epochs:
            overrides["lr_per_epoch"] = None
    if config.teacher_epochs is not None:
        overrides["teacher_epochs"] = config.teacher_epochs
    merged = {**BASELINE_SETTINGS.get(method, {}), **overrides, **extra}
    scales = {k.removesuffix("_scale"): float(merged.pop(k)) for k in list(merged) if k.endswith("_scale")}
    uniform = bool(merged.pop("beta_uniform", False))
    params = CleanseParams.preset(
        preset, **{**merged, "method": method, "seed": config.seed, "amp": config.amp}
    )
    update: dict[str, Any] = {}
    if levels is not None and params.beta is not None and len(params.beta) != levels:
        update["beta"] = None
    for name, factor in scales.items():
        value = getattr(params, name, None)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidInput(f"{name}_scale: {name} is not a numeric parameter")
        update[name] = value * factor
    if uniform:
        if spec is None or levels is None:
            raise ValueError("beta_uniform needs the spec and the number of attention levels")
        beta = update.get("beta", params.beta) or default_node_weights(spec, levels)
        update["beta"] = [sum(beta) / len(beta)] * len(beta)
    if update:
        params = CleanseParams.model_validate({**params.model_dump(), **update})
    return params


def teacher_key(params: CleanseParams) -> str:
    """The teacher's recipe and schedule: settings that only the student reads (e.g. `sam_rho` with an FST
    teacher) share one teacher."""
    fields = {f: getattr(params, f) for f in TEACHER_FIELDS}
    return json.dumps({**fields, "recipe": asdict(params.recipe("teacher"))}, sort_keys=True, default=str)


class TeacherCache:
    """Fine-tuned teachers of one backdoored model, keyed by the settings that determine them."""

    def __init__(self, model: nn.Module, spec: ModelSpec, clean: ImageData, device: torch.device, log: Any):
        self.model, self.spec, self.clean, self.device, self.log = model, spec, clean, device, log
        self.teachers: dict[str, tuple[nn.Module, float, list[dict[str, Any]]]] = {}
        self.metrics: dict[str, Any] = {}
        #: The backdoored model's metrics, measured once per row by the caller.
        self.before: dict[str, Any] | None = None

    def known_metrics(self, params: CleanseParams) -> dict[str, Any]:
        """What is already measured for a run with `params`: the backdoored model, and its teacher."""
        known = {"before": self.before} if self.before is not None else {}
        teacher = self.metrics.get(teacher_key(params)) if params.needs_teacher else None
        return {**known, "teacher": teacher} if teacher is not None else known

    def remember(self, params: CleanseParams, metrics: dict[str, Any]) -> None:
        """Keep the teacher's measured metrics of a finished run for the next run that shares it."""
        if params.needs_teacher and metrics.get("teacher") is not None:
            self.metrics[teacher_key(params)] = metrics["teacher"]

    def get(self, params: CleanseParams, label: str) -> tuple[nn.Module, float, list[dict[str, Any]]]:
        """(teacher on CPU, seconds it took, its history); trained exactly as `run_cleanse` would."""
        key = teacher_key(params)
        if key not in self.teachers:
            started = time.perf_counter()
            teacher = copy.deepcopy(self.model).to(self.device)
            history: list[dict[str, Any]] = []
            if params.teacher_epochs > 0:
                train, val = split_validation(self.clean, params.val_fraction, params.seed)
                trainer = Trainer(
                    teacher,
                    ImageData(train.x.to(self.device), train.y.to(self.device)),
                    self.spec,
                    params,
                    phase="teacher",
                    device=self.device,
                    val=None if val is None else ImageData(val.x.to(self.device), val.y.to(self.device)),
                    progress=_epoch_logger(self.log, f"{label} teacher"),
                )
                history = trainer.fit()
            self.teachers[key] = (teacher.to("cpu").eval(), time.perf_counter() - started, history)
        return self.teachers[key]


def _epoch_logger(log: Any, label: str) -> Any:
    def progress(event: ProgressEvent) -> None:
        if event.end_of_epoch:
            losses = " ".join(f"{k}={v:.4g}" for k, v in event.losses.items() if v)
            log(f"{label} epoch {event.epoch}/{event.epochs} {losses}")

    return progress


def run_one_defense(
    name: str,
    params: CleanseParams,
    victim: Victim,
    spec: ModelSpec,
    clean: ImageData,
    test: ImageData,
    teachers: TeacherCache,
    config: DefenseConfig,
    label: str,
    log: Any,
    retune: Retune | None = None,
) -> dict[str, Any]:
    """One `run_cleanse` call; returns its metrics, timings, term magnitudes and effective parameters, and,
    with `retune` (cleansed model -> {"asr", "seconds"}), the retuning attack's result."""
    teacher: nn.Module | None = None
    teacher_seconds = 0.0
    teacher_history: list[dict[str, Any]] = []
    if params.needs_teacher:
        teacher, teacher_seconds, teacher_history = teachers.get(params, label)
    # The shared teacher goes in as an uploaded one: exactly what this run would have made for itself.
    run_params = params.model_copy(update={"teacher": "uploaded"}) if teacher is not None else params
    result = run_cleanse(
        victim.model,
        spec,
        run_params,
        clean,
        test=test,
        poisoned=victim.eval_set,
        target_label=config.target,
        teacher=teacher,
        device=teachers.device,
        progress=_epoch_logger(log, f"{label} {name}"),
        known_metrics=teachers.known_metrics(params),
    )
    teachers.remember(params, result.metrics)
    after = result.metrics["after"]
    distill = [h for h in result.history if h["phase"] == "distill"]
    weights = params.effective_weights()
    # Weighted magnitude of each term beside the cross-entropy, first and last epoch: the evidence that every
    # term of the graph contributes at a scale comparable with the CE.
    scales = (
        {
            when: {
                "ce": h["losses"]["ce"],
                **{
                    t: weights[t] * h["losses"].get(t, 0.0)
                    for t in ("node", "edge", "emb", "logit", "uploaded")
                },
                "head": h["losses"].get("head", 0.0),
            }
            for when, h in (("first_epoch", distill[0]), ("last_epoch", distill[-1]))
        }
        if distill
        else {}
    )
    row = {
        "method": params.method,
        "seed": params.seed,
        "acc": after["acc"],
        "asr": after["asr"],
        "ra": after["ra"],
        "der": result.metrics["der"],
        "fidelity": result.metrics["fidelity"],
        "teacher": result.metrics.get("teacher"),
        "seconds": result.seconds,
        "teacher_seconds": teacher_seconds,
        "distill_seconds_per_epoch": (sum(h["seconds"] for h in distill) / len(distill)) if distill else None,
        "term_scales": scales,
        "history": teacher_history + result.history,
        "params": params.model_dump(),
        "selection": result.selection,
        "wall_seconds": result.seconds + teacher_seconds,
    }
    if retune is not None:
        row["retune"] = retune(result.model)
    retuned = f", after retuning {_pct(row['retune']['asr'])} %" if retune is not None else ""
    log(
        f"{label} {name}: ACC {_pct(after['acc'])} % ASR {_pct(after['asr'])} %{retuned} "
        f"({result.seconds + teacher_seconds:.1f}s)"
    )
    return row


def seed_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, population standard deviation, min and max of ACC, ASR, retuned ASR and wall time over the
    runs of one defense on one row (one run per seed)."""

    def stats(values: list[float]) -> dict[str, float]:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return {"mean": mean, "std": std, "min": min(values), "max": max(values)}

    metrics = {
        "acc": [r["acc"] for r in runs],
        "asr": [r["asr"] for r in runs],
        "retune_asr": [r["retune"]["asr"] for r in runs if r.get("retune")],
        "wall_seconds": [r["wall_seconds"] for r in runs],
    }
    return {
        "seeds": [r["seed"] for r in runs],
        **{k: stats(vs) for k, vs in metrics.items() if vs and all(v is not None for v in vs)},
    }


# -------------------------------------------------------------------------------------------- checks


def target_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with pass/fail and the numbers behind it."""
    checks: list[dict[str, Any]] = []
    attacks = results["attacks"]
    clean_acc = (results.get("clean_model") or {}).get("acc")

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    weak = [a for a, r in attacks.items() if (r["backdoor"]["asr"] or 0) < 0.95]
    add("every backdoor ASR >= 95 %", not weak, "below: " + (", ".join(weak) or "none"))
    if clean_acc is not None:
        own = {a: (r.get("clean_model") or {}).get("acc", clean_acc) for a, r in attacks.items()}
        far = [a for a, r in attacks.items() if own[a] - (r["backdoor"]["acc"] or 0) > 0.02]
        add(
            "every backdoored ACC within 2 points of the clean model",
            not far,
            f"clean {'/'.join(pct(v) for v in dict.fromkeys(own.values()))}; outside: "
            + (", ".join(far) or "none"),
        )
    erased = [
        a
        for a, r in attacks.items()
        if "finetune" in r["defenses"] and r["defenses"]["finetune"]["asr"] <= 0.05
    ]
    add(
        "no backdoor erased by plain fine-tuning (FT ASR > 5 %)",
        not erased,
        "erased: " + (", ".join(erased) or "none"),
    )
    argd = {a: r["defenses"]["argd"] for a, r in attacks.items() if "argd" in r["defenses"]}
    if not argd:
        return checks
    above2 = {a: m["asr"] for a, m in argd.items() if m["asr"] > 0.02}
    add(
        "ARGD ASR <= 2 % on every row",
        not above2,
        "above: " + (", ".join(f"{a} {pct(v)}" for a, v in above2.items()) or "none"),
    )
    above5 = {a: m["asr"] for a, m in argd.items() if m["asr"] > 0.05}
    add(
        "ARGD ASR never above 5 %",
        not above5,
        "above: " + (", ".join(f"{a} {pct(v)}" for a, v in above5.items()) or "none"),
    )
    drops = {a: attacks[a]["backdoor"]["acc"] - m["acc"] for a, m in argd.items()}
    big = {a: d for a, d in drops.items() if d > 0.015}
    add(
        "ARGD ACC drop <= 1.5 points on every row",
        not big,
        f"max drop {pct(max(drops.values()))}; above: " + (", ".join(big) or "none"),
    )
    mean_drop = sum(drops.values()) / len(drops)
    add("ARGD mean ACC drop <= 1.0 point", mean_drop <= 0.01, f"mean drop {pct(mean_drop)}")
    summary = summarise(results)
    for other in ("finetune", "nad", "fst", "ft-sam"):
        if other in summary:
            a, b = summary["argd"], summary[other]
            add(
                f"ARGD mean ASR strictly below {other}'s at equal or better mean ACC",
                a["asr"] is not None
                and b["asr"] is not None
                and a["asr"] < b["asr"]
                and (a["acc"] or 0) >= (b["acc"] or 0),
                f"ASR {pct(a['asr'])} vs {pct(b['asr'])}, ACC {pct(a['acc'])} vs {pct(b['acc'])}",
            )
    retuned = {
        a: (r["defenses"]["argd"].get("retune") or {}).get("asr")
        for a, r in attacks.items()
        if "argd" in r["defenses"]
    }
    if all(v is not None for v in retuned.values()):
        fst = [(r["defenses"].get("fst", {}).get("retune") or {}).get("asr") for r in attacks.values()]
        if fst and all(v is not None for v in fst):
            mine, theirs = sum(retuned.values()) / len(retuned), sum(fst) / len(fst)  # type: ignore[arg-type]
            add(
                "ARGD mean ASR after retuning below FST's",
                mine < theirs,
                f"{pct(mine)} vs {pct(theirs)}",
            )
        patch_rows = {
            a: (v, (attacks[a].get("retune_floor") or {}).get("asr"))
            for a, v in retuned.items()
            if split_row(a)[0] in PATCH_ATTACKS
        }
        off = {a: (v, f) for a, (v, f) in patch_rows.items() if f is None or v is None or v - f > 0.10}
        add(
            "ARGD retuned ASR within 10 points of the clean model's floor on the patch attacks",
            not off,
            ", ".join(f"{a} {pct(v)} vs floor {pct(f)}" for a, (v, f) in patch_rows.items())
            or "no patch rows",
        )
    return checks


#: Keys of older `defense.json` files (British spelling) -> today's, in the settings and in every row.
_OLD_KEYS = {"defences": "defenses", "seed_defences": "seed_defenses"}


def _with_current_keys(results: dict[str, Any]) -> dict[str, Any]:
    """A loaded `defense.json` with the keys of older files renamed and its parameters completed, so old and
    new files read alike."""

    def renamed(mapping: dict[str, Any]) -> dict[str, Any]:
        return {_OLD_KEYS.get(key, key): value for key, value in mapping.items()}

    # A CleanseParams field added later defaults to what the code did before it existed.
    defaults = CleanseParams().model_dump(mode="json")
    settings = renamed(results["settings"])
    if isinstance(settings.get("params"), dict):
        settings["params"] = {name: {**defaults, **p} for name, p in settings["params"].items()}
    return {
        **results,
        "settings": settings,
        "attacks": {attack: renamed(row) for attack, row in results["attacks"].items()},
    }


def merge_defense_reports(parts: Sequence[Path], out: Path) -> dict[str, Path]:
    """Join `defense.json` of runs over different rows into one report in `out`.

    The runs must share their settings apart from the rows and the timings; the first run's settings are
    kept, with every row in the order the parts list them, and the target checks recomputed. Older files
    (rows under "defences") are read too; the merged report uses today's keys.
    """
    loaded = []
    for part in parts:
        path = part / "defense.json"
        if not path.is_file():
            raise InvalidInput(f"{path} is missing: not the result folder of `argd bench defense`")
        loaded.append(_with_current_keys(json.loads(path.read_text())))
    first = loaded[0]
    ignored = {"attacks", "out", "total_seconds"}
    for other, part in zip(loaded[1:], parts[1:], strict=True):
        a = {k: v for k, v in first["settings"].items() if k not in ignored}
        b = {k: v for k, v in other["settings"].items() if k not in ignored}
        if a != b:
            differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise InvalidInput(f"{part} was run with other settings ({', '.join(differ)}); cannot merge")
    merged: dict[str, Any] = {**first, "attacks": {}, "ablations": {}}
    # Parts run on other machines train their own clean model and victims: each row then keeps its own.
    clean_accs = {(r.get("clean_model") or {}).get("acc") for r in loaded}
    for result in loaded:
        for attack, row in result["attacks"].items():
            if attack in merged["attacks"]:
                raise InvalidInput(f"row {attack} appears in more than one part")
            if len(clean_accs) > 1 and result.get("clean_model"):
                row = {**row, "clean_model": result["clean_model"]}
            merged["attacks"][attack] = row
        for name, variant in (result.get("ablations") or {}).items():
            entry = merged["ablations"].setdefault(name, {**variant, "attacks": {}})
            entry["attacks"].update(variant["attacks"])
    merged["settings"] = {
        **first["settings"],
        "attacks": list(merged["attacks"]),
        "merged_from": [str(p) for p in parts],
        "total_seconds": [r["settings"].get("total_seconds") for r in loaded],
    }
    merged["checks"] = target_checks(merged)
    return write_defense_report(merged, out)


# ------------------------------------------------------------------------------------------------ run


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _logger(prefix_time: float) -> Any:
    def log(message: str) -> None:
        print(f"[{time.perf_counter() - prefix_time:7.1f}s] {message}", flush=True)

    return log


def run_defense_benchmark(config: DefenseConfig, memo: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole benchmark and write the reports; returns the results dictionary.

    `memo` (shared across calls by `argd bench tune`) maps a defense run's identity (victim, data sizes,
    effective parameters; the teacher settings left out for plain fine-tuning, which has no teacher) to its
    result row, and keeps the fine-tuned teachers, so a grid of settings never repeats an identical run.
    """
    started = time.perf_counter()
    log = _logger(started)
    validate(config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    train, test, full_size, dataset = load_data(config)
    spec = make_spec(config, train)
    clean_size = config.clean_size or round(config.clean_fraction * full_size)
    fingerprint = data_fingerprint(train)
    log(
        f"data {dataset}: {len(train)} training images (of {full_size}), {len(test)} test images, "
        f"clean subset {clean_size}; {spec.architecture} on {device}"
    )
    config.cache_dir.mkdir(parents=True, exist_ok=True)

    clean_victim = train_clean(
        train,
        spec,
        config.backdoor,
        seed=config.seed,
        cache_dir=config.cache_dir,
        fingerprint=fingerprint,
        device=device,
        amp=config.amp,
        log=log,
    )
    clean_metrics = evaluate(clean_victim.model.to(device), spec, device, test=test)
    clean_victim.model.to("cpu")
    log(f"clean model: ACC {_pct(clean_metrics['acc'])} %{' (cached)' if clean_victim.cached else ''}")

    levels = len(resolve_feature_layers(build_model(spec), spec))
    shape: dict[str, Any] = {"spec": spec, "levels": levels}
    params = {method: defense_params(config, method, **shape) for method in config.defenses}
    if config.reference:
        params["argd-reference"] = defense_params(config, "argd", preset="reference", **shape)

    results: dict[str, Any] = {
        "settings": {
            **{k: v for k, v in asdict(config).items() if k not in ("backdoor",)},
            "backdoor_training": asdict(config.backdoor),
            "dataset": dataset,
            "train_images": len(train),
            "full_train_images": full_size,
            "test_images": len(test),
            "clean_images": clean_size,
            "spec": spec.model_dump(),
            "device": str(device),
            "device_name": device_description(device),
            "threads": torch.get_num_threads(),
            "params": {name: p.model_dump() for name, p in params.items()},
            "teacher_sharing": "NAD and ARGD distil from one teacher per attack and teacher settings",
            "versions": {
                "argd": argd.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        },
        "clean_model": {**clean_metrics, "cached": clean_victim.cached, "cache_key": clean_victim.key},
        "attacks": {},
    }
    ablation_rows: dict[str, dict[str, Any]] = {
        name: {"description": ABLATIONS[name][0], "overrides": ABLATIONS[name][1], "attacks": {}}
        for name in config.ablations
    }

    def defend(
        name: str,
        p: CleanseParams,
        victim: Victim,
        clean: ImageData,
        teachers: TeacherCache,
        label: str,
        retune: Retune | None = None,
    ) -> dict[str, Any]:
        exclude = set(TEACHER_FIELDS) - {"seed", "batch_size", "amp"} if not p.needs_teacher else set()
        key = (
            f"{victim.key}|{len(clean)}|{len(test)}|{device}|{retune is not None}|"
            f"{p.model_dump_json(exclude=exclude)}"
        )
        if memo is not None and key in memo:
            log(f"{label} {name}: same run as before, result reused")
            return copy.deepcopy(memo[key])
        row = run_one_defense(name, p, victim, spec, clean, test, teachers, config, label, log, retune)
        if memo is not None:
            memo[key] = copy.deepcopy(row)
        return row

    for attack in config.attacks:
        label = f"[{attack}]"
        victim = train_backdoored(
            split_row(attack)[0],
            train,
            test,
            spec,
            config.backdoor,
            rate=attack_rate(config, attack),
            target=config.target,
            seed=config.seed,
            cache_dir=config.cache_dir,
            fingerprint=fingerprint,
            clean_model=lambda: copy.deepcopy(clean_victim.model),
            device=device,
            amp=config.amp,
            log=log,
            attack_kwargs=attack_kwargs(config, attack),
        )
        assert victim.eval_set is not None
        before = evaluate(
            victim.model.to(device),
            spec,
            device,
            test=test,
            poisoned=victim.eval_set,
            target_label=config.target,
        )
        victim.model.to("cpu")
        log(
            f"{label} backdoored model: ACC {_pct(before['acc'])} % ASR {_pct(before['asr'])} %"
            f"{' (cached)' if victim.cached else f' (trained in {victim.seconds:.0f}s)'}"
        )
        clean = clean_subset(train, victim.excluded_index, clean_size, config.seed)
        teachers = TeacherCache(victim.model, spec, clean, device, log)
        if memo is not None:  # one teacher cache per victim and clean subset across calls
            teachers = memo.setdefault(f"teachers|{victim.key}|{len(clean)}|{device}", teachers)
        teachers.before = dict(before)
        row: dict[str, Any] = {
            "backdoor": {
                **before,
                "cached": victim.cached,
                "cache_key": victim.key,
                "rate": attack_rate(config, attack),
                "poisoned_images": int(victim.poisoned_index.numel())
                if victim.poisoned_index is not None
                else None,
                "train_seconds": victim.meta.get("seconds"),
                "eval_images": len(victim.eval_set),
            },
            "defenses": {},
        }
        retune: Retune | None = None
        if config.retune:
            poison, remaining = split_retune_images(victim.eval_set, config.target, config.seed)

            retune = partial(
                retune_asr,
                spec=spec,
                clean=clean,
                poison=poison,
                remaining=remaining,
                target=config.target,
                device=device,
                seed=config.seed,
            )

            row["retune_floor"] = retune(clean_victim.model)
            log(f"{label} clean model after retuning: ASR {_pct(row['retune_floor']['asr'])} %")
        for name, p in params.items():
            row["defenses"][name] = defend(name, p, victim, clean, teachers, label, retune)
        extra_seeds = [seed for seed in config.seeds if seed != config.seed]
        if extra_seeds:
            row["seeds"] = {}
            for name in [d for d in config.seed_defenses if d in params]:
                runs = [row["defenses"][name]]
                for seed in extra_seeds:
                    p = CleanseParams.model_validate({**params[name].model_dump(), "seed": seed})
                    runs.append(defend(name, p, victim, clean, teachers, f"{label}[seed {seed}]", retune))
                row["seeds"][name] = seed_summary(runs)
        results["attacks"][attack] = row
        if attack in config.ablation_attacks:
            for name, entry in ablation_rows.items():
                variant = defense_params(config, "argd", **shape, **ABLATIONS[name][1])
                entry["attacks"][attack] = defend(f"argd[{name}]", variant, victim, clean, teachers, label)
        # Write after every attack so an interrupted run still leaves its finished rows.
        snapshot = {**results, "ablations": ablation_rows, "checks": target_checks(results)}
        write_defense_report(snapshot, config.out)

    results["ablations"] = ablation_rows
    results["checks"] = target_checks(results)
    results["settings"]["total_seconds"] = time.perf_counter() - started
    paths = write_defense_report(results, config.out)
    log(f"done in {time.perf_counter() - started:.0f}s: " + ", ".join(str(p) for p in paths.values()))
    return results
