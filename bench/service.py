"""Service benchmarks: `GET /v1/jobs/{id}` latency under concurrent clients, and API memory during uploads.

Both run the real API: uvicorn in a subprocess on 127.0.0.1, on a throw-away Postgres database (created,
migrated and dropped here) and a temporary data directory, so the figures include the HTTP stack, auth,
the database round trips and the JSON encoding a client sees.

- `run_latency` seeds tenants, API keys and jobs with their per-epoch events through the persistence models,
  then lets C asyncio clients (one keep-alive connection each) read random jobs of their own tenant, after a
  warm-up, and reports percentiles, throughput and errors.
- `run_upload_memory` streams multipart uploads of several sizes to `POST /v1/datasets` from a generator
  (the client never holds the body) while a thread samples the server's resident memory from /proc every
  ~20 ms, and the kernel's high-water mark (reset before each upload) catches peaks between samples. The
  point is the receive path (parse, hash, write to disk): with the default random payload validation rejects
  the file at once (422); `payload="npz"` sends a valid dataset instead, whose validation decodes the arrays
  (so that mode's memory grows with the dataset, by design of the engine's loader).

The clients share the machine with the server, so the latency figures are for "this machine", not for the
server alone; the reports say how many CPUs there were.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import os
import platform
import random
import shutil
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from argd.cli.argtypes import positive_float, positive_int
from argd.core.params import CleanseParams
from argd.devserver import ServerProcess
from argd.persistence import keys
from argd.persistence.db import dispose_engines, get_sessionmaker
from argd.persistence.migrate import upgrade
from argd.persistence.models import Artifact, Dataset, Job, JobEvent, Model
from argd.persistence.settings import Settings

DEFAULT_ADMIN_URL = os.environ.get(
    "ARGD_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MIB = 1024 * 1024
READY_TIMEOUT_S = 90.0
REPO_ROOT = Path(__file__).resolve().parents[1]

# Hard bounds so that a typo cannot turn a benchmark into a denial of service on a shared machine.
MAX_CLIENTS = 1024
MAX_REQUESTS_PER_CLIENT = 1_000_000
MAX_JOBS = 200_000
MAX_UPLOAD_MIB = 8192


# --- throw-away database --------------------------------------------------------------------------------


def postgres_unavailable(admin_url: str = DEFAULT_ADMIN_URL) -> str | None:
    """None when the server behind `admin_url` answers, else why not (for skips and error messages)."""
    engine = create_engine(admin_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:
        where = make_url(admin_url).render_as_string(hide_password=True)
        return f"no Postgres at {where}: {exc.__class__.__name__}"
    finally:
        engine.dispose()


@contextlib.contextmanager
def throwaway_database(admin_url: str = DEFAULT_ADMIN_URL, prefix: str = "argd_bench") -> Iterator[str]:
    """A new empty Postgres database `<prefix>_<random>`, migrated to head; dropped (forcefully) on exit."""
    reason = postgres_unavailable(admin_url)
    if reason is not None:
        raise RuntimeError(reason)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        with tempfile.TemporaryDirectory(prefix="argd-bench-migrate-") as scratch:
            upgrade(Settings(database_url=url, data_dir=Path(scratch)), "head")
        yield url
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _server_version(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


# --- the API server -------------------------------------------------------------------------------------


def api_server(env: dict[str, str], log_path: Path, workers: int = 1) -> ServerProcess:
    """The API under test: uvicorn with `workers` worker processes, no access log, on this repository."""
    return ServerProcess(
        {**os.environ, **env},
        log_path,
        extra_args=["--workers", str(workers), "--no-access-log"],
        ready_timeout_s=READY_TIMEOUT_S,
        cwd=REPO_ROOT,
    )


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (uvicorn's supervisor and its worker processes), from /proc."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    queue.extend(
                        int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()
                    )
    return found


def read_memory(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (resident peak) of one process in bytes; {} once it has exited."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount, _unit = line.split()
                values[key.rstrip(":")] = int(amount) * 1024
    except OSError:
        return {}
    return values


def reset_peak_rss(pids: Sequence[int]) -> bool:
    """Reset the kernel's peak-RSS mark of each process (`clear_refs` 5); False where it is not permitted."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def _tree_bytes(root: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            with contextlib.suppress(OSError):
                total += _tree_bytes(Path(entry.path)) if entry.is_dir() else entry.stat().st_size
    return total


