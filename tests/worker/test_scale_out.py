"""Scale-out: two worker processes that share only Postgres, Redis and the S3 store (moto's server).

Each worker has its own data directory (its work folders and its input cache), as on two GPU hosts; nothing
on disk is shared. They drain 20 queued jobs: every job succeeds in one attempt, run by exactly one worker,
with each epoch once in its history, and both workers take part. Then a longer job's worker is SIGKILLed
after a checkpoint reached the store: the other worker's recovery pass requeues it, and it resumes from the
S3 checkpoint (the epochs of the first attempt stay in the history as the first attempt's; the rest are the
second's).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from argd.persistence import jobs
from argd.persistence.db import session_scope
from argd.persistence.settings import Settings
from argd.persistence.stores import get_store
from argd.persistence.throwaway import throwaway_database
from argd.worker.dispatch import enqueue_job
from tests.fixtures.database import admin_url
from tests.fixtures.s3 import S3Server, s3_configured
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import finished, submit, upload_inputs, wait_for

pytestmark = pytest.mark.service

JOBS = 20
SHORT = {"epochs": 1, "teacher_epochs": 0, "seed": 3}  # the uploaded model is the teacher
LONG_EPOCHS = 12  # long enough that the kill lands mid-job on a fast, idle machine too
LONG = {"epochs": LONG_EPOCHS, "teacher_epochs": 1, "seed": 5}


def _events(settings: Settings, job_id: str) -> list[tuple[str, int, int]]:
    with session_scope(settings) as session:
        return [(e.phase, e.epoch, e.attempt) for e in jobs.job_events(session, job_id)]


def _pool_of(job_worker: str | None) -> int:
    assert job_worker
    return int(job_worker.rsplit(":", 1)[1])


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of this test's own: the session's worker (local store) recovers lost jobs of the session
    database, so it must not see these jobs, or it would take the killed worker's job for its own."""
    with throwaway_database(admin_url(), "argd_scale") as url:
        yield url


def test_two_workers_share_only_the_services_and_take_over_a_killed_job(
    service_settings: Settings, s3_server: S3Server, own_database: str, tmp_path: Path
) -> None:
    prefix = f"scale-{uuid.uuid4().hex[:8]}"
    # Own database and queue: the session's worker (local store) must not take these jobs.
    base = s3_configured(
        service_settings.model_copy(update={"database_url": own_database}),
        s3_server,
        prefix,
        queue=f"scale-out-{uuid.uuid4().hex[:8]}",
    )
    submitter = base.model_copy(update={"data_dir": tmp_path / "api-host"})
    hosts = [base.model_copy(update={"data_dir": tmp_path / f"gpu-host-{n}"}) for n in (1, 2)]
    workers = [WorkerProcess(h.to_env(), (tmp_path / f"logs-{n}")) for n, h in enumerate(hosts, 1)]
    for worker in workers:
        worker.log_dir.mkdir()

    inputs = upload_inputs(submitter, tmp_path, images=64)
    job_ids = [submit(submitter, inputs, SHORT) for _ in range(JOBS)]
    for job_id in job_ids:
        enqueue_job(job_id, submitter)
    try:
        starters = [threading.Thread(target=w.start) for w in workers]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join()
        assert all(w.is_running() for w in workers), [w.log_tail() for w in workers]

        ran_by: dict[int, list[str]] = {0: [], 1: []}
        for job_id in job_ids:
            job = wait_for(submitter, job_id, finished, 180, f"job {job_id} of the drain")
            assert job.status == "succeeded", (job.error_code, job.error_message)
            assert job.attempts == 1, f"job {job_id} ran {job.attempts} times"
            assert _events(submitter, job_id) == [("distill", 1, 1)]
            pool = _pool_of(job.worker)
            owner = [n for n, w in enumerate(workers) if pool in w.pool_pids()]
            assert len(owner) == 1, f"job {job_id} ran in {job.worker}, a pool of neither worker"
            ran_by[owner[0]].append(job_id)
        logs = "\n".join(w.log_text() for w in workers)
        for job_id in job_ids:
            assert len(re.findall(rf"job {job_id} attempt \d+ started", logs)) == 1, f"{job_id} started twice"
        assert ran_by[0] and ran_by[1], f"one worker ran every job: {[len(v) for v in ran_by.values()]}"

        # Nothing shared on disk: the hosts' artifact folders hold no artifact (only the staging folder),
        # and each worker's cache holds the inputs it fetched from S3.
        for host in hosts:
            assert not list(host.artifacts_dir.glob("sha256/**/*")), host.artifacts_dir
            assert (host.input_cache_dir / inputs_sha(submitter, inputs.model_id)).is_file()

        # Failover: kill the worker running the long job once a checkpoint is in the store.
        long_id = submit(submitter, upload_inputs(submitter, tmp_path, images=1024), LONG)
        enqueue_job(long_id, submitter)
        job = wait_for(
            submitter,
            long_id,
            lambda j: finished(j) or (j.phase == "distill" and j.epoch >= 2 and j.checkpoint_sha256),
            120,
            "the long job's first distillation checkpoint",
        )
        # The worker replaces the checkpoint after every epoch and deletes the old object just after the
        # commit, so a pointer read just before an epoch ends can name an object already gone: read again.
        store = get_store(submitter)
        for _ in range(20):
            checkpoint = job.checkpoint_sha256
            if job.status != "running" or (checkpoint and store.exists(checkpoint)):
                break
            time.sleep(0.1)
            job = wait_for(submitter, long_id, lambda j: True, 5, "the long job")
        assert job.status == "running", "the long job ended before it could be interrupted"
        assert checkpoint and store.exists(checkpoint), "the checkpoint is not in S3"
        victim = next(n for n, w in enumerate(workers) if _pool_of(job.worker) in w.pool_pids())
        survivor = workers[1 - victim]
        workers[victim].kill()
        done = wait_for(submitter, long_id, finished, 180, "the long job after its worker was killed")
        assert done.status == "succeeded", (done.error_code, done.error_message, survivor.log_tail())
        assert done.attempts == 2 and _pool_of(done.worker) in survivor.pool_pids()
        assert f"job {long_id} attempt 2 resumes from checkpoint" in survivor.log_text()
        history = _events(submitter, long_id)
        assert [(p, e) for p, e, _ in history] == [("teacher", 1)] + [
            ("distill", e) for e in range(1, LONG_EPOCHS + 1)
        ]
        first = [(p, e) for p, e, a in history if a == 1]
        assert ("teacher", 1) in first and len(first) >= 2, f"nothing of attempt 1 was kept: {history}"
        resumed_at = min(e for p, e, a in history if a == 2 and p == "distill")
        assert resumed_at > 1, f"attempt 2 started distillation over: {history}"
        assert not get_store(submitter).exists(checkpoint), "the finished job's checkpoint was not deleted"
    finally:
        for worker in workers:
            worker.stop()


def inputs_sha(settings: Settings, model_id: str) -> str:
    from argd.persistence.models import Model

    with session_scope(settings) as session:
        model = session.get(Model, model_id)
        assert model is not None
        return model.sha256
