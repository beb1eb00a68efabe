"""The embedded default: SQLite and the filesystem broker under one data directory, with a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from argd.persistence.db import dispose_engines
from argd.persistence.migrate import upgrade
from argd.persistence.settings import Settings
from argd.worker.dispatch import enqueue_job
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import finished, submit, upload_inputs, wait_for


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[Settings, WorkerProcess]]:
    settings = Settings(
        data_dir=tmp_path / "argd-data",
        progress_interval_s=0.5,
        heartbeat_interval_s=0.25,
        stale_after_s=2.0,
        recovery_interval_s=0.5,
        device="cpu",
        torch_threads=1,
    )
    assert settings.database_url.startswith("sqlite:///") and settings.broker_url == "filesystem://"
    upgrade(settings)
    env = {k: v for k, v in settings.to_env().items() if k not in ("ARGD_DATABASE_URL", "ARGD_BROKER_URL")}
    process = WorkerProcess(env, tmp_path)  # only ARGD_DATA_DIR and timings: the defaults do the rest
    process.start()
    try:
        yield settings, process
    finally:
        process.stop()
        dispose_engines()


def test_embedded_worker_runs_a_job_on_sqlite_and_the_filesystem_broker(
    embedded: tuple[Settings, WorkerProcess], tmp_path: Path
) -> None:
    settings, process = embedded
    inputs = upload_inputs(settings, tmp_path, images=64)
    job_id = submit(settings, inputs, {"epochs": 2})
    enqueue_job(job_id, settings)
    job = wait_for(settings, job_id, finished, 120, "the job to finish")
    assert job.status == "succeeded", (job.error_code, job.error_message, process.log_tail())
    assert (job.epoch, job.epochs, job.attempts) == (2, 2, 1)
    assert job.result_model_sha256 is not None
    assert (settings.data_dir / "argd.sqlite3").is_file()
    assert (settings.data_dir / "broker" / "queue").is_dir()
    assert (settings.artifacts_dir / "sha256").is_dir()
