"""The command line of the service benchmarks: `argd bench api-latency` and `argd bench upload-memory`.

`argd.bench.cli` adds these subcommands to `argd bench`; the work is in `argd.bench.latency` and
`argd.bench.upload_memory`, on a real API server, a throw-away Postgres database and a temporary data
directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from argd.bench.apiserver import DEFAULT_ADMIN_URL
from argd.bench.latency import DEFAULT_RATES, ENDPOINTS, latency_markdown, run_latency
from argd.bench.stats import publish
from argd.bench.upload_memory import run_upload_memory, upload_markdown
from argd.cli.argtypes import csv_list, positive_float, positive_int, whole_number_list


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the latency benchmark (`argd bench api-latency`)."""
    parser.add_argument(
        "--rates",
        type=whole_number_list,
        default=list(DEFAULT_RATES),
        help="fixed request rates per second, comma-separated (default: 100,300,1000)",
    )
    parser.add_argument(
        "--endpoints",
        type=csv_list,
        default=list(ENDPOINTS),
        help=f"what to load, comma-separated among {','.join(ENDPOINTS)} (default: all)",
    )
    parser.add_argument(
        "--duration", type=positive_float, default=10.0, help="seconds per rate (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="untimed seconds per endpoint first (default: %(default)s)"
    )
    parser.add_argument(
        "--connections", type=positive_int, default=64, help="wrk connections (default: %(default)s)"
    )
    parser.add_argument(
        "--p99-budget-ms", type=positive_float, default=50.0, help="p99 of a held rate (default: %(default)s)"
    )
    parser.add_argument(
        "--no-search", action="store_true", help="only the fixed rates, no search for the highest one held"
    )
    parser.add_argument("--jobs", type=positive_int, default=1000, help="jobs seeded (default: %(default)s)")
    parser.add_argument(
        "--tenants", type=positive_int, default=4, help="tenants the jobs belong to (default: %(default)s)"
    )
    parser.add_argument(
        "--server-workers",
        type=positive_int,
        default=2,
        help="uvicorn worker processes (default: %(default)s)",
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
    parser.add_argument(
        "--store",
        choices=["local", "s3"],
        default="local",
        help="local: uploads to the API (folder store); s3: this process streams files into the S3 store "
        "and back (moto's server unless --s3-endpoint-url) (default: %(default)s)",
    )
    parser.add_argument("--s3-endpoint-url", help="with --store s3: an S3 endpoint (AWS_* credentials)")
    parser.add_argument("--s3-bucket", help="with --s3-endpoint-url: an existing bucket to write to")
    parser.add_argument("--out", type=Path, help="folder for upload-memory.json and upload-memory.md")
    parser.set_defaults(service_bench="upload-memory")


def add_subcommands(subparsers: Any) -> None:
    """Add the `api-latency` and `upload-memory` subcommands to an argparse subparsers object.

    Dispatch the parsed arguments with `run_from_args(args)` (it reads `args.service_bench`).
    """
    add_latency_arguments(
        subparsers.add_parser(
            "api-latency",
            help="job poll and listing latency at fixed rates, measured with wrk (Postgres, live server)",
            description="Seed a throw-away Postgres database with jobs and their events, start the API, "
            "and offer GET /v1/jobs/{id} (plain and with If-None-Match) and GET /v1/jobs fixed request "
            "rates with wrk; report p50/p99/max per rate and the highest rate held within the p99 budget.",
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
                rates=args.rates,
                endpoints=args.endpoints,
                duration_s=args.duration,
                warmup_s=args.warmup,
                connections=args.connections,
                jobs=args.jobs,
                tenants=args.tenants,
                server_workers=args.server_workers,
                p99_budget_ms=args.p99_budget_ms,
                search=not args.no_search,
                admin_url=args.pg_admin_url,
                seed=args.seed,
            )
            name, markdown = "api-latency", latency_markdown(result)
        elif args.store == "s3":
            from argd.bench.store_memory import run_store_memory, store_markdown

            result = run_store_memory(
                sizes_mib=sorted({args.size_mb, *([args.compare_mb] if args.compare_mb > 0 else [])}),
                endpoint_url=args.s3_endpoint_url,
                bucket=args.s3_bucket,
                sample_interval_s=args.interval_ms / 1000.0,
                work_dir=args.work_dir,
            )
            name, markdown = "upload-memory-s3", store_markdown(result)
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
    publish(result, markdown, name, args.out)
    if result.get("errors"):
        print(f"argd bench: {result['errors']} request(s) failed", file=sys.stderr)
        return 1
    return 0
