"""`argd bench upload-memory --store s3` at tiny sizes, on the moto server it starts itself: every file
comes back with its hash, both directions are measured, and the upload's memory does not grow with size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from argd.bench.cli import main
from argd.bench.multipart import MIB
from argd.bench.store_memory import run_store_memory, store_markdown

pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")


def test_s3_store_transfers_are_measured_and_uploads_stay_flat() -> None:
    result = run_store_memory(sizes_mib=(2, 40))
    assert [run["size_bytes"] for run in result["runs"]] == [2 * MIB, 40 * MIB]
    for run in result["runs"]:
        assert run["sha256_matches"]
        for way in ("upload", "download"):
            assert run[way]["samples"] >= 2 and run[way]["peak_rss_bytes"] >= run[way]["baseline_rss_bytes"]
    # 40 MiB is three parts of 16 MiB: a multipart upload that must not hold the file.
    assert not result["growth"]["upload"]["grows_with_size"], result["growth"]
    assert result["runs"][1]["upload"]["peak_minus_baseline_bytes"] < 32 * MIB
    assert "| 40 | upload |" in store_markdown(result)


def test_the_command_line_runs_it_and_checks_its_options(tmp_path: Path) -> None:
    assert main(["upload-memory", "--store", "s3", "--s3-endpoint-url", "http://127.0.0.1:1"]) == 2
    out = tmp_path / "out"
    assert (
        main(["upload-memory", "--store", "s3", "--size-mb", "1", "--compare-mb", "0", "--out", str(out)])
        == 0
    )
    written = json.loads((out / "upload-memory-s3.json").read_text())
    assert written["store"] == "s3" and written["runs"][0]["sha256_matches"]
