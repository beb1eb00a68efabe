"""REST client commands: `submit`, `status`, `download`, `jobs`, `cancel`.

Thin shells over `argd.client.ArgdClient` (the same class pipelines import). The server and key come
from --url/--api-key or ARGD_URL/ARGD_API_KEY. Results go to stdout (tables, or JSON with --json),
notes and progress bars to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from argd.cli.argtypes import existing_file, positive_float, positive_int
from argd.cli.cleanse import add_spec_arguments, build_spec, summary_table
from argd.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    ArgumentParser,
    CliError,
    given,
    info,
    json_object_file,
    preset_params,
    print_json,
)
from argd.core.params import Method

if TYPE_CHECKING:  # httpx is imported when a command talks to a server, not to parse options
    from argd.client import ArgdClient

DEFAULT_URL = "http://127.0.0.1:8000"


def register(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Add the client commands to the command tree."""
    server = ArgumentParser(add_help=False)
    conn = server.add_argument_group("server")
    conn.add_argument("--url", help=f"server URL (default: $ARGD_URL or {DEFAULT_URL})")
    conn.add_argument("--api-key", help="API key (default: $ARGD_API_KEY)")
    conn.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds per HTTP request (default: 60)"
    )
    output = ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print the server's JSON instead of a summary")

    s = commands.add_parser(
        "submit",
        parents=[server, output],
        help="upload a model and data and start a cleanse job on a server",
        description="Upload the model and datasets, create a job, and print its id. With --wait, follow it "
        "with a progress bar and exit 0 only if it succeeds.",
    )
    model = s.add_argument_group("model")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=existing_file, help="weights file to upload")
    source.add_argument("--model-id", help="an already uploaded model")
    add_spec_arguments(model)
    model.add_argument("--teacher-id", help="an uploaded model to use as the teacher")
    data = s.add_argument_group("data (files to upload, or ids of uploaded datasets)")
    clean = data.add_mutually_exclusive_group(required=True)
    clean.add_argument("--clean", type=existing_file)
    clean.add_argument("--clean-id")
    test = data.add_mutually_exclusive_group()
    test.add_argument("--test", type=existing_file)
    test.add_argument("--test-id")
    poisoned = data.add_mutually_exclusive_group()
    poisoned.add_argument("--poisoned", type=existing_file)
    poisoned.add_argument("--poisoned-id")
    data.add_argument("--target-label", type=int)
    hp = s.add_argument_group("parameters (unset ones take the server's defaults)")
    hp.add_argument("--method", choices=get_args(Method))
    hp.add_argument("--preset", choices=["default", "reference"], help="send every parameter of this preset")
    hp.add_argument("--params", type=existing_file, help="JSON object of CleanseParams fields")
    hp.add_argument("--epochs", type=int)
    hp.add_argument("--teacher-epochs", type=int)
    hp.add_argument("--seed", type=int)
    hp.add_argument("--webhook-url", help="https URL called when the job finishes")
    hp.add_argument("--idempotency-key", help="retrying with the same key never creates a second job")
    tracking = s.add_argument_group("MLflow export (the server needs ARGD_MLFLOW_TRACKING_URI)")
    tracking.add_argument("--mlflow-experiment", help="export the finished job to this MLflow experiment")
    tracking.add_argument("--mlflow-run-name", help="name of the MLflow run (default: argd-<job id>)")
    tracking.add_argument(
        "--mlflow-register", metavar="NAME", help="register the cleansed model as a version of NAME"
    )
    follow = s.add_argument_group("follow")
    follow.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    follow.add_argument("--download", type=Path, metavar="DIR", help="with --wait: save the result into DIR")
    follow.add_argument("--wait-timeout", type=positive_float, help="give up waiting after this many seconds")
    follow.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notes")
    s.set_defaults(func=cmd_submit)

    st = commands.add_parser("status", parents=[server, output], help="show a job's status and metrics")
    st.add_argument("job_id")
    st.add_argument(
        "--wait", action="store_true", help="follow the job until it finishes (exit 1 unless it succeeds)"
    )
    st.add_argument("--quiet", "-q", action="store_true")
    st.set_defaults(func=cmd_status)

    d = commands.add_parser(
        "download",
        parents=[server],
        help="save a finished job's cleansed model and report",
        description="Write DIR/model.safetensors and DIR/report.json (the layout of 'argd cleanse --out').",
    )
    d.add_argument("job_id")
    d.add_argument("--out", type=Path, help="output folder (default: ./argd-JOB_ID)")
    d.add_argument("--no-report", action="store_true", help="only the model")
    d.set_defaults(func=cmd_download)

    j = commands.add_parser("jobs", parents=[server, output], help="list your jobs, newest first")
    j.add_argument("--limit", type=positive_int, default=20, help="jobs per page (default: %(default)s)")
    j.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "canceled"])
    j.add_argument("--all", action="store_true", help="follow every page")
    j.set_defaults(func=cmd_jobs)

    c = commands.add_parser("cancel", parents=[server, output], help="ask a queued or running job to stop")
    c.add_argument("job_id")
    c.set_defaults(func=cmd_cancel)


