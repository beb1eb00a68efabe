"""The command line of the service benchmarks: `argd bench api-latency` and `argd bench upload-memory`.

`argd.bench.cli` adds these subcommands to `argd bench`; the work is in `argd.bench.latency` and
`argd.bench.upload_memory`, on a real API server, a throw-away Postgres database and a temporary data
directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from argd.bench.apiserver import DEFAULT_ADMIN_URL
from argd.bench.latency import latency_markdown, run_latency
from argd.bench.stats import write_result
from argd.bench.upload_memory import run_upload_memory, upload_markdown
from argd.cli.argtypes import positive_float, positive_int


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the latency benchmark (`argd bench api-latency`)."""
    parser.add_argument(
        "--clients", type=positive_int, default=16, help="concurrent clients (default: %(default)s)"
    )
    parser.add_argument(
        "--requests", type=positive_int, default=500, help="timed requests per client (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="untimed requests per client first (default: %(default)s)"
    )
    parser.add_argument("--jobs", type=positive_int, default=1000, help="jobs seeded (default: %(default)s)")
    parser.add_argument(
        "--tenants", type=positive_int, default=4, help="tenants the jobs belong to (default: %(default)s)"
    )
    parser.add_argument(
        "--server-workers",
        type=positive_int,
        default=1,
        help="uvicorn worker processes (default: %(default)s)",
    )
    parser.add_argument(
        "--max-seconds", type=positive_float, default=600.0, help="stop the timed phase after this long"
    )
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_ADMIN_URL, help="Postgres URL allowed to create databases"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for api-latency.json and api-latency.md")
    parser.set_defaults(service_bench="latency")


def add_upload_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the upload-memory benchmark (`argd bench upload-memory`)."""
    parser.add_argument(
        "--size-mb", type=positive_float, default=500.0, help="upload size in MiB (default: %(default)s)"
    )
    parser.add_argument(
        "--compare-mb",
        type=float,
        default=100.0,
        help="a second, smaller upload size in MiB to show memory does not grow with size; 0: none "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--payload",
        choices=["random", "npz"],
        default="random",
        help="random bytes (rejected by validation: measures receiving and hashing) or a valid .npz "
        "(also measures validation, which decodes the arrays) (default: %(default)s)",
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_ADMIN_URL, help="Postgres URL allowed to create databases"
    )
    parser.add_argument(
        "--interval-ms",
        type=positive_float,
        default=20.0,
        help="memory sampling interval (default: %(default)s)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where the temporary data directory goes (default: system tmp)"
    )
    parser.add_argument("--out", type=Path, help="folder for upload-memory.json and upload-memory.md")
    parser.set_defaults(service_bench="upload-memory")


def add_subcommands(subparsers: Any) -> None:
    """Add the `api-latency` and `upload-memory` subcommands to an argparse subparsers object.

    Dispatch the parsed arguments with `run_from_args(args)` (it reads `args.service_bench`).
    """
    add_latency_arguments(
        subparsers.add_parser(
            "api-latency",
            help="GET /v1/jobs/{id} latency under concurrent clients (Postgres, live server)",
            description="Seed a throw-away Postgres database with jobs, start the API, and measure "
            "p50/p90/p99 latency and throughput of GET /v1/jobs/{id} with concurrent keep-alive clients.",
        )
    )
    add_upload_memory_arguments(
        subparsers.add_parser(
            "upload-memory",
            help="peak API memory while receiving a large upload",
            description="Stream multipart uploads of two sizes to POST /v1/datasets while sampling the API "
            "process's resident memory; shows whether memory grows with the upload size.",
        )
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed arguments name; prints Markdown and JSON, writes files with --out."""
    try:
        if args.service_bench == "latency":
            result = run_latency(
                clients=args.clients,
                requests_per_client=args.requests,
                warmup_per_client=args.warmup,
                jobs=args.jobs,
                tenants=args.tenants,
                server_workers=args.server_workers,
                admin_url=args.pg_admin_url,
                seed=args.seed,
                max_seconds=args.max_seconds,
            )
            name, markdown = "api-latency", latency_markdown(result)
        else:
            sizes = sorted({args.size_mb, *([args.compare_mb] if args.compare_mb > 0 else [])})
            result = run_upload_memory(
                sizes_mib=sizes,
                payload=args.payload,
                database=args.database,
                admin_url=args.pg_admin_url,
                sample_interval_s=args.interval_ms / 1000.0,
                work_dir=args.work_dir,
            )
            name, markdown = "upload-memory", upload_markdown(result)
    except (ValueError, RuntimeError) as exc:
        print(f"argd bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("argd bench: interrupted", file=sys.stderr)
        return 130
    print(markdown)
    print()
    print(json.dumps(result, indent=2))
    if args.out is not None:
        path = write_result(result, args.out, name, markdown)
        print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    if result.get("errors"):
        print(f"argd bench: {result['errors']} request(s) failed", file=sys.stderr)
        return 1
    return 0