class MemorySampler(threading.Thread):
    """Samples the summed RSS of a process tree and the bytes in a folder every `interval_s` until stopped."""

    def __init__(self, pid: int, interval_s: float, watch_dir: Path):
        super().__init__(daemon=True, name="rss-sampler")
        self.pid = pid
        self.interval_s = interval_s
        self.watch_dir = watch_dir
        self.samples = 0
        self.peak_rss = 0
        self.peak_dir_bytes = 0
        self._halt = threading.Event()

    def sample(self) -> int:
        rss = sum(read_memory(p).get("VmRSS", 0) for p in process_tree(self.pid))
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_dir_bytes = max(self.peak_dir_bytes, _tree_bytes(self.watch_dir))
        self.samples += 1
        return rss

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


# --- statistics and reports -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between the closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in load] if load else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


def upload_markdown(result: dict[str, Any]) -> str:
    """A Markdown table of a `run_upload_memory` result, one row per upload size."""
    lines = [
        f"POST {result['endpoint']} ({result['payload']} payload): API process memory while receiving",
        "",
        "| upload MiB | status | baseline RSS MiB | peak RSS MiB | peak - baseline MiB | MiB/s "
        "| max on disk MiB | leftover temp files |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['upload_bytes'] / MIB:.1f} | {run['status']} | {run['baseline_rss_bytes'] / MIB:.1f} "
            f"| {run['peak_rss_bytes'] / MIB:.1f} | {run['peak_minus_baseline_bytes'] / MIB:.1f} "
            f"| {run['throughput_mib_s']:.1f} | {run['max_temp_bytes_on_disk'] / MIB:.1f} "
            f"| {len(run['leftover_temp_files'])} |"
        )
    growth = result.get("growth")
    if growth:
        verdict = "grows" if growth["grows_with_size"] else "does not grow"
        lines += [
            "",
            f"From {growth['small_mib']:.0f} MiB to {growth['large_mib']:.0f} MiB the peak above baseline "
            f"changes by {growth['delta_mib']:+.1f} MiB: memory {verdict} with the upload size "
            f"(threshold {growth['threshold_mib']:.0f} MiB).",
        ]
    return "\n".join(lines)


