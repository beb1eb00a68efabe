"""Chaos: SIGKILL the worker's pool process or the whole worker at random points over several jobs.

The schedule (which job, after how long, which process) comes from one seed, `ARGD_CHAOS_SEED` (printed on
failure), so a failing run can be replayed; when a kill lands is also a matter of timing, which the
assertions do not depend on. Every job must end `succeeded` with its full epoch count, each epoch once
in its history, and weights bit-identical (CPU) to the same job run without interruption.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from argd.persistence import jobs
from argd.persistence.db import session_scope
from argd.persistence.settings import Settings
from argd.persistence.stores import get_store
from argd.worker.dispatch import enqueue_job
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import finished, read_job, submit, upload_inputs, wait_for

pytestmark = pytest.mark.service

SEED = int(os.environ.get("ARGD_CHAOS_SEED", "20261201"))
JOBS = int(os.environ.get("ARGD_CHAOS_JOBS", "3"))
EPOCHS = 4
PARAMS = {"epochs": EPOCHS, "seed": 7}


def _weights(settings: Settings, sha: str, tmp: Path) -> dict[str, torch.Tensor]:
    return load_file(get_store(settings).fetch(sha, tmp / f"{sha}.safetensors"))


def _running(settings: Settings, job_id: str) -> int | None:
    """The pool pid running the job now, or None (queued, finished, between attempts)."""
    with session_scope(settings) as session:
        job = read_job(session, job_id)
        if job.status != "running" or not job.worker:
            return None
        return int(job.worker.rsplit(":", 1)[1])


def test_random_kills_lose_nothing_and_change_nothing(
    service_settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    inputs = upload_inputs(service_settings, tmp_path, images=768)
    reference_id = submit(service_settings, inputs, PARAMS)
    enqueue_job(reference_id, service_settings)
    reference = wait_for(service_settings, reference_id, finished, 180, "the uninterrupted job")
    assert reference.status == "succeeded" and reference.result_model_sha256
    expected = _weights(service_settings, reference.result_model_sha256, tmp_path)

    # The schedule: per job one or two kills (each costs an attempt; the cap is 3), of either kind, after
    # a random delay; both kinds appear in every schedule.
    schedule = [
        [(rng.choice(["pool", "worker"]), rng.uniform(0.2, 2.5)) for _ in range(rng.randint(1, 2))]
        for _ in range(JOBS)
    ]
    for kind in ("pool", "worker"):
        if all(k != kind for kills in schedule for k, _ in kills):
            schedule[0 if kind == "worker" else -1][0] = (kind, schedule[0][0][1])
    injected: list[tuple[str, str, float]] = []
    for index, kills in enumerate(schedule):
        job_id = submit(service_settings, inputs, PARAMS)
        enqueue_job(job_id, service_settings)
        for kind, delay in kills:
            deadline = time.monotonic() + 120
            pid = _running(service_settings, job_id)
            while pid is None and time.monotonic() < deadline:
                if read_status(service_settings, job_id) in ("succeeded", "failed", "canceled"):
                    break
                time.sleep(0.05)
                pid = _running(service_settings, job_id)
            if pid is None:
                break  # it finished before this kill: fewer faults, same checks
            time.sleep(delay)
            if kind == "worker":
                worker.kill()
                worker.start()
            elif pid in worker.pool_pids():
                os.kill(pid, signal.SIGKILL)
            injected.append((f"job {index}", kind, round(delay, 2)))
        job = wait_for(service_settings, job_id, finished, 240, f"job {index} after {injected}")
        context = f"seed {SEED}, faults {injected}"
        assert job.status == "succeeded", (context, job.error_code, job.error_message)
        assert (job.epoch, job.epochs) == (EPOCHS, EPOCHS), context
        with session_scope(service_settings) as session:
            events = [(e.phase, e.epoch) for e in jobs.job_events(session, job_id)]
        assert events == [("teacher", 1)] + [("distill", e) for e in range(1, EPOCHS + 1)], (context, events)
        got = _weights(service_settings, job.result_model_sha256 or "", tmp_path)
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(got[name], tensor), (context, name)
    assert injected, f"seed {SEED} injected no fault; pick another"
    print(f"chaos seed {SEED}: {len(injected)} kills over {JOBS} jobs: {injected}")


def read_status(settings: Settings, job_id: str) -> str:
    with session_scope(settings) as session:
        return read_job(session, job_id).status
