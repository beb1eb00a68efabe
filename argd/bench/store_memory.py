"""`argd bench upload-memory --store s3`: memory of a process that streams files into the S3 store and back.

The API's receive path is the same for both stores (a temporary file, see `argd.bench.upload_memory`); what
the S3 store adds is the transfer of that file to the bucket (the API after validation, the workers for
checkpoints and results) and back (the workers' input fetches). This measures exactly that: this process
`put_file`s a random file of each size into the store (multipart) and `fetch`es it back, while a thread
samples its resident memory and the kernel's high-water mark catches peaks between samples. Without
`endpoint_url` it starts moto's S3 server (the dev extra) on a free port, as the tests do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from argd.bench.multipart import MIB
from argd.bench.procfs import MemorySampler, read_memory, reset_peak_rss
from argd.bench.stats import machine_info, utc_now
from argd.devserver import free_port
from argd.persistence.settings import Settings

MAX_SIZE_MIB = 8192


def spawn_moto_server(
    log_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m moto.server` on a free loopback port (its output to `log_path`) and wait until it
    answers; returns the process and its endpoint URL. The benchmark and the test suite's S3 server use it."""
    import httpx

    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            return process, endpoint
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"moto's S3 server did not start (log {log_path}):\n{tail}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def _moto_server(log_path: Path) -> Iterator[str]:
    """moto's S3 server in a subprocess on a free port; yields its endpoint URL."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("--store s3 without --s3-endpoint-url needs moto[server] (the dev extra)") from exc
    process, endpoint = spawn_moto_server(log_path)
    try:
        yield endpoint
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()


def _random_file(path: Path, size: int, seed: int) -> str:
    """Write `size` pseudo-random bytes in 1 MiB chunks; returns their sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
    with open(path, "wb") as handle:
        written = 0
        counter = 0
        while written < size:
            # Vary each chunk so no two parts are equal (a server could otherwise deduplicate them).
            chunk = counter.to_bytes(8, "little") + block[8 : min(MIB, size - written)]
            chunk = chunk[: size - written]
            handle.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            counter += 1
    return digest.hexdigest()


class _OwnMemory(MemorySampler):
    """Samples this process only: the moto server it started is its child, and holds the objects."""

    def sample(self) -> int:
        rss = read_memory(self.pid).get("VmRSS", 0)
        self.peak_rss = max(self.peak_rss, rss)
        self.samples += 1
        return rss


def _measured(action: Any, interval_s: float, watch: Path) -> tuple[Any, dict[str, Any]]:
    """Run `action()` while sampling this process's memory; its result and the memory figures."""
    pid = os.getpid()
    hwm_reset = reset_peak_rss([pid])
    sampler = _OwnMemory(pid, interval_s, watch)
    baseline = sampler.sample()
    sampler.peak_rss = baseline
    sampler.start()
    began = time.perf_counter()
    try:
        result = action()
    finally:
        elapsed = time.perf_counter() - began
        sampler.stop()
    hwm = read_memory(pid).get("VmHWM", 0)
    peak = max(sampler.peak_rss, hwm) if hwm_reset else sampler.peak_rss
    return result, {
        "seconds": elapsed,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "peak_minus_baseline_bytes": peak - baseline,
        "samples": sampler.samples,
    }


