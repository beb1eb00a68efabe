"""The service benchmarks at tiny sizes: a real server, real Postgres, real uploads; the figures make sense.

The upload body generator is checked against the engine's own dataset loader (the `.npz` it streams is a
valid dataset; the random one is not a zip at all), and the runs check what the benchmarks claim: latency
percentiles in order with no errors, the throw-away database gone afterwards, upload memory that stays
flat while the bytes go to disk, and no temporary files left behind.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from argd.bench.apiserver import DEFAULT_ADMIN_URL
from argd.bench.cli import main
from argd.bench.multipart import MIB, UploadBody
from argd.bench.stats import percentile
from argd.bench.upload_memory import run_upload_memory
from argd.core.data import load_dataset_with_info
from argd.persistence.throwaway import postgres_unavailable


@pytest.fixture(scope="module")
def postgres() -> str:
    """The admin URL of the local Postgres; skips the test when there is none."""
    reason = postgres_unavailable(DEFAULT_ADMIN_URL)
    if reason is not None:
        pytest.skip(reason)
    return DEFAULT_ADMIN_URL


def _database_exists(admin_url: str, name: str) -> bool:
    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            return found is not None
    finally:
        engine.dispose()


def _file_part(body: UploadBody) -> bytes:
    data = b"".join(body)
    assert len(data) == body.content_length
    start = data.index(b"\r\n\r\n") + 4
    return data[start : start + body.file_size]


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 100) == 100.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_random_body_has_its_declared_length_and_is_not_a_zip(tmp_path: Path) -> None:
    body = UploadBody(3 * MIB + 5, "random")
    part = _file_part(body)
    assert len(part) == 3 * MIB + 5
    path = tmp_path / "random.npz"
    path.write_bytes(part)
    assert not zipfile.is_zipfile(path)
    assert body.sha256 is not None and len(body.sha256) == 64


def test_npz_body_is_a_dataset_the_engine_accepts(tmp_path: Path) -> None:
    body = UploadBody(2 * MIB, "npz")
    path = tmp_path / "stream.npz"
    path.write_bytes(_file_part(body))
    assert abs(body.file_size - 2 * MIB) < 4096
    data, info = load_dataset_with_info(path)
    assert info.count == body.images == len(data)
    assert info.shape == (3, 32, 32)
    assert info.labels == list(range(10))


def test_npz_body_over_the_engine_limits_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="dataset limits"):
        UploadBody(2000 * MIB, "npz")
    assert main(["upload-memory", "--payload", "npz", "--size-mb", "2000"]) == 2


@pytest.mark.service
def test_latency_tiny_run_paces_wrk_and_reports_every_endpoint(
    postgres: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["api-latency", "--rates", "20", "--duration", "2", "--warmup", "0", "--no-search"]
    argv += ["--jobs", "40", "--tenants", "2", "--connections", "4", "--server-workers", "1"]
    assert main([*argv, "--pg-admin-url", postgres, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "api-latency.json").read_text())
    assert "| offered /s | achieved /s | p50 ms | p99 ms" in (tmp_path / "api-latency.md").read_text()
    assert "highest rate held" in capsys.readouterr().out

    assert set(result["endpoints"]) == {"job", "job-304", "list"}
    sizes = {}
    for name, data in result["endpoints"].items():
        (step,) = data["steps"]
        assert step["errors"] == 0, (name, step["error_kinds"])
        # The pacing script holds the offered rate: classic wrk alone would send as fast as it can.
        assert 0.6 * 20 <= step["achieved_per_s"] <= 1.4 * 20, (name, step)
        ms = step["latency_ms"]
        assert 0 < ms["p50"] <= ms["p99"] <= ms["max"]
        sizes[name] = step["bytes_per_response"]
    # A job with params, metrics and history; the unchanged poll is headers only (304); pages hold jobs.
    assert sizes["job"] > 2000 and sizes["job-304"] < 400 and sizes["list"] > 2000, sizes
    assert result["jobs_seeded"] == 40 and result["events_seeded"] > 0
    assert not _database_exists(postgres, result["database"]["name"])


@pytest.mark.service
def test_upload_memory_random_payload_is_rejected_and_memory_stays_flat(postgres: str) -> None:
    result = run_upload_memory(sizes_mib=(4, 20), payload="random", admin_url=postgres)

    assert result["warmup_status"] == 422
    assert [run["upload_bytes"] for run in result["runs"]] == [4 * MIB, 20 * MIB]
    for run in result["runs"]:
        assert run["status"] == 422 and run["problem_code"] == "invalid_dataset"
        assert run["peak_rss_bytes"] >= run["baseline_rss_bytes"] > 0
        assert run["samples"] >= 2
        assert run["streamed_to_disk"], run["max_temp_bytes_on_disk"]
        assert run["leftover_temp_files"] == []
    large = result["runs"][1]
    # Holding the body in memory would add at least its 20 MiB.
    assert large["peak_minus_baseline_bytes"] < 16 * MIB
    assert result["growth"]["grows_with_size"] is False
    assert not _database_exists(postgres, result["database"]["name"])


@pytest.mark.service
def test_upload_memory_valid_npz_is_accepted_with_the_client_hash() -> None:
    result = run_upload_memory(sizes_mib=(3,), payload="npz", database="sqlite")

    assert result["warmup_status"] == 201
    (run,) = result["runs"]
    assert run["status"] == 201
    assert run["sha256_matches"] is True
    assert run["images"] > 0
    assert run["leftover_temp_files"] == []
    assert "growth" not in result
