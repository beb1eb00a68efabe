"""The job-speed benchmark at a tiny size: the same cleanse runs as `argd cleanse` and as a job on the
embedded service, both succeed, and the pool process runs torch on the threads it was given."""

from __future__ import annotations

import os

import pytest

from argd.bench.job_speed import job_speed_markdown, run_job_speed
from argd.persistence.settings import Settings
from argd.worker.celery_app import pool_threads


def test_tiny_job_speed_run_compares_both_sides() -> None:
    os.environ.pop("ARGD_TORCH_THREADS", None)
    result = run_job_speed(images=200, epochs=1, teacher_epochs=1, rounds=1, architecture="small-cnn")
    cli, service = result["runs"]["cli"][0], result["runs"]["service"][0]
    assert 0 < cli["engine_s"] <= cli["wall_s"] and 0 < service["engine_s"] <= service["wall_s"]
    assert result["ratio_service_over_cli"]["engine_s"] > 0
    # The pool process (forked by Celery) ran torch on what the settings and environment ask for.
    assert service["torch_threads"] == pool_threads(Settings())
    assert "| service / CLI |" in job_speed_markdown(result)


def test_pool_threads_follow_the_settings_then_omp_then_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert pool_threads(Settings()) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert pool_threads(Settings()) == 3
    assert pool_threads(Settings(torch_threads=5)) == 5