def write_result(result: dict[str, Any], out_dir: Path, name: str, markdown: str) -> Path:
    """Write `<name>.json` and `<name>.md` into `out_dir`; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown + "\n")
    return path


# --- latency --------------------------------------------------------------------------------------------


def _fake_sha(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _job_rows(
    rng: random.Random, tenant_id: str, inputs: dict[str, str], params: dict[str, Any], now: datetime
) -> tuple[Job, list[JobEvent]]:
    """One job in a realistic state mix, with the events a worker would have recorded for it."""
    teacher_epochs, epochs = int(params["teacher_epochs"]), int(params["epochs"])
    status = rng.choices(
        ["succeeded", "running", "queued", "failed", "canceled"], weights=[70, 10, 10, 7, 3]
    )[0]
    created = now - timedelta(seconds=rng.uniform(60, 30 * 86400))
    job = Job(
        tenant_id=tenant_id,
        model_id=inputs["model"],
        clean_dataset_id=inputs["clean"],
        test_dataset_id=inputs["test"],
        method="argd",
        params=params,
        status=status,
        epochs=epochs,
        created_at=created,
        updated_at=created,
    )
    total = teacher_epochs + epochs
    if status in ("succeeded", "queued"):
        done = total if status == "succeeded" else 0
    else:  # stopped part-way; cancelled jobs usually early
        done = rng.randint(0, 4) if status == "canceled" else rng.randint(1, total - 1)
    if status != "queued":
        job.attempts = 1
        job.started_at = created + timedelta(seconds=rng.uniform(1, 30))
        job.worker = "bench-host:4242"
    if status == "running":
        job.phase = "teacher" if done < teacher_epochs else "distill"
        job.epoch = done if done < teacher_epochs else done - teacher_epochs
        job.epochs = teacher_epochs if done < teacher_epochs else epochs
        job.fraction = done / total
        job.eta_s = rng.uniform(10, 600)
        job.heartbeat_at = now
    elif status == "succeeded":
        job.phase, job.epoch, job.fraction = "evaluate", epochs, 1.0
        acc, asr = rng.uniform(0.85, 0.93), rng.uniform(0.9, 1.0)
        job.metrics = {
            "before": {"acc": acc, "asr": asr, "ra": rng.uniform(0.0, 0.1)},
            "teacher": {"acc": acc - 0.01, "asr": asr * 0.8, "ra": rng.uniform(0.1, 0.3)},
            "after": {"acc": acc - 0.02, "asr": rng.uniform(0.0, 0.05), "ra": rng.uniform(0.7, 0.9)},
            "der": rng.uniform(0.9, 0.99),
            "fidelity": rng.uniform(0.8, 0.95),
        }
        job.result_model_sha256 = inputs["result"]
    elif status == "failed":
        job.error_code, job.error_message = "out_of_memory", "The GPU ran out of memory; lower batch_size."
    if status in ("succeeded", "failed", "canceled"):
        job.finished_at = created + timedelta(seconds=rng.uniform(120, 3600))
    events = []
    for index in range(done):
        phase, epoch = (
            ("teacher", index + 1) if index < teacher_epochs else ("distill", index - teacher_epochs + 1)
        )
        losses = {name: rng.uniform(0.01, 2.0) for name in ("ce", "node", "edge", "emb", "total")}
        events.append(
            JobEvent(
                attempt=1,
                phase=phase,
                epoch=epoch,
                losses=losses,
                metrics={"lr": 0.01, "val_acc": rng.uniform(0.8, 0.9), "seconds": rng.uniform(5, 60)},
                created_at=created + timedelta(seconds=30 * (index + 1)),
            )
        )
    job.events = events
    return job, events


def seed_jobs(settings: Settings, *, tenants: int, jobs: int, seed: int = 0) -> dict[str, Any]:
    """Tenants with one API key, one model and two datasets each, and `jobs` jobs spread over them.

    Returns {"keys": {tenant: key}, "jobs": {tenant: [job ids]}, "events": n}.
    """
    rng = random.Random(seed)
    params = CleanseParams().model_dump(mode="json")
    now = datetime.now(UTC)
    session = get_sessionmaker(settings)()
    api_keys: dict[str, str] = {}
    job_ids: dict[str, list[str]] = {}
    events = 0
    try:
        tenant_ids: dict[str, str] = {}
        inputs: dict[str, dict[str, str]] = {}
        for t in range(tenants):
            name = f"bench-tenant-{t}"
            api_keys[name] = keys.create_key(session, name, settings)
            tenant = keys.get_or_create_tenant(session, name)
            tenant_ids[name] = tenant.id
            shas = {kind: _fake_sha(seed, t, kind) for kind in ("model", "clean", "test", "result")}
            session.add_all(
                Artifact(
                    sha256=sha, size=1_000_000, kind="model" if kind in ("model", "result") else "dataset"
                )
                for kind, sha in shas.items()
            )
            spec = {"architecture": "wrn-16-1", "num_classes": 10, "in_channels": 3, "image_size": 32}
            model = Model(tenant_id=tenant.id, name="wrn.pt", sha256=shas["model"], size=1_000_000, spec=spec)
            clean, test = (
                Dataset(
                    tenant_id=tenant.id, name=f"{kind}.npz", sha256=shas[kind], size=1_000_000, count=2500,
                    shape=[3, 32, 32], classes=list(range(10)),
                )
                for kind in ("clean", "test")
            )  # fmt: skip
            session.add_all([model, clean, test])
            session.flush()
            inputs[name] = {"model": model.id, "clean": clean.id, "test": test.id, "result": shas["result"]}
            job_ids[name] = []
        names = list(api_keys)
        for start in range(0, jobs, 500):  # flush in batches: bounded session size, batched INSERTs
            batch = []
            for index in range(start, min(start + 500, jobs)):
                name = names[index % tenants]
                job, job_events = _job_rows(rng, tenant_ids[name], inputs[name], params, now)
                session.add(job)
                batch.append((name, job))
                events += len(job_events)
            session.flush()
            for name, job in batch:
                job_ids[name].append(job.id)
            session.expunge_all()
        session.commit()
    finally:
        session.close()
    return {"keys": api_keys, "jobs": job_ids, "events": events}


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
    started_at = _now()
    with (
        tempfile.TemporaryDirectory(prefix="argd-bench-latency-") as scratch,
        throwaway_database(admin_url) as url,
    ):
        settings = Settings(database_url=url, data_dir=Path(scratch) / "data")
        seeding = time.perf_counter()
        seeded = seed_jobs(settings, tenants=tenants, jobs=jobs, seed=seed)
        seed_s = time.perf_counter() - seeding
        dispose_engines()  # the benchmark process keeps no connections open during the load
        env = _server_env(settings, max_upload_bytes=settings.max_upload_bytes)
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
        version = _server_version(url)
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
        "machine": _machine(),
    }


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _server_env(settings: Settings, *, max_upload_bytes: int) -> dict[str, str]:
    """The ARGD_* variables of the server: this database and data directory, a broker needing no server."""
    return {
        "ARGD_DATABASE_URL": settings.database_url,
        "ARGD_DATA_DIR": str(settings.data_dir),
        "ARGD_BROKER_URL": "",  # the embedded filesystem broker: nothing here enqueues; no Redis is touched
        "ARGD_MAX_UPLOAD_BYTES": str(max_upload_bytes),
        "ARGD_API_KEY_PEPPER": settings.api_key_pepper.get_secret_value(),
        "OMP_NUM_THREADS": "1",
    }


# --- upload memory --------------------------------------------------------------------------------------


class UploadBody:
    """A multipart/form-data body with one file part, produced chunk by chunk, with its exact length known.

    `payload="random"`: pseudo-random bytes (one MiB block repeated, with no zip signature in it, so
    validation rejects the file without reading it). `payload="npz"`: a valid `.npz` (an uncompressed zip of
    `x` uint8 [N,32,32,3] and `y` int64 [N]) written as a stream, its CRCs in data descriptors after each
    member. Iterating yields the body; afterwards `sha256` holds the digest of the file part.
    """

    CHUNK = MIB
    IMAGE_SHAPE = (32, 32, 3)

    def __init__(self, size_bytes: int, payload: str = "random", seed: int = 0):
        if payload not in ("random", "npz"):
            raise ValueError(f"payload must be 'random' or 'npz', got {payload!r}")
        if size_bytes < 1:
            raise ValueError(f"upload size must be positive, got {size_bytes}")
        self.payload = payload
        self.boundary = f"argd-bench-{uuid.uuid4().hex}"
        self._block = random.Random(seed).randbytes(self.CHUNK).replace(b"PK", b"pk")
        self.images = 0
        self._members: list[tuple[str, bytes, int]] = []  # (name, .npy header, data bytes after it)
        if payload == "npz":
            self.images = self._image_count(size_bytes)
            shapes = (
                ("x.npy", "|u1", (self.images, *self.IMAGE_SHAPE), 1),
                ("y.npy", "<i8", (self.images,), 8),
            )
            for name, descr, shape, itemsize in shapes:
                buffer = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buffer, {"descr": descr, "fortran_order": False, "shape": shape}
                )
                self._members.append((name, buffer.getvalue(), int(np.prod(shape)) * itemsize))
            local = sum(30 + len(name) + len(header) + length + 16 for name, header, length in self._members)
            self.file_size = local + sum(46 + len(name) for name, _, _ in self._members) + 22
        else:
            self.file_size = size_bytes
        filename = f"bench-{size_bytes // MIB}mib.npz"
        self._head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.content_length = len(self._head) + self.file_size + len(self._tail)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self.sha256: str | None = None
        # A pause before the closing boundary: the server then holds the whole part on disk, waiting for the
        # end of the form, long enough for a sampler to see it (small uploads are otherwise gone too fast).
        self.pause_before_tail_s = 0.0

    def _image_count(self, size_bytes: int) -> int:
        from argd.core.data import MAX_IMAGES, MAX_TOTAL_BYTES  # imports torch: only for this payload

        per_image = int(np.prod(self.IMAGE_SHAPE)) + 8
        n = max(1, (size_bytes - 512) // per_image)
        if n > MAX_IMAGES or n * per_image > MAX_TOTAL_BYTES:
            raise ValueError(
                f"an .npz of {size_bytes / MIB:.0f} MiB exceeds the engine's dataset limits "
                f"({MAX_IMAGES} images of 32x32x3, {MAX_TOTAL_BYTES} bytes); use the random payload "
                "for larger uploads"
            )
        return n

    def _repeat(self, length: int) -> Iterator[bytes]:
        while length > 0:
            take = min(length, len(self._block))
            yield self._block if take == len(self._block) else self._block[:take]
            length -= take

    def _npz_stream(self) -> Iterator[bytes]:
        entries = []
        offset = 0
        for name, header, length in self._members:
            encoded = name.encode()
            # Local header: version 2.0, flag bit 3 (CRC and sizes follow the data), stored, date 1980-01-01.
            local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x08, 0, 0, 0x21, 0, 0, 0, len(encoded), 0)
            yield local + encoded
            # y: labels 0..9 in turn (at most 1.6 MB); x: the repeated block as pixels
            body = (
                [(np.arange(self.images, dtype="<i8") % 10).tobytes()]
                if name == "y.npy"
                else self._repeat(length)
            )
            crc, size = 0, 0
            for chunk in itertools.chain([header], body):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                yield chunk
            yield struct.pack("<IIII", 0x08074B50, crc, size, size)
            entries.append((encoded, crc, size, offset))
            offset += len(local) + len(encoded) + size + 16
        central = b"".join(
            struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0x08, 0, 0, 0x21, crc, size, size, len(encoded),
                0, 0, 0, 0, 0, local_offset,
            ) + encoded
            for encoded, crc, size, local_offset in entries
        )  # fmt: skip
        yield central
        yield struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), offset, 0)

    def __iter__(self) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        yield self._head
        sent = 0
        for chunk in self._npz_stream() if self.payload == "npz" else self._repeat(self.file_size):
            hasher.update(chunk)
            sent += len(chunk)
            yield chunk
        if sent != self.file_size:
            raise RuntimeError(f"the upload generator produced {sent} bytes, expected {self.file_size}")
        self.sha256 = hasher.hexdigest()
        if self.pause_before_tail_s > 0:
            time.sleep(self.pause_before_tail_s)
        yield self._tail


def _leftovers(data_dir: Path) -> list[str]:
    """Files left in the upload and staging folders (there should be none once a request has answered)."""
    found = []
    for folder in (data_dir / "tmp", data_dir / "artifacts" / "tmp"):
        if folder.exists():
            found += [str(p.relative_to(data_dir)) for p in folder.rglob("*") if p.is_file()]
    return sorted(found)


def _upload_once(
    server: ServerProcess, api_key: str, body: UploadBody, data_dir: Path, interval_s: float, timeout_s: float
) -> dict[str, Any]:
    """One streamed upload while sampling the server's memory; the memory and disk figures of that upload."""
    pids = process_tree(server.pid)
    hwm_reset = reset_peak_rss(pids)
    sampler = MemorySampler(server.pid, interval_s, data_dir / "tmp")
    baseline = sampler.sample()
    sampler.peak_rss = baseline
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": body.content_type,
        "Content-Length": str(body.content_length),  # known in advance: no chunked encoding
    }
    body.pause_before_tail_s = max(0.2, 5 * interval_s)
    sampler.start()
    began = time.perf_counter()
    try:
        with httpx.Client(base_url=server.base_url, timeout=timeout_s) as client:
            response = client.post("/v1/datasets", content=iter(body), headers=headers)
    finally:
        elapsed = time.perf_counter() - began - body.pause_before_tail_s  # the pause is not transfer time
        sampler.stop()
    hwm = sum(read_memory(p).get("VmHWM", 0) for p in pids)
    peak = max(sampler.peak_rss, hwm) if hwm_reset else sampler.peak_rss
    try:
        answer = response.json()
    except ValueError:
        answer = {"text": response.text[:200]}
    leftovers = _leftovers(data_dir)
    for _ in range(20):  # the temp files go before the answer is sent; allow a moment for slow disks
        if not leftovers:
            break
        time.sleep(0.1)
        leftovers = _leftovers(data_dir)
    server_sha = answer.get("upload_sha256") if response.status_code == 201 else None
    return {
        "upload_bytes": body.file_size,
        "body_bytes": body.content_length,
        "payload": body.payload,
        "images": body.images or None,
        "status": response.status_code,
        "problem_code": answer.get("code"),
        "detail": answer.get("detail"),
        "seconds": elapsed,
        "throughput_mib_s": body.content_length / MIB / elapsed,
        "baseline_rss_bytes": baseline,
        "peak_rss_sampled_bytes": sampler.peak_rss,
        "peak_hwm_bytes": hwm if hwm_reset else None,
        "peak_rss_bytes": peak,
        "peak_minus_baseline_bytes": peak - baseline,
        "samples": sampler.samples,
        "sample_interval_s": interval_s,
        "max_temp_bytes_on_disk": sampler.peak_dir_bytes,
        # python-multipart keeps back at most a boundary's length of data until it knows it is not one.
        "streamed_to_disk": sampler.peak_dir_bytes >= body.file_size - 4096,
        "client_sha256": body.sha256,
        "server_sha256": server_sha,
        "sha256_matches": None if server_sha is None else server_sha == body.sha256,
        "leftover_temp_files": leftovers,
        "dataset_id": answer.get("id") if response.status_code == 201 else None,
    }


