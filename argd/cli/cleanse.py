"""`argd cleanse`: the one-shot command. Model and data in, cleansed model and JSON report out; no server.

Made for pipeline steps: every input is checked before any training starts, failures are one line on
stderr with a non-zero exit code, and the report records parameters, versions and file hashes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from argd.cli.argtypes import existing_file, float_list
from argd.cli.common import (
    EXIT_OK,
    ArgumentParser,
    CliError,
    given,
    info,
    json_object_file,
    percent,
    preset_params,
    validation_message,
)
from argd.core.params import Method, TeacherSource

#: What --teacher-recipe offers: every teacher source but an uploaded model (that is --teacher FILE).
TEACHER_RECIPES = tuple(t for t in get_args(TeacherSource) if t != "uploaded")

MODEL_FILE = "model.safetensors"
REPORT_FILE = "report.json"


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add `argd cleanse` to the command tree."""
    p = commands.add_parser(
        "cleanse",
        help="remove a backdoor from a model file (one shot, no server)",
        description="Make a clean teacher from the model on the clean subset, distil a cleansed student "
        "(ARGD; or NAD, plain fine-tuning, FST, FT-SAM), and write "
        f"OUT/{MODEL_FILE} and OUT/{REPORT_FILE}.",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--model", type=existing_file, required=True, help=".safetensors or weights-only .pt/.pth"
    )
    add_spec_arguments(model)
    model.add_argument(
        "--teacher",
        type=existing_file,
        help="teacher weights (same spec); default: a copy of the model tuned by --teacher-recipe",
    )

    data = p.add_argument_group("data (.npz with x uint8 and y int, or a .zip of class folders)")
    data.add_argument("--clean", type=existing_file, required=True, help="the clean subset to train on")
    data.add_argument("--test", type=existing_file, help="clean test set for ACC")
    data.add_argument(
        "--poisoned", type=existing_file, help="triggered images with their ORIGINAL labels, for ASR"
    )
    data.add_argument("--target-label", type=int, help="the backdoor's target class (needs --poisoned)")

    hp = p.add_argument_group("parameters (preset, then --params file, then these flags)")
    hp.add_argument("--preset", choices=["default", "reference"], default="default")
    hp.add_argument("--params", type=existing_file, help="JSON object of CleanseParams fields")
    hp.add_argument("--method", choices=get_args(Method))
    hp.add_argument(
        "--teacher-recipe",
        choices=TEACHER_RECIPES,
        help="how argd/nad make their teacher from the model (default: the preset's; --teacher FILE "
        "uses an uploaded one instead)",
    )
    hp.add_argument("--epochs", type=int)
    hp.add_argument("--teacher-epochs", type=int)
    hp.add_argument("--batch-size", type=int)
    hp.add_argument("--lr", type=float)
    hp.add_argument("--seed", type=int)
    hp.add_argument("--threads", type=int, help="CPU threads for torch")

    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    run.add_argument("--out", type=Path, required=True, help="output folder (created)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    run.add_argument("--json", action="store_true", help="print the report on stdout instead of the summary")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Validate everything cheap first, then load, train, and write the outputs."""
    spec = build_spec(args)
    params = build_params(args)
    _check_target(args, spec.num_classes)
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out} exists and is not a folder")

    import torch

    from argd.cli.progress import PhaseBar, bar_enabled, engine_progress
    from argd.core.data import load_dataset
    from argd.core.device import resolve_device
    from argd.core.pipeline import run_cleanse
    from argd.core.report import build_report
    from argd.core.weights import load_model, save_weights

    device = resolve_device(args.device)
    if params.num_threads:
        torch.set_num_threads(params.num_threads)

    model = _load_model(load_model, args.model, "model", spec)
    teacher = _load_model(load_model, args.teacher, "teacher", spec) if args.teacher else None
    clean = _load_data(load_dataset, args.clean, "clean", spec)
    test = _load_data(load_dataset, args.test, "test", spec) if args.test else None
    poisoned = _load_data(load_dataset, args.poisoned, "poisoned", spec) if args.poisoned else None
    info(
        f"argd cleanse: {spec.architecture}, method {params.method}, {len(clean)} clean images, "
        f"device {device}",
        args.quiet or args.json,
    )

    out_dir = _prepare_out(args.out)  # only once every input has passed its checks
    with PhaseBar(bar_enabled(args.quiet)) as bar:
        result = run_cleanse(
            model,
            spec,
            params,
            clean,
            test=test,
            poisoned=poisoned,
            target_label=args.target_label,
            teacher=teacher,
            device=str(device),
            progress=engine_progress(bar),
        )

    model_path = out_dir / MODEL_FILE
    save_weights(result.model, model_path)
    inputs = {
        "model": args.model,
        "teacher": args.teacher,
        "clean": args.clean,
        "test": args.test,
        "poisoned": args.poisoned,
        "params": args.params,
        "spec": args.spec,
    }
    report = build_report(
        result,
        inputs,
        {"model": model_path},
        spec=spec,
        target_label=args.target_label,
        device=str(device),
        extra={"command": "argd cleanse", "preset": args.preset},
    )
    report_path = out_dir / REPORT_FILE
    tmp = report_path.with_name(REPORT_FILE + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(report_path)

    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(summary_table(report["metrics"]))
        print(f"wrote {model_path} and {report_path}")
    return EXIT_OK


def add_spec_arguments(group: Any) -> None:
    """The model spec flags, shared with `argd submit`."""
    group.add_argument(
        "--spec", type=existing_file, help="model spec JSON (as the REST API takes); flags override it"
    )
    group.add_argument("--architecture", help="registry id, e.g. wrn-16-1, small-cnn, resnet18")
    group.add_argument("--num-classes", type=int)
    group.add_argument("--in-channels", type=int)
    group.add_argument("--image-size", type=int)
    group.add_argument("--mean", type=float_list, help="normalisation mean: one value or one per channel")
    group.add_argument("--std", type=float_list, help="normalisation std: one value or one per channel")
    group.add_argument("--arch-kwargs", help="JSON object of architecture options")


def build_spec(args: argparse.Namespace, check_architecture: bool = True) -> Any:
    """The ModelSpec from --spec and the flags; any problem is one CliError line.

    The architecture is checked against the local registry only when asked: `argd submit` leaves that to
    the server, so a client needs no torch.
    """
    from pydantic import ValidationError

    from argd.core.spec import ModelSpec

    data = json_object_file(args.spec, "--spec")
    flags = {
        "architecture": args.architecture,
        "num_classes": args.num_classes,
        "in_channels": args.in_channels,
        "image_size": args.image_size,
        "mean": args.mean,
        "std": args.std,
    }
    data.update(given(flags))
    if args.arch_kwargs:
        try:
            data["arch_kwargs"] = json.loads(args.arch_kwargs)
        except json.JSONDecodeError as exc:
            raise CliError(f"--arch-kwargs is not valid JSON: {exc}") from None
    required = {
        "architecture": "--architecture",
        "num_classes": "--num-classes",
        "in_channels": "--in-channels",
        "image_size": "--image-size",
    }
    missing = [flag for key, flag in required.items() if key not in data]
    if missing:
        raise CliError(f"the model spec needs {', '.join(missing)} (or --spec FILE.json)")
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise CliError(f"invalid model spec: {validation_message(exc)}") from None
    if check_architecture:
        _check_architecture(spec.architecture)
    return spec


def build_params(args: argparse.Namespace) -> Any:
    """CleanseParams: the preset, overlaid by the --params file, overlaid by the flags."""
    overrides = json_object_file(args.params, "--params", "a JSON object of parameters")
    flags = {
        "method": args.method,
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "num_threads": args.threads,
    }
    overrides.update(given(flags))
    if getattr(args, "teacher_recipe", None):
        overrides["teacher"] = args.teacher_recipe
    elif getattr(args, "teacher", None) and "teacher" not in overrides:
        overrides["teacher"] = "uploaded"
    return preset_params(args.preset, overrides)


def summary_table(metrics: dict[str, Any]) -> str:
    """Before / teacher / after, ACC, ASR and RA as percentages, then DER and fidelity."""
    rows = [f"{'':10}{'ACC':>10}{'ASR':>10}{'RA':>10}"]
    for phase in ("before", "teacher", "after"):
        values = metrics.get(phase) or {}
        rows.append(
            f"{phase:10}{percent(values.get('acc')):>10}{percent(values.get('asr')):>10}{percent(values.get('ra')):>10}"
        )
    extras = []
    for name in ("der", "fidelity"):
        value = metrics.get(name)
        extras.append(
            f"{name.upper() if name == 'der' else name} {value:.3f}" if value is not None else f"{name} -"
        )
    rows.append("  ".join(extras))
    return "\n".join(rows)


def _check_architecture(architecture: str) -> None:
    from argd.core.architectures import ARCHITECTURES

    if architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CliError(f"unknown architecture {architecture!r}; known: {known}")


def _check_target(args: argparse.Namespace, num_classes: int) -> None:
    if args.poisoned and args.target_label is None:
        raise CliError("--poisoned needs --target-label (the backdoor's target class)")
    if args.target_label is not None:
        if not args.poisoned:
            raise CliError("--target-label needs --poisoned (the triggered images to measure ASR on)")
        if not 0 <= args.target_label < num_classes:
            raise CliError(f"--target-label {args.target_label} is not a class index in [0, {num_classes})")


def _prepare_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    return out


def _load_model(loader: Any, path: Path, role: str, spec: Any) -> Any:
    """Load weights strictly against the spec; the engine's message gets the option and file in front."""
    from argd.core.errors import InvalidInput

    try:
        return loader(path, spec)
    except InvalidInput as exc:
        raise CliError(f"--{role} {path.name}: {exc.message}") from None


def _load_data(loader: Any, path: Path, role: str, spec: Any) -> Any:
    """Load one data file; the engine's message gets the role ('clean', 'test', ...) in front."""
    from argd.core.errors import InvalidInput

    try:
        return loader(
            path, in_channels=spec.in_channels, image_size=spec.image_size, num_classes=spec.num_classes
        )
    except InvalidInput as exc:
        raise CliError(f"--{role} {path.name}: {exc.message}") from None
