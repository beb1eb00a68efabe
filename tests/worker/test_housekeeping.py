"""The worker's timer tick also sweeps stale temporary upload files, even when the recovery pass fails."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import make_url

from argd.persistence.artifacts import LocalArtifactStore
from argd.persistence.settings import Settings
from argd.persistence.tempfiles import upload_dir
from argd.worker.recovery import housekeeping


def _settings(data_dir: Path, database_url: str) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url, broker_url="memory://")


def _leftovers(settings: Settings) -> tuple[Path, Path, Path]:
    """An old staged artifact and an old converted upload (a killed process's), and a fresh staged one."""
    store = LocalArtifactStore(settings.artifacts_dir)
    paths = []
    for _ in range(2):
        staged = store.stage()
        staged.write(b"bytes")
        staged.finish()
        paths.append(staged.path)
    scratch = upload_dir(settings) / f"model-{uuid.uuid4().hex}.safetensors"
    scratch.parent.mkdir(parents=True)
    scratch.write_bytes(b"converted")
    when = time.time() - 2 * 3600
    for path in (paths[0], scratch):
        os.utime(path, (when, when))
    return paths[0], scratch, paths[1]


def test_timer_tick_recovers_and_sweeps(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, database_url)  # the session's Postgres database, migrated
    old_staged, old_scratch, fresh = _leftovers(settings)

    with caplog.at_level(logging.WARNING):
        housekeeping(settings)

    assert not old_staged.exists()
    assert not old_scratch.exists()
    assert fresh.exists()
    assert "job recovery pass failed" not in caplog.text


def test_a_failing_recovery_pass_does_not_skip_the_sweep(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The same Postgres server, a database that does not exist: the recovery pass fails to connect.
    missing = make_url(database_url).set(database=f"argd_missing_{uuid.uuid4().hex[:8]}")
    settings = _settings(tmp_path, missing.render_as_string(hide_password=False))
    old_staged, old_scratch, fresh = _leftovers(settings)

    with caplog.at_level(logging.WARNING):
        housekeeping(settings)

    assert "job recovery pass failed" in caplog.text
    assert not old_staged.exists()
    assert not old_scratch.exists()
    assert fresh.exists()
