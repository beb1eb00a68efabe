"""`argd bench api-latency`: `GET /v1/jobs/{id}` latency under concurrent clients against a live server.

It seeds tenants, API keys and jobs with their per-epoch events (`argd.bench.seeding`) in a throw-away
Postgres database, starts the API (`argd.bench.apiserver`), then lets C asyncio clients (one keep-alive
connection each) read random jobs of their own tenant, after a warm-up, and reports percentiles, throughput
and errors. The clients share the machine with the server, so the figures are for "this machine"; the report
says how many CPUs there were.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from argd.bench.apiserver import DEFAULT_ADMIN_URL, api_server, server_env, server_version
from argd.bench.seeding import seed_jobs
from argd.bench.stats import machine_info, percentile, utc_now
from argd.persistence.db import dispose_engines
from argd.persistence.settings import Settings
from argd.persistence.throwaway import throwaway_database

# Hard bounds so that a typo cannot turn a benchmark into a denial of service on a shared machine.
MAX_CLIENTS = 1024
MAX_REQUESTS_PER_CLIENT = 1_000_000
MAX_JOBS = 200_000


async def _client_loop(
    base_url: str,
    api_key: str,
    job_ids: Sequence[str],
    *,
    warmup: int,
    requests: int,
    rng: random.Random,
    start: asyncio.Event,
    ready: list[int],
    deadline: float,
    timeout_s: float,
) -> dict[str, Any]:
    """One client: `warmup` untimed reads, wait for every client, then `requests` timed reads."""
    latencies: list[float] = []
    errors: list[str] = []
    response_bytes = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=timeout_s
    ) as client:

        async def one(job_id: str, check: bool = False) -> tuple[float, str | None, int]:
            began = time.perf_counter()
            try:
                response = await client.get(f"/v1/jobs/{job_id}")
            except httpx.HTTPError as exc:
                return time.perf_counter() - began, f"{exc.__class__.__name__}: {exc}", 0
            elapsed = time.perf_counter() - began
            if response.status_code != 200:
                return elapsed, f"HTTP {response.status_code}: {response.text[:200]}", len(response.content)
            if check and (response.json().get("id") != job_id or "history" not in response.json()):
                return (
                    elapsed,
                    f"unexpected body for job {job_id}: {response.text[:200]}",
                    len(response.content),
                )
            return elapsed, None, len(response.content)

        for index in range(warmup):  # the first answer is checked: the right job, with its history
            _, error, _ = await one(rng.choice(job_ids), check=index == 0)
            if error is not None:
                errors.append(f"warm-up: {error}")
        ready.append(1)
        await start.wait()
        for _ in range(requests):
            if time.monotonic() > deadline:
                break
            elapsed, error, size = await one(rng.choice(job_ids))
            latencies.append(elapsed)
            response_bytes += size
            if error is not None:
                errors.append(error)
    return {"latencies": latencies, "errors": errors, "response_bytes": response_bytes}


async def _load(
    base_url: str,
    assignments: list[tuple[str, list[str]]],
    *,
    warmup: int,
    requests: int,
    seed: int,
    max_seconds: float,
    timeout_s: float,
) -> tuple[list[dict[str, Any]], float]:
    """Run every client; returns their outcomes and the wall time of the timed phase."""
    start = asyncio.Event()
    ready: list[int] = []
    deadline = time.monotonic() + max_seconds
    tasks = [
        asyncio.create_task(
            _client_loop(
                base_url, key, ids, warmup=warmup, requests=requests, rng=random.Random(seed * 7919 + i),
                start=start, ready=ready, deadline=deadline, timeout_s=timeout_s,
            )
        )
        for i, (key, ids) in enumerate(assignments)
    ]  # fmt: skip
    while len(ready) < len(tasks) and not any(t.done() for t in tasks):
        await asyncio.sleep(0.01)
    began = time.perf_counter()
    start.set()
    outcomes = await asyncio.gather(*tasks)
    return list(outcomes), time.perf_counter() - began


def run_latency(
    *,
    clients: int = 16,
    requests_per_client: int = 500,
    warmup_per_client: int = 20,
    jobs: int = 1000,
    tenants: int = 4,
    server_workers: int = 1,
    admin_url: str = DEFAULT_ADMIN_URL,
    seed: int = 0,
    max_seconds: float = 600.0,
    request_timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Latency of `GET /v1/jobs/{id}` with `clients` concurrent keep-alive clients against a live server.

    Each client belongs to a tenant (round robin) and reads random jobs of that tenant. The timed phase stops
    at `max_seconds` (then `stopped_early` is true and `requests` is what completed). The database and the
    data directory are removed at the end, whatever happens.
    """
    _check_range("clients", clients, 1, MAX_CLIENTS)
    _check_range("requests_per_client", requests_per_client, 1, MAX_REQUESTS_PER_CLIENT)
    _check_range("warmup_per_client", warmup_per_client, 0, MAX_REQUESTS_PER_CLIENT)
    _check_range("tenants", tenants, 1, 1000)
    _check_range("jobs", jobs, tenants, MAX_JOBS)
    _check_range("server_workers", server_workers, 1, 64)
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    started_at = utc_now()
    with (
        tempfile.TemporaryDirectory(prefix="argd-bench-latency-") as scratch,
        throwaway_database(admin_url, "argd_bench") as url,
    ):
        settings = Settings(database_url=url, data_dir=Path(scratch) / "data")
        seeding = time.perf_counter()
        seeded = seed_jobs(settings, tenants=tenants, jobs=jobs, seed=seed)
        seed_s = time.perf_counter() - seeding
        dispose_engines()  # the benchmark process keeps no connections open during the load
        env = server_env(settings)
        names = list(seeded["keys"])
        assignments = [
            (seeded["keys"][names[i % tenants]], seeded["jobs"][names[i % tenants]]) for i in range(clients)
        ]
        with api_server(env, Path(scratch) / "api-server.log", workers=server_workers) as server:
            outcomes, wall_s = asyncio.run(
                _load(
                    server.base_url, assignments, warmup=warmup_per_client, requests=requests_per_client,
                    seed=seed, max_seconds=max_seconds, timeout_s=request_timeout_s,
                )
            )  # fmt: skip
            server_log = server.log_tail(2000)
        version = server_version(url)
    latencies_ms = [1000.0 * v for o in outcomes for v in o["latencies"]]
    errors = [e for o in outcomes for e in o["errors"]]
    done = len(latencies_ms)
    if done == 0:
        raise RuntimeError(f"no request completed; errors: {errors[:3]}; server log:\n{server_log}")
    return {
        "benchmark": "api-latency",
        "endpoint": "GET /v1/jobs/{id}",
        "started_at": started_at,
        "clients": clients,
        "requests_per_client": requests_per_client,
        "warmup_per_client": warmup_per_client,
        "requests": done,
        "requests_planned": clients * requests_per_client,
        "stopped_early": done < clients * requests_per_client,
        "errors": len(errors),
        "error_samples": errors[:5],
        "latency_ms": {
            "p50": percentile(latencies_ms, 50),
            "p90": percentile(latencies_ms, 90),
            "p99": percentile(latencies_ms, 99),
            "max": max(latencies_ms),
            "min": min(latencies_ms),
            "mean": sum(latencies_ms) / done,
        },
        "requests_per_s": done / wall_s,
        "duration_s": wall_s,
        "response_bytes_mean": sum(o["response_bytes"] for o in outcomes) / done,
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
    """A one-row Markdown table of a `run_latency` result."""
    ms = result["latency_ms"]
    return "\n".join(
        [
            f"GET /v1/jobs/{{id}} on Postgres {result['database']['server_version']}, "
            f"{result['server_workers']} server worker(s), {result['machine']['cpus']} CPUs, "
            f"{result['jobs_seeded']} jobs ({result['events_seeded']} events) in {result['tenants']} tenants",
            "",
            "| clients | requests | p50 ms | p90 ms | p99 ms | max ms | mean ms | requests/s | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {result['clients']} | {result['requests']} | {ms['p50']:.2f} | {ms['p90']:.2f} "
            f"| {ms['p99']:.2f} | {ms['max']:.2f} | {ms['mean']:.2f} | {result['requests_per_s']:.1f} "
            f"| {result['errors']} |",
        ]
    )