def make_client(args: argparse.Namespace) -> ArgdClient:
    """The client for --url/--api-key, falling back to ARGD_URL/ARGD_API_KEY."""
    from argd.client import ArgdClient

    url = args.url or os.environ.get("ARGD_URL") or DEFAULT_URL
    key = args.api_key or os.environ.get("ARGD_API_KEY")
    if not key:
        raise CliError(
            "no API key: pass --api-key or set ARGD_API_KEY (an operator creates one: argd keys create)"
        )
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url must start with http:// or https://, got {url!r}")
    return ArgdClient(url, key, timeout=args.timeout)


# ------------------------------------------------------------------------------------------------- submit


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate locally, upload what is a file, create the job, optionally follow and download."""
    if (args.poisoned or args.poisoned_id) and args.target_label is None:
        raise CliError("--poisoned needs --target-label (the backdoor's target class)")
    if args.target_label is not None and not (args.poisoned or args.poisoned_id):
        raise CliError("--target-label needs --poisoned or --poisoned-id")
    if args.download and not args.wait:
        raise CliError("--download needs --wait")
    spec = build_spec(args, check_architecture=False) if args.model else None
    params = submit_params(args)
    quiet = args.quiet or args.json

    with make_client(args) as client:
        model_id = args.model_id
        if args.model:
            info(f"uploading model {args.model.name}", quiet)
            model_id = client.upload_model(args.model, spec)["id"]
        ids = {}
        for role in ("clean", "test", "poisoned"):
            path, given = getattr(args, role), getattr(args, f"{role}_id")
            if path is not None:
                info(f"uploading {role} data {path.name}", quiet)
                given = client.upload_dataset(path)["id"]
            ids[role] = given
        job = client.create_job(
            model_id,
            ids["clean"],
            test_dataset_id=ids["test"],
            poisoned_dataset_id=ids["poisoned"],
            target_label=args.target_label,
            teacher_model_id=args.teacher_id,
            method=args.method,
            params=params,
            webhook_url=args.webhook_url,
            idempotency_key=args.idempotency_key,
            mlflow=mlflow_block(args),
        )
        info(f"job {job['id']} {job.get('status', 'queued')}", quiet)
        if not args.wait:
            if args.json:
                print_json(job)
            else:
                print(job["id"])
            return EXIT_OK
        job = follow(client, job["id"], quiet, args.wait_timeout)
        show_job(job, args.json)
        if job.get("status") != "succeeded":
            return EXIT_FAILURE
        if args.download:
            save_result(client, job["id"], args.download, with_report=True, quiet=quiet)
    return EXIT_OK


def mlflow_block(args: argparse.Namespace) -> dict[str, Any] | None:
    """The job's `mlflow` block from the --mlflow-* flags; None when none is given (no export)."""
    fields = {
        "experiment": args.mlflow_experiment,
        "run_name": args.mlflow_run_name,
        "registered_model": args.mlflow_register,
    }
    given = {key: value for key, value in fields.items() if value is not None}
    return given or None


def submit_params(args: argparse.Namespace) -> dict[str, Any] | None:
    """The job's `params`: a preset expanded in full, or just the overrides (the server fills the rest).

    Checked here against CleanseParams so a typo fails before any upload.
    """
    overrides = json_object_file(args.params, "--params", "a JSON object of parameters")
    flags = {
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "seed": args.seed,
        "method": args.method,
    }
    overrides.update(given(flags))
    full = preset_params(args.preset or "default", overrides)
    if args.preset:
        return dict(full.model_dump(mode="json"))
    return overrides or None


