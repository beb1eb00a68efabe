"""`argd bench api-latency`: status-poll and listing latency at fixed request rates, measured with wrk.

It seeds tenants, API keys and jobs with their per-epoch events (`argd.bench.seeding`) in a throw-away
Postgres database, starts the API (`argd.bench.apiserver`), and offers each endpoint a fixed rate with
wrk, a C load generator that leaves the CPU to the server (classic wrk has no rate option; the Lua script
`wrk_pace.lua` paces it and counts the send slots it took late). For each rate it reports p50, p99 and
max; then it searches upward for the highest rate held, meaning: no errors, at least 95 % of the rate
achieved, and p99 within the budget. Latency is measured by wrk from the moment a request is sent; a
schedule kept with few late slots means that is also the latency from the planned send time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from argd.bench.apiserver import DEFAULT_ADMIN_URL, api_server, server_env, server_version
from argd.bench.seeding import seed_jobs
from argd.bench.stats import machine_info, utc_now
from argd.persistence.db import dispose_engines
from argd.persistence.settings import Settings
from argd.persistence.throwaway import throwaway_database

PACE_SCRIPT = Path(__file__).with_name("wrk_pace.lua")
ENDPOINTS = {
    "job": "GET /v1/jobs/{id}",
    "job-304": "GET /v1/jobs/{id} with If-None-Match (unchanged: 304)",
    "list": "GET /v1/jobs?limit=20 (first pages, with and without a status filter)",
}
DEFAULT_RATES = (100, 300, 1000)
HELD_FRACTION = 0.95  # of the offered rate, achieved
SEARCH_FACTOR = 1.5
MAX_JOBS = 200_000
MAX_RATE = 50_000


def wrk_binary() -> str:
    """The wrk executable; a clear error naming the fix when it is missing."""
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: run `make wrk` (Debian package wrk)")
    return found


def run_wrk(
    url: str, targets: Path, rate: int, *, duration_s: float, connections: int, timeout_s: float = 5.0
) -> dict[str, Any]:
    """One fixed-rate run of wrk (one thread) over the requests in `targets`; its figures in ms."""
    command = [
        wrk_binary(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s", "-s", str(PACE_SCRIPT), url, "--",
        str(targets), str(rate), "1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ARGD_WRK ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
    raw = json.loads(line.removeprefix("ARGD_WRK "))
    seconds = raw["duration_us"] / 1e6
    ms = {name: value / 1000.0 for name, value in raw["latency_us"].items()}
    return {
        "rate": rate,
        "achieved_per_s": raw["requests"] / seconds,
        "requests": raw["requests"],
        "seconds": seconds,
        "latency_ms": ms,
        "errors": sum(raw["errors"].values()),
        "error_kinds": raw["errors"],
        "late_slots": raw["late_slots"],
        "late_max_ms": raw["late_max_ms"],
        "bytes_per_response": raw["bytes"] / max(1, raw["requests"]),
    }


def is_held(step: dict[str, Any], p99_budget_ms: float) -> bool:
    return bool(
        step["errors"] == 0
        and step["achieved_per_s"] >= HELD_FRACTION * step["rate"]
        and step["latency_ms"]["p99"] <= p99_budget_ms
    )


def measure_endpoint(
    url: str,
    targets: Path,
    rates: Sequence[int],
    *,
    duration_s: float,
    connections: int,
    p99_budget_ms: float,
    search: bool,
    max_rate: int = MAX_RATE,
) -> dict[str, Any]:
    """The fixed `rates`, then (with `search`) higher rates by x1.5 while they are held, or a bisection
    below the first fixed rate that was not; returns every step and the highest rate held."""
    steps = []
    for rate in rates:
        step = run_wrk(url, targets, rate, duration_s=duration_s, connections=connections)
        step["held"] = is_held(step, p99_budget_ms)
        steps.append(step)
    held = [s["rate"] for s in steps if s["held"]]
    missed = [s["rate"] for s in steps if not s["held"]]
    if search:
        low, high = max(held, default=0), min(missed, default=None)
        for _ in range(6):
            if high is None:
                rate = int(max(low, 1) * SEARCH_FACTOR)
                if rate > max_rate:
                    break
            elif high - low <= max(50, low // 10):
                break
            else:
                rate = (low + high) // 2
            step = run_wrk(url, targets, rate, duration_s=duration_s, connections=connections)
            step["held"] = is_held(step, p99_budget_ms)
            steps.append(step)
            if step["held"]:
                low = rate
            else:
                high = rate
        held.append(low)
    return {"steps": steps, "highest_held_per_s": max(held, default=0)}


def _targets(base_url: str, seeded: dict[str, Any], scratch: Path, *, sample: int = 400) -> dict[str, Path]:
    """One file of requests per endpoint: each tenant's jobs with its key; for the 304 case each job's
    current ETag (fetched once here); first pages of the listing with and without a status filter."""
    files = {name: scratch / f"targets-{name}.tsv" for name in ENDPOINTS}
    pairs = [(key, job) for name, key in seeded["keys"].items() for job in seeded["jobs"][name]]
    files["job"].write_text("".join(f"/v1/jobs/{job}\t{key}\n" for key, job in pairs))
    lines = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for key, job in pairs[:sample]:
            response = client.get(f"/v1/jobs/{job}", headers={"Authorization": f"Bearer {key}"})
            response.raise_for_status()
            lines.append(f"/v1/jobs/{job}\t{key}\t{response.headers['etag']}\n")
    files["job-304"].write_text("".join(lines))
    pages = ["/v1/jobs?limit=20", "/v1/jobs?limit=20&status=succeeded", "/v1/jobs?limit=20&status=running"]
    files["list"].write_text("".join(f"{page}\t{key}\n" for key in seeded["keys"].values() for page in pages))
    return files


def run_latency(
    *,
    rates: Sequence[int] = DEFAULT_RATES,
    endpoints: Sequence[str] = tuple(ENDPOINTS),
    duration_s: float = 10.0,
    warmup_s: float = 3.0,
    connections: int = 64,
    jobs: int = 1000,
    tenants: int = 4,
    server_workers: int = 2,
    p99_budget_ms: float = 50.0,
    search: bool = True,
    admin_url: str = DEFAULT_ADMIN_URL,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of the polling endpoints at fixed rates against a live server on a seeded Postgres.

    The database and the data directory are removed at the end, whatever happens.
    """
    wrk_binary()
    unknown = sorted(set(endpoints) - set(ENDPOINTS))
    if unknown:
        raise ValueError(f"unknown endpoint(s) {unknown}; known: {', '.join(ENDPOINTS)}")
    _check_range("tenants", tenants, 1, 1000)
    _check_range("jobs", jobs, tenants, MAX_JOBS)
    _check_range("server_workers", server_workers, 1, 64)
    _check_range("connections", connections, 1, 10_000)
    for rate in rates:
        _check_range("rate", rate, 1, MAX_RATE)
    if duration_s < 1 or warmup_s < 0:
        raise ValueError("duration must be at least 1 s and warm-up at least 0 s")
    started_at = utc_now()
    with (
        tempfile.TemporaryDirectory(prefix="argd-bench-latency-") as scratch_dir,
        throwaway_database(admin_url, "argd_bench") as url,
    ):
        scratch = Path(scratch_dir)
        settings = Settings(database_url=url, data_dir=scratch / "data")
        seeding = time.perf_counter()
        seeded = seed_jobs(settings, tenants=tenants, jobs=jobs, seed=seed)
        seed_s = time.perf_counter() - seeding
        dispose_engines()  # the benchmark process keeps no connections open during the load
        results: dict[str, Any] = {}
        with api_server(server_env(settings), scratch / "api-server.log", workers=server_workers) as server:
            files = _targets(server.base_url, seeded, scratch)
            for endpoint in endpoints:
                if warmup_s >= 1:
                    run_wrk(server.base_url, files[endpoint], min(rates), duration_s=warmup_s, connections=8)
                results[endpoint] = {
                    "endpoint": ENDPOINTS[endpoint],
                    **measure_endpoint(
                        server.base_url, files[endpoint], rates, duration_s=duration_s,
                        connections=connections, p99_budget_ms=p99_budget_ms, search=search,
                    ),
                }  # fmt: skip
        version = server_version(url)
    return {
        "benchmark": "api-latency",
        "load_generator": "wrk 4 (one thread) with argd/bench/wrk_pace.lua: fixed rate, open loop",
        "started_at": started_at,
        "endpoints": results,
        "rates": list(rates),
        "duration_s": duration_s,
        "connections": connections,
        "p99_budget_ms": p99_budget_ms,
        "held_means": f"no errors, >= {HELD_FRACTION:.0%} of the rate achieved, p99 <= {p99_budget_ms} ms",
        "server_workers": server_workers,
        "tenants": tenants,
        "jobs_seeded": jobs,
        "events_seeded": seeded["events"],
        "seed_seconds": seed_s,
        "database": {"kind": "postgresql", "server_version": version, "name": make_url(url).database},
        "machine": machine_info(),
    }


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def latency_markdown(result: dict[str, Any]) -> str:
    """One table per endpoint: every rate tried, in order, and the highest rate held."""
    lines = [
        f"Postgres {result['database']['server_version']}, {result['server_workers']} uvicorn worker(s), "
        f"{result['machine']['cpus']} CPUs (load average before: {result['machine']['load_average']}), "
        f"{result['jobs_seeded']} jobs ({result['events_seeded']} events) in {result['tenants']} tenants; "
        f"{result['load_generator']}, {result['connections']} connections, {result['duration_s']:.0f} s "
        f"per rate; held = {result['held_means']}.",
    ]
    for data in result["endpoints"].values():
        lines += [
            "",
            f"**{data['endpoint']}**: highest rate held {data['highest_held_per_s']} requests/s",
            "",
            "| offered /s | achieved /s | p50 ms | p99 ms | max ms | errors | late slots | held |",
            "|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for s in data["steps"]:
            ms = s["latency_ms"]
            lines.append(
                f"| {s['rate']} | {s['achieved_per_s']:.0f} | {ms['p50']:.2f} | {ms['p99']:.2f} "
                f"| {ms['max']:.2f} | {s['errors']} | {s['late_slots']} | {'yes' if s['held'] else 'no'} |"
            )
    return "\n".join(lines)
