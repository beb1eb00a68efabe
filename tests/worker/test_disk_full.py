"""The worker's disk full: its work folder (inputs fetched from the store, the live checkpoint) on a 1 MiB
tmpfs, mounted over the session worker's `work_dir` for the test (needs root; skipped otherwise).

Either the inputs do not fit, or the disk fills up while the job trains (the next checkpoint write fails,
which torch reports as a RuntimeError around the OSError). Both end the job `failed` with code
`storage_full` and its message, after one attempt; nothing half-written is left behind (the work folder is
removed, the stored checkpoint is intact); and the next job on the same worker and disk succeeds.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from argd.core.checkpoint import save_checkpoint
from argd.core.weights import save_weights
from argd.persistence.artifacts import STORAGE_FULL_MESSAGE, is_storage_full
from argd.persistence.settings import Settings
from argd.persistence.stores import get_store
from argd.worker.dispatch import enqueue_job
from argd.worker.runner import classify_failure
from tests.fixtures.disk import fill, small_tmpfs
from tests.fixtures.worker import WorkerProcess
from tests.worker.helpers import finished, submit, upload_inputs, wait_for

pytestmark = pytest.mark.service


@pytest.fixture
def small_work_dir(service_settings: Settings, worker: WorkerProcess) -> Iterator[Path]:
    with small_tmpfs(service_settings.work_dir, "1m") as mount:
        yield mount


def _intact(settings: Settings, sha256: str | None) -> bool:
    if sha256 is None:
        return True
    with get_store(settings).open(sha256) as handle:
        return hashlib.sha256(handle.read()).hexdigest() == sha256


@pytest.mark.parametrize("when", ["the inputs do not fit", "it fills up during training"])
def test_a_full_work_disk_fails_the_job_with_storage_full(
    service_settings: Settings, small_work_dir: Path, tmp_path: Path, when: str
) -> None:
    settings = service_settings
    filler = small_work_dir / "filler"
    if when == "the inputs do not fit":
        inputs = upload_inputs(settings, tmp_path, images=12_000)  # ~1.7 MB of images for 1 MiB
        job_id = submit(settings, inputs, {"epochs": 1})
        enqueue_job(job_id, settings)
    else:
        inputs = upload_inputs(settings, tmp_path, images=512)
        job_id = submit(settings, inputs, {"epochs": 60, "seed": 3})
        enqueue_job(job_id, settings)
        wait_for(settings, job_id, lambda j: j.phase == "distill" and j.epoch >= 1, 120, "training")
        fill(filler)  # the next checkpoint of the running job has no room
    job = wait_for(settings, job_id, finished, 120, "the job to fail")

    assert (job.status, job.error_code, job.error_message) == ("failed", "storage_full", STORAGE_FULL_MESSAGE)
    assert job.attempts == 1 and job.result_model_sha256 is None
    assert _intact(settings, job.checkpoint_sha256)  # what was stored before the disk filled is whole
    # The attempt's folder goes just after the job is marked failed: nothing of it stays on the disk.
    deadline = time.monotonic() + 30
    while (small_work_dir / job_id).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.name for p in small_work_dir.iterdir()] == (["filler"] if filler.exists() else [])

    filler.unlink(missing_ok=True)
    other = upload_inputs(settings, tmp_path, images=64)
    next_id = submit(settings, other, {"epochs": 1})
    enqueue_job(next_id, settings)
    after = wait_for(settings, next_id, finished, 120, "the next job")
    assert after.status == "succeeded", (after.error_code, after.error_message)
    assert _intact(settings, after.result_model_sha256)


def test_the_libraries_write_failures_on_a_full_disk_are_storage_full(
    tmp_path: Path, service_settings: Settings
) -> None:
    """Real writes to a full file system, as the job's code makes them: each one's error is recognised,
    though torch wraps the OSError in a RuntimeError and safetensors keeps only its message. (torch.save to
    a path loses the OS error altogether; argd saves checkpoints through a handle for that reason too.)"""
    big = {"w": torch.zeros(100_000)}  # 400 kB: past any write buffer
    writes = {
        "open().write": lambda path: path.write_bytes(bytes(400_000)),
        "save_checkpoint (torch.save to a handle)": lambda path: save_checkpoint(path, {"state": big}),
        "save_weights (safetensors)": lambda path: save_weights(big, path),
    }
    failures = {}
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        for name, write in writes.items():
            with pytest.raises(Exception) as caught:  # each library raises its own kind
                write(disk / "out")
            failures[name] = caught.value
    assert {name: is_storage_full(exc) for name, exc in failures.items()} == dict.fromkeys(writes, True)
    for exc in failures.values():
        assert classify_failure(exc, service_settings) == ("storage_full", STORAGE_FULL_MESSAGE)
    assert not is_storage_full(RuntimeError("unexpected pos 576 vs 534"))  # no disk error in it: not full
