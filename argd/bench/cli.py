"""`argd bench defense|tune|speed|api-latency|upload-memory`: argument parsing only.

The work is in `argd.bench.defense`, `argd.bench.tune`, `argd.bench.speed` and the service benchmarks; those
that need torch are imported when their command runs, so parsing (and `--help`) stays quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from argd.bench.attacks import ALL_ATTACKS
from argd.bench.service import add_subcommands, run_from_args
from argd.cli.argtypes import csv_list, fraction, positive_int, whole_number_list
from argd.core.errors import ArgdError

__all__ = ["DEFAULT_DATA_ROOT", "build_parser", "main"]

DEFAULT_DATA_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _add_common(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument(
        "--data-root",
        type=Path,
        default=DEFAULT_DATA_ROOT,
        help="Fashion-MNIST IDX folder (default: %(default)s, Debian package dataset-fashion-mnist)",
    )
    data.add_argument(
        "--train-npz", type=Path, help="training set in the project's .npz format (x uint8, y int)"
    )
    data.add_argument(
        "--test-npz", type=Path, help="test set in the project's .npz format; needs --train-npz"
    )
    data.add_argument(
        "--train-size", type=positive_int, help="use a seeded subset of this many training images"
    )
    data.add_argument("--test-size", type=positive_int, help="use a seeded subset of this many test images")
    p.add_argument(
        "--architecture", default="wrn-16-1", help="registry id of the network (default: %(default)s)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="mixed precision")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="results folder")
    p.add_argument("--quick", action="store_true", help="small smoke-test version (minutes on 2 CPU cores)")


def _add_defense_options(d: argparse.ArgumentParser) -> None:
    _add_common(d)
    d.add_argument(
        "--attacks",
        type=csv_list,
        help=f"comma-separated rows: attacks among {','.join(ALL_ATTACKS)}, each optionally at its own "
        "poisoning rate (badnets@0.01); default: all seven and badnets@0.01,blend@0.01",
    )
    d.add_argument(
        "--target", type=int, default=0, help="target label of every attack (default: %(default)s)"
    )
    d.add_argument(
        "--poison-rate",
        type=fraction,
        default=0.1,
        help="dirty-label attacks: fraction of the training set poisoned (default: %(default)s)",
    )
    d.add_argument(
        "--clean-label-rate",
        type=fraction,
        default=0.05,
        help="clean-label attacks (cl, sig, refool): fraction of the training set poisoned, all from the "
        "target class (default: %(default)s, half of a class in a balanced 10-class set)",
    )
    d.add_argument(
        "--attack-set",
        dest="attack_overrides",
        action="append",
        default=[],
        metavar="ATTACK.KEY=VALUE",
        help="override one setting of one attack (JSON value), e.g. sig.delta=30, or its own poisoning "
        "rate, e.g. cl.rate=0.08; repeatable (defaults: argd.bench.backdoor.ATTACK_SETTINGS)",
    )
    d.add_argument(
        "--clean-fraction",
        type=fraction,
        default=0.05,
        help="clean subset size as a fraction of the full training split (default: %(default)s)",
    )
    d.add_argument(
        "--clean-size", type=positive_int, help="clean subset size in images (overrides the fraction)"
    )
    d.add_argument("--backdoor-epochs", type=positive_int, help="epochs of backdoored/clean model training")
    d.add_argument("--backdoor-lr", type=float, help="peak learning rate of backdoored model training")
    d.add_argument(
        "--defenses",
        type=csv_list,
        help="defenses to run (default: finetune,nad,fst,ft-sam,argd; --quick: fst,argd; the reference "
        "column is --reference)",
    )
    d.add_argument(
        "--seeds",
        type=whole_number_list,
        help="run the --seed-defenses again with each of these seeds (e.g. 0,1,2) and report mean and spread",
    )
    d.add_argument(
        "--seed-defenses", type=csv_list, help="defenses that --seeds repeats (default: argd,fst,ft-sam)"
    )
    d.add_argument(
        "--retune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the retuning attack (5 poisoned images, 5 epochs) on every cleansed model and the clean "
        "model (default: on)",
    )
    d.add_argument(
        "--preset", default="default", help="CleanseParams preset of all defenses (default|reference)"
    )
    d.add_argument(
        "--epochs", type=positive_int, help="distillation epochs of every defense (overrides preset)"
    )
    d.add_argument(
        "--teacher-epochs", type=positive_int, help="teacher fine-tuning epochs (overrides preset)"
    )
    d.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run ARGD with the reference preset (the paper's settings) as its own column",
    )
    d.add_argument(
        "--ablations",
        type=csv_list,
        help="ARGD variants to run (comma list, 'all' or 'none'); see argd.bench.defense.ABLATIONS",
    )
    d.add_argument(
        "--ablation-attacks", type=csv_list, help="attacks the ablations run on (default: badnets,blend)"
    )
    d.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a CleanseParams field for every defense (JSON value), repeatable",
    )
    d.add_argument("--cache-dir", type=Path, help="backdoored-model cache (default: ~/.cache/argd/bench)")


def build_parser() -> argparse.ArgumentParser:
    """The `bench` parser; the `argd` entry point hands it everything after `bench`."""
    parser = argparse.ArgumentParser(prog="argd bench", description="Benchmarks of the ARGD engine.")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "defense",
        help="fine-tuning, NAD, FST, FT-SAM and ARGD on backdoored models",
        description="Train (or reuse cached) backdoored models, cleanse each with fine-tuning, NAD, FST, "
        "FT-SAM and ARGD on the same clean subset, attack each result with the retuning attack, and "
        "write a Markdown table, a JSON file and a PNG chart.",
    )
    _add_defense_options(d)

    m = sub.add_parser(
        "merge",
        help="join the results of defense runs over different rows into one report",
        description="Read defense.json from each folder (runs of the same settings over different rows, "
        "e.g. two processes side by side), and write one defense.md / .json / .png with every row.",
    )
    m.add_argument("parts", nargs="+", type=Path, help="result folders of `argd bench defense`")
    m.add_argument("--out", type=Path, required=True, help="folder of the joined report")

    t = sub.add_parser(
        "tune",
        help="the defense benchmark over a grid of settings (how the defaults were chosen)",
        description="Run `defense` once per grid entry (CleanseParams overrides applied to every defense) "
        "on the same cached backdoored models, and write tune.md / tune.json.",
    )
    _add_defense_options(t)
    t.add_argument(
        "--grid", type=csv_list, help="grid entries to run (default: all; see argd.bench.tune.GRID)"
    )

    s = sub.add_parser(
        "speed",
        help="epoch time of fine-tuning, NAD, ARGD and the bare passes",
        description="Time one epoch of each method side by side on the same data and model, with device "
        "synchronisation on CUDA, and report seconds per epoch, images per second and the ratios.",
    )
    _add_common(s)
    s.add_argument("--images", type=positive_int, help="images per epoch (default: 3000, quick: 512)")
    s.add_argument("--batch-size", type=positive_int, help="batch size (default: the preset's)")
    s.add_argument("--repeats", type=positive_int, help="timed epochs per method (default: 5, quick: 2)")
    s.add_argument("--preset", default="default", help="CleanseParams preset (default|reference)")

    j = sub.add_parser(
        "job-speed",
        help="the same cleanse as a service job and as `argd cleanse`, side by side (wall times, ratio)",
        description="Alternate one-shot `argd cleanse` runs and jobs on the embedded service (argd serve) "
        "over the same synthetic data and model, and report the median wall and engine times of each and "
        "the ratio service / CLI (goal: within 5 %%).",
    )
    j.add_argument("--images", type=positive_int, default=3000, help="clean images (default: %(default)s)")
    j.add_argument("--epochs", type=positive_int, default=2, help="student epochs (default: %(default)s)")
    j.add_argument("--teacher-epochs", type=positive_int, default=2, help="default: %(default)s")
    j.add_argument(
        "--rounds", type=positive_int, default=2, help="CLI + service pairs (default: %(default)s)"
    )
    j.add_argument("--architecture", default="wrn-16-1", help="default: %(default)s")
    j.add_argument("--method", default="argd", help="default: %(default)s")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--out", type=Path, help="folder for job-speed.json and job-speed.md")

    f = sub.add_parser(
        "fuzz",
        help="schemathesis over the live OpenAPI document, with a key and without (needs the dev extra)",
        description="Start the API on a throw-away Postgres and send every operation EXAMPLES generated "
        "requests with a valid key and without one; fails on any server error or answer outside the "
        "documented schema.",
    )
    f.add_argument("--examples", type=positive_int, default=100, help="per operation (default: %(default)s)")
    f.add_argument("--out", type=Path, help="folder for fuzz.json and fuzz.md")

    r = sub.add_parser(
        "reliability",
        help="the page of reliability and security figures (bench/results/reliability.md)",
        description="Run the reliability test files (hostile inputs, access control, webhooks, faults, "
        "fuzzing, polling) and count their cases, then `fuzz` and `api-latency`, and write one page.",
    )
    r.add_argument("--latency-duration", type=float, default=10.0, help="seconds per rate (default: 10)")
    r.add_argument("--fuzz-examples", type=positive_int, default=50, help="per operation (default: 50)")
    r.add_argument("--out", type=Path, help="folder for reliability.json and reliability.md")
    r.add_argument(
        "--suites",
        nargs="+",
        metavar="FILE",
        help="rerun only these test files (path or base name, e.g. test_disk_full.py) and update their rows "
        "in the page of an earlier run in --out, keeping its fuzzing and load figures",
    )

    add_subcommands(sub)  # the service benchmarks: api-latency, upload-memory
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `argd bench`; returns the process exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "service_bench", None):
        return run_from_args(args)
    if getattr(args, "test_npz", None) and not args.train_npz:  # merge has no data options
        print("argd bench: error: --test-npz needs --train-npz", file=sys.stderr)
        return 2
    try:
        if args.command == "job-speed":
            return _job_speed(args)
        if args.command == "reliability":
            from argd.bench.reliability import refresh_suites, reliability_markdown, run_reliability
            from argd.bench.stats import publish

            if args.suites:
                if args.out is None:
                    print(
                        "argd bench: error: --suites needs --out (the folder of the page to update)",
                        file=sys.stderr,
                    )
                    return 2
                try:
                    refreshed = refresh_suites(args.out, args.suites)
                except (ValueError, FileNotFoundError) as exc:
                    print(f"argd bench: error: {exc}", file=sys.stderr)
                    return 2
                publish(refreshed, reliability_markdown(refreshed), "reliability", args.out)
                return 0
            result = run_reliability(
                latency_duration_s=args.latency_duration, fuzz_examples=args.fuzz_examples
            )
            publish(result, reliability_markdown(result), "reliability", args.out)
            if args.out is not None:  # the two service runs it made, as their own commands write them
                from argd.bench.fuzz import fuzz_markdown
                from argd.bench.latency import latency_markdown
                from argd.bench.stats import write_result

                write_result(result["latency"], args.out, "api-latency", latency_markdown(result["latency"]))
                write_result(result["fuzz"], args.out, "fuzz", fuzz_markdown(result["fuzz"]))
            return 0
        if args.command == "fuzz":
            from argd.bench.fuzz import fuzz_markdown, run_fuzz
            from argd.bench.stats import publish

            result = run_fuzz(examples=args.examples)
            publish(result, fuzz_markdown(result), "fuzz", args.out)
            return 0
        if args.command == "merge":
            from argd.bench.defense import merge_defense_reports

            merge_defense_reports(args.parts, args.out)
        elif args.command == "defense":
            from argd.bench.defense import config_from_args, run_defense_benchmark

            run_defense_benchmark(config_from_args(args))
        elif args.command == "tune":
            from argd.bench.defense import config_from_args
            from argd.bench.tune import GRID, run_tune

            config = config_from_args(args)
            if args.out is None:
                config.out = Path("bench-results/tune-quick" if args.quick else "bench-results/tune")
            run_tune(config, list(args.grid or GRID))
        else:
            from argd.bench.speed import config_from_args as speed_config
            from argd.bench.speed import run_speed

            run_speed(speed_config(args))
    except ArgdError as exc:
        print(f"argd bench: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("argd bench: interrupted", file=sys.stderr)
        return 130
    return 0


def _job_speed(args: argparse.Namespace) -> int:
    from argd.bench.job_speed import job_speed_markdown, run_job_speed
    from argd.bench.stats import publish

    result = run_job_speed(
        images=args.images,
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        rounds=args.rounds,
        architecture=args.architecture,
        method=args.method,
        seed=args.seed,
    )
    publish(result, job_speed_markdown(result), "job-speed", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