def run_upload_memory(
    *,
    sizes_mib: Sequence[float] = (100, 500),
    payload: str = "random",
    database: str = "postgres",
    admin_url: str = DEFAULT_ADMIN_URL,
    sample_interval_s: float = 0.02,
    upload_timeout_s: float = 900.0,
    work_dir: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Peak memory of the API process while it receives uploads of each size in `sizes_mib` (MiB).

    A small upload of the same kind runs first so that the baseline includes what the first upload loads
    (the engine's modules); each measured upload then resets the kernel's peak-RSS mark and is sampled every
    `sample_interval_s`. With two sizes or more, `growth` compares the smallest and the largest. `database`
    is "postgres" (a throw-away database) or "sqlite" (a file in the data directory). Everything written
    (data directory, database) is removed at the end.
    """
    if not sizes_mib:
        raise ValueError("give at least one upload size")
    for size in sizes_mib:
        if not 0 < size <= MAX_UPLOAD_MIB:
            raise ValueError(f"upload sizes must be in (0, {MAX_UPLOAD_MIB}] MiB, got {size}")
    if database not in ("postgres", "sqlite"):
        raise ValueError(f"database must be 'postgres' or 'sqlite', got {database!r}")
    if not 0.001 <= sample_interval_s <= 1.0:
        raise ValueError(f"sample_interval_s must be in [0.001, 1], got {sample_interval_s}")
    bodies = [UploadBody(int(size * MIB), payload, seed) for size in sizes_mib]  # checks npz limits up front
    started_at = _now()
    scratch = Path(tempfile.mkdtemp(prefix="argd-bench-upload-", dir=work_dir))
    try:
        data_dir = scratch / "data"
        with contextlib.ExitStack() as stack:
            if database == "postgres":
                url = stack.enter_context(throwaway_database(admin_url))
            else:
                url = f"sqlite:///{data_dir / 'argd.sqlite3'}"
            settings = Settings(database_url=url, data_dir=data_dir)
            if database == "sqlite":
                upgrade(settings, "head")
            session = get_sessionmaker(settings)()
            try:
                api_key = keys.create_key(session, "bench-uploads", settings)
                session.commit()
            finally:
                session.close()
            dispose_engines()
            limit = max(body.file_size for body in bodies) + MIB
            env = _server_env(settings, max_upload_bytes=limit)
            server = stack.enter_context(api_server(env, scratch / "api-server.log"))
            after_start = sum(read_memory(p).get("VmRSS", 0) for p in process_tree(server.pid))
            warmup = _upload_once(
                server, api_key, UploadBody(MIB, payload, seed), data_dir, sample_interval_s, upload_timeout_s
            )
            runs = []
            for body in bodies:
                run = _upload_once(server, api_key, body, data_dir, sample_interval_s, upload_timeout_s)
                if run["dataset_id"]:  # free the disk between sizes
                    with httpx.Client(base_url=server.base_url, timeout=60) as client:
                        client.delete(
                            f"/v1/datasets/{run['dataset_id']}",
                            headers={"Authorization": f"Bearer {api_key}"},
                        )
                runs.append(run)
            server_log = server.log_tail(2000)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result: dict[str, Any] = {
        "benchmark": "upload-memory",
        "endpoint": "/v1/datasets",
        "payload": payload,
        "database": {"kind": database, "name": make_url(url).database if database == "postgres" else None},
        "started_at": started_at,
        "rss_after_start_bytes": after_start,
        "rss_after_warmup_bytes": runs[0]["baseline_rss_bytes"],
        "warmup_status": warmup["status"],
        "runs": runs,
        "machine": _machine(),
        "server_log_tail": server_log if any(r["status"] >= 500 for r in runs) else "",
    }
    if len(runs) >= 2:
        small = min(runs, key=lambda r: r["upload_bytes"])
        large = max(runs, key=lambda r: r["upload_bytes"])
        delta = large["peak_minus_baseline_bytes"] - small["peak_minus_baseline_bytes"]
        # "Flat" means: the extra memory of the larger upload is under 5 % of the extra bytes, or 32 MiB.
        threshold = max(32 * MIB, 0.05 * (large["upload_bytes"] - small["upload_bytes"]))
        result["growth"] = {
            "small_mib": small["upload_bytes"] / MIB,
            "large_mib": large["upload_bytes"] / MIB,
            "delta_mib": delta / MIB,
            "threshold_mib": threshold / MIB,
            "grows_with_size": delta > threshold,
        }
    return result


# --- command line ---------------------------------------------------------------------------------------


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the latency benchmark (`argd bench api-latency`, `python -m bench.service latency`)."""
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


def add_subcommands(subparsers: Any, latency_name: str = "api-latency") -> None:
    """Add the `api-latency` and `upload-memory` subcommands to an argparse subparsers object.

    Dispatch the parsed arguments with `run_from_args(args)` (it reads `args.service_bench`).
    """
    add_latency_arguments(
        subparsers.add_parser(
            latency_name,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service", description="Benchmarks of the API service."
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True), latency_name="latency")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.service latency|upload-memory [options]`; returns the exit status."""
    return run_from_args(build_parser().parse_args(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