# ------------------------------------------------------------------------------------------ status / jobs


def cmd_status(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        if args.wait:
            job = follow(client, args.job_id, args.quiet or args.json, None)
            show_job(job, args.json)
            return EXIT_OK if job.get("status") == "succeeded" else EXIT_FAILURE
        show_job(client.get_job(args.job_id), args.json)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    from argd.client import page_items

    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    with make_client(args) as client:
        if args.all:
            jobs = list(client.iter_jobs(page_size=args.limit, status=args.status))
            next_cursor = None
        else:
            page = client.list_jobs(limit=args.limit, status=args.status)
            jobs = page_items(page)
            next_cursor = page.get("next_cursor") if isinstance(page, dict) else None
    if args.json:
        print_json({"items": jobs, "next_cursor": next_cursor})
        return EXIT_OK
    print(f"{'ID':36}  {'STATUS':9}  {'METHOD':8}  {'PHASE':8}  {'DONE':>5}  {'CREATED':19}")
    for job in jobs:
        fraction = (job.get("progress") or {}).get("fraction")
        done = f"{100 * fraction:.0f}%" if isinstance(fraction, int | float) else "-"
        print(
            f"{job.get('id', ''):36}  {job.get('status', ''):9}  {job.get('method') or '-':8}  "
            f"{job.get('phase') or '-':8}  {done:>5}  {str(job.get('created_at') or '')[:19]:19}"
        )
    if next_cursor:
        info("more jobs: use --all, or a larger --limit")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client(args) as client:
        job = client.cancel(args.job_id)
    if args.json:
        print_json(job)
    else:
        print(f"job {args.job_id}: {job.get('status', 'cancel requested')}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ download


def cmd_download(args: argparse.Namespace) -> int:
    out = args.out or Path(f"argd-{args.job_id}")
    with make_client(args) as client:
        save_result(client, args.job_id, out, with_report=not args.no_report, quiet=False)
    return EXIT_OK


def save_result(client: ArgdClient, job_id: str, out: Path, *, with_report: bool, quiet: bool) -> list[Path]:
    """DIR/model.safetensors (+ DIR/report.json): the same layout `argd cleanse` writes."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = [client.download_model(job_id, out / "model.safetensors")]
    if with_report:
        report = client.report(job_id)
        path = out / "report.json"
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    for path in written:
        info(f"wrote {path}", quiet)
    return written


# ------------------------------------------------------------------------------------------------ display


def follow(client: ArgdClient, job_id: str, quiet: bool, timeout: float | None) -> dict[str, Any]:
    """Wait for the job with a progress bar on a terminal (nothing elsewhere)."""
    from argd.cli.progress import PhaseBar, bar_enabled, job_progress

    with PhaseBar(bar_enabled(quiet), unit="epoch") as bar:
        return client.wait(job_id, on_progress=job_progress(bar), timeout=timeout)


def show_job(job: dict[str, Any], as_json: bool) -> None:
    """A job as JSON, or as a few human lines with its metrics table."""
    if as_json:
        print_json(job)
        return
    progress = job.get("progress") or {}
    line = f"job {job.get('id')}: {job.get('status')}"
    if job.get("status") == "running":
        line += f", {job.get('phase') or 'starting'}"
        if progress.get("epochs"):
            line += f" epoch {progress.get('epoch')}/{progress.get('epochs')}"
        if progress.get("fraction") is not None:
            line += f" ({100 * float(progress['fraction']):.0f}% of the job)"
    print(line)
    error = job.get("error")
    if error:
        print(f"error {error.get('code')}: {error.get('message')}", file=sys.stderr)
    for warning in job.get("warnings") or []:
        print(f"warning {warning.get('code')}: {warning.get('message')}", file=sys.stderr)
    tracked = job.get("mlflow") or {}
    if tracked.get("run_id"):
        version = f", model version {tracked['model_version']}" if tracked.get("model_version") else ""
        print(f"MLflow run {tracked['run_id']} in experiment {tracked.get('experiment')}{version}")
    metrics = job.get("metrics") or {}
    if any(metrics.get(phase) for phase in ("before", "teacher", "after")):
        print(summary_table(metrics))
