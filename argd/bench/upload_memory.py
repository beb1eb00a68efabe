"""`argd bench upload-memory`: the API process's memory while it receives uploads of several sizes.

It streams multipart uploads to `POST /v1/datasets` from a generator (`argd.bench.multipart`: the client
never holds the body) while a thread samples the server's resident memory from /proc every ~20 ms
(`argd.bench.procfs`), and the kernel's high-water mark (reset before each upload) catches peaks between
samples.
The point is the receive path (parse, hash, write to disk): with the default random payload validation
rejects the file at once (422); `payload="npz"` sends a valid dataset instead, whose validation decodes the
arrays (so that mode's memory grows with the dataset, by design of the engine's loader).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from argd.bench.apiserver import DEFAULT_ADMIN_URL, api_server, server_env
from argd.bench.multipart import MIB, UploadBody
from argd.bench.procfs import MemorySampler, process_tree, read_memory, reset_peak_rss
from argd.bench.stats import machine_info, utc_now
from argd.devserver import ServerProcess
from argd.persistence import keys
from argd.persistence.db import dispose_engines, get_sessionmaker
from argd.persistence.migrate import upgrade
from argd.persistence.settings import Settings
from argd.persistence.throwaway import throwaway_database

MAX_UPLOAD_MIB = 8192


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
    started_at = utc_now()
    scratch = Path(tempfile.mkdtemp(prefix="argd-bench-upload-", dir=work_dir))
    try:
        data_dir = scratch / "data"
        with contextlib.ExitStack() as stack:
            if database == "postgres":
                url = stack.enter_context(throwaway_database(admin_url, "argd_bench"))
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
            env = server_env(settings.model_copy(update={"max_upload_bytes": limit}))
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
        "machine": machine_info(),
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
