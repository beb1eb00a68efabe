"""A real worker runs jobs from the queue: results, failures, cancellation, and recovery after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from argd.persistence import jobs
from argd.persistence.db import session_scope
from argd.persistence.settings import Settings
from argd.persistence.stores import get_store
from argd.worker.dispatch import enqueue_job
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import finished, read_job, submit, upload_inputs, wait_for

pytestmark = pytest.mark.service


def test_job_succeeds_with_metrics_events_and_results(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    inputs = upload_inputs(service_settings, tmp_path)
    job_id = submit(service_settings, inputs, {"epochs": 2, "seed": 3})
    enqueue_job(job_id, service_settings)
    job = wait_for(service_settings, job_id, finished, 120, "the job to finish")
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert (job.attempts, job.epoch, job.epochs, job.fraction) == (1, 2, 2, 1.0)
    assert job.started_at is not None and job.finished_at is not None and job.checkpoint_sha256 is None
    assert job.metrics is not None
    for phase in ("before", "teacher", "after"):
        assert 0.0 <= job.metrics[phase]["acc"] <= 1.0

    with session_scope(service_settings) as session:
        events = [(e.phase, e.epoch, e.attempt) for e in jobs.job_events(session, job_id)]
        losses = jobs.job_events(session, job_id)[-1].losses
    assert events == [("teacher", 1, 1), ("distill", 1, 1), ("distill", 2, 1)]
    assert losses and all(isinstance(v, float) for v in losses.values())

    store = get_store(service_settings)
    assert job.result_model_sha256 and job.report_sha256
    weights = store.fetch(job.result_model_sha256, tmp_path / "out.safetensors")
    assert "fc.weight" in load_file(weights)
    report = json.loads(b"".join(store.iter_chunks(job.report_sha256)))
    assert report["job_id"] == job_id and report["seed"] == 3 and report["params"]["epochs"] == 2
    assert report["outputs"]["model"]["sha256"] == job.result_model_sha256
    assert report["metrics"]["after"] == job.metrics["after"]
    # The attempt's work folder goes once the attempt ends, which is just after the job is marked done.
    workdir = service_settings.work_dir / job_id / "attempt-1"
    deadline = time.monotonic() + 30
    while workdir.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workdir.exists()


def test_bad_input_fails_with_its_code_and_message(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    inputs = upload_inputs(service_settings, tmp_path, images=32)
    job_id = submit(service_settings, inputs, {"epochs": 1}, target_label=9)  # the model has 4 classes
    enqueue_job(job_id, service_settings)
    job = wait_for(service_settings, job_id, finished, 60, "the job to fail")
    assert (job.status, job.error_code) == ("failed", "invalid_input")
    assert job.error_message is not None and "target_label 9" in job.error_message
    assert "Traceback" not in job.error_message


def test_cancel_queued_is_immediate_and_the_worker_skips_it(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    inputs = upload_inputs(service_settings, tmp_path, images=32)
    job_id = submit(service_settings, inputs, {"epochs": 1})
    with session_scope(service_settings) as session:
        assert jobs.request_cancel(session, job_id).status == "canceled"
    enqueue_job(job_id, service_settings)  # a message that was already in the queue
    marker = submit(service_settings, inputs, {"epochs": 1})
    enqueue_job(marker, service_settings)
    wait_for(service_settings, marker, finished, 60, "the next job to finish")
    with session_scope(service_settings) as session:
        job = read_job(session, job_id)
        assert (job.status, job.attempts, job.started_at) == ("canceled", 0, None)


def test_cancel_running_stops_within_a_batch(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    inputs = upload_inputs(service_settings, tmp_path, images=1024)
    job_id = submit(service_settings, inputs, {"epochs": 30})
    enqueue_job(job_id, service_settings)
    wait_for(service_settings, job_id, lambda j: j.phase == "distill", 90, "distillation to start")
    with session_scope(service_settings) as session:
        assert jobs.request_cancel(session, job_id).cancel_requested
    asked = time.monotonic()
    job = wait_for(service_settings, job_id, finished, 30, "the job to stop")
    # The flag reaches the worker with its next heartbeat (0.25 s here); the engine stops at the next batch.
    assert job.status == "canceled" and time.monotonic() - asked < 5
    assert job.epoch < 30 and job.checkpoint_sha256 is None


def _kill_test(service_settings: Settings, worker: WorkerProcess, tmp_path: Path, whole_worker: bool) -> None:
    inputs = upload_inputs(service_settings, tmp_path, images=1536)
    epochs = 5
    job_id = submit(service_settings, inputs, {"epochs": epochs})
    enqueue_job(job_id, service_settings)
    job = wait_for(
        service_settings,
        job_id,
        lambda j: j.phase == "distill" and j.epoch >= 2 and j.checkpoint_sha256 is not None,
        120,
        "a distillation checkpoint",
    )
    assert job.status == "running" and job.worker is not None
    pid = int(job.worker.rsplit(":", 1)[1])
    assert pid in worker.pool_pids()
    if whole_worker:
        worker.kill()  # main process and pool at once: the broker keeps the message unacknowledged
        worker.start()
    else:
        os.kill(pid, signal.SIGKILL)  # the pool process only: Celery requeues, the pool forks a new one
    job = wait_for(service_settings, job_id, finished, 180, "the resumed job to finish")
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert (job.attempts, job.epoch, job.epochs) == (2, epochs, epochs)
    with session_scope(service_settings) as session:
        events = [(e.phase, e.epoch, e.attempt) for e in jobs.job_events(session, job_id)]
    distill = [(epoch, attempt) for phase, epoch, attempt in events if phase == "distill"]
    assert [epoch for epoch, _ in distill] == list(range(1, epochs + 1)), events  # each epoch exactly once
    # It resumed: epoch 1 (checkpointed before the kill) is still attempt 1's, the last is attempt 2's.
    assert distill[0][1] == 1 and distill[-1][1] == 2, events
    assert [e for e in events if e[0] == "teacher"] == [("teacher", 1, 1)]


def test_pool_process_killed_mid_epoch_resumes_from_checkpoint(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    _kill_test(service_settings, worker, tmp_path, whole_worker=False)


def test_whole_worker_killed_mid_epoch_resumes_from_checkpoint(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    _kill_test(service_settings, worker, tmp_path, whole_worker=True)