def run_store_memory(
    *,
    sizes_mib: Sequence[float] = (64, 512),
    endpoint_url: str | None = None,
    bucket: str | None = None,
    sample_interval_s: float = 0.02,
    work_dir: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Peak memory of this process while it uploads a file of each size to the S3 store and downloads it.

    With `endpoint_url` (and `bucket`, which must exist) it measures against that server, with credentials
    from the AWS_* variables; without, against a moto server it starts. Objects are deleted afterwards.
    """
    if not sizes_mib:
        raise ValueError("give at least one size")
    for size in sizes_mib:
        if not 0 < size <= MAX_SIZE_MIB:
            raise ValueError(f"sizes must be in (0, {MAX_SIZE_MIB}] MiB, got {size}")
    if endpoint_url and not bucket:
        raise ValueError("--s3-endpoint-url needs --s3-bucket (an existing bucket)")
    from argd.persistence.s3store import S3ArtifactStore

    started_at = utc_now()
    scratch = Path(tempfile.mkdtemp(prefix="argd-bench-s3-", dir=work_dir))
    try:
        with contextlib.ExitStack() as stack:
            credentials: dict[str, Any] = {}
            if endpoint_url is None:
                endpoint_url = stack.enter_context(_moto_server(scratch / "moto.log"))
                bucket = f"argd-bench-{uuid.uuid4().hex[:8]}"
                credentials = {"s3_access_key_id": "bench", "s3_secret_access_key": SecretStr("bench")}
            settings = Settings(
                data_dir=scratch / "data",
                artifact_url=f"s3://{bucket}/bench-{uuid.uuid4().hex[:8]}",
                s3_endpoint_url=endpoint_url,
                s3_region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                **credentials,
            )
            store = S3ArtifactStore(settings)
            if credentials:
                store.client.create_bucket(Bucket=bucket)
            store.check()
            # Warm-up: a small file and one just over the part size load boto3's transfer machinery.
            for size in (MIB, 17 * MIB):
                path = scratch / "warmup.bin"
                sha = _random_file(path, size, seed)
                store.put_file(path)
                store.fetch(sha, scratch / "warmup.out")
                store.delete(sha)
            runs: list[dict[str, Any]] = []
            for size_mib in sizes_mib:
                size = int(size_mib * MIB)
                source, copy = scratch / "upload.bin", scratch / "download.bin"
                sha = _random_file(source, size, seed + len(runs) + 1)
                blob, upload = _measured(lambda p=source: store.put_file(p), sample_interval_s, scratch)
                _, download = _measured(lambda s=sha, c=copy: store.fetch(s, c), sample_interval_s, scratch)
                matches = blob.sha256 == sha and _sha256(copy) == sha
                store.delete(sha)
                source.unlink()
                copy.unlink()
                runs.append(
                    {
                        "size_bytes": size,
                        "sha256_matches": matches,
                        "upload": {**upload, "throughput_mib_s": size / MIB / upload["seconds"]},
                        "download": {**download, "throughput_mib_s": size / MIB / download["seconds"]},
                    }
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result: dict[str, Any] = {
        "benchmark": "upload-memory",
        "store": "s3",
        "endpoint": "moto (started by the benchmark)" if credentials else endpoint_url,
        "started_at": started_at,
        "part_bytes": store.transfer.multipart_chunksize,
        "concurrency": store.transfer.max_request_concurrency,
        "runs": runs,
        "machine": machine_info(),
    }
    if len(runs) >= 2:
        small = min(runs, key=lambda r: r["size_bytes"])
        large = max(runs, key=lambda r: r["size_bytes"])
        threshold = max(32 * MIB, 0.05 * (large["size_bytes"] - small["size_bytes"]))
        growth: dict[str, Any] = {}
        for way in ("upload", "download"):
            delta = large[way]["peak_minus_baseline_bytes"] - small[way]["peak_minus_baseline_bytes"]
            growth[way] = {"delta_mib": delta / MIB, "grows_with_size": delta > threshold}
        result["growth"] = {
            "small_mib": small["size_bytes"] / MIB,
            "large_mib": large["size_bytes"] / MIB,
            "threshold_mib": threshold / MIB,
            **growth,
        }
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def store_markdown(result: dict[str, Any]) -> str:
    """A Markdown table of a `run_store_memory` result: one row per size and direction."""
    lines = [
        f"S3 store ({result['endpoint']}, parts of {result['part_bytes'] // MIB} MiB, "
        f"{result['concurrency']} in flight): memory of the transferring process",
        "",
        "| MiB | direction | baseline RSS MiB | peak RSS MiB | peak - baseline MiB | MiB/s | sha256 ok |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for run in result["runs"]:
        for way in ("upload", "download"):
            m = run[way]
            lines.append(
                f"| {run['size_bytes'] / MIB:.0f} | {way} | {m['baseline_rss_bytes'] / MIB:.1f} "
                f"| {m['peak_rss_bytes'] / MIB:.1f} | {m['peak_minus_baseline_bytes'] / MIB:.1f} "
                f"| {m['throughput_mib_s']:.1f} | {run['sha256_matches']} |"
            )
    growth = result.get("growth")
    if growth:
        lines.append("")
        for way in ("upload", "download"):
            verdict = "grows" if growth[way]["grows_with_size"] else "does not grow"
            lines.append(
                f"{way.capitalize()} from {growth['small_mib']:.0f} MiB to {growth['large_mib']:.0f} MiB: "
                f"the peak above baseline changes by {growth[way]['delta_mib']:+.1f} MiB; memory {verdict} "
                f"with the size (threshold {growth['threshold_mib']:.0f} MiB)."
            )
    return "\n".join(lines)
