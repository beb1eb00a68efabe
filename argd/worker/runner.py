"""One attempt of a cleanse job: claim it, fetch its inputs, run the engine, store the results.

Celery only hands over the job id (`argd.worker.tasks`); everything else comes from the database and the
artifact store, and everything the attempt learns goes back there: progress (throttled), one event per epoch,
the checkpoint after every epoch, and at the end the metrics, the cleansed model and the report. A heartbeat
thread keeps the job's lease alive and reads its cancel flag, which the engine checks between batches.
Every failure ends the job with a code and a message meant for the user; tracebacks go to the log only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from celery.exceptions import SoftTimeLimitExceeded

from argd.jobs.service import announce_end
from argd.persistence import job_notes, jobs
from argd.persistence.artifacts import (
    STORAGE_FULL_MESSAGE,
    ArtifactStore,
    StoreUnavailable,
    is_storage_full,
)
from argd.persistence.db import RowT, session_scope
from argd.persistence.models import Dataset, Job, Model
from argd.persistence.settings import Settings, get_settings
from argd.persistence.stores import get_store
from argd.worker.cache import input_fetcher
from argd.worker.dispatch import CeleryQueue, enqueue_job
from argd.worker.mlflow_export import FinishedJob, export_job

if TYPE_CHECKING:  # the engine (torch) is loaded only when an attempt runs
    from argd.core.data import ImageData
    from argd.core.pipeline import CleanseResult, ProgressEvent

log = logging.getLogger(__name__)

STORAGE_UNAVAILABLE_MESSAGE = (
    "The artifact store could not be reached or refused the request, even after retries; the operators have "
    "the cause in the logs. Submit the job again once they have fixed it."
)

OOM_MESSAGE = (
    "The job ran out of memory on its device; lower batch_size or eval_batch_size, or use smaller datasets."
)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat(threading.Thread):
    """Beats for a running attempt and watches its cancel flag; `lost` when another attempt took over."""

    def __init__(self, job_id: str, attempt: int, settings: Settings):
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.attempt, self.settings = job_id, attempt, settings
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.heartbeat_interval_s):
            try:
                with session_scope(self.settings) as session:
                    flag = jobs.heartbeat(session, self.job_id, self.attempt)
            except Exception:  # a database hiccup; the next beat tries again
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
                continue
            if flag is None:
                self.lost.set()
                return
            if flag:
                self.cancel.set()

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


@dataclass
class _Plan:
    """How the phases weigh in the job's overall fraction."""

    teacher_epochs: int
    epochs: int

    def fraction(self, phase: str, epoch: int, batch: int, batches: int) -> float:
        total = self.teacher_epochs + self.epochs
        if total <= 0:
            return 0.0
        done_in_phase = max(epoch - 1, 0) + (batch / batches if batches else 0.0)
        before = self.teacher_epochs if phase == "distill" else 0
        return min((before + done_in_phase) / total, 1.0)


class ProgressReporter:
    """The engine's progress callback: throttled progress writes, epoch events, checkpoint uploads."""

    def __init__(
        self,
        job_id: str,
        attempt: int,
        settings: Settings,
        store: ArtifactStore,
        checkpoint_path: Path,
        plan: _Plan,
    ):
        self.job_id, self.attempt, self.settings, self.store = job_id, attempt, settings, store
        self.checkpoint_path = checkpoint_path
        self.plan = plan
        self._last_write = 0.0
        self._last_phase: str | None = None
        self._checkpoint_seen: tuple[int, int] | None = self._stat()
        self._started = time.monotonic()
        self._start_fraction: float | None = None
        self._epoch, self._epochs = 0, 0

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.checkpoint_path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def sync_checkpoint(self) -> None:
        """Upload the checkpoint file if the engine rewrote it since the last look (it does after epochs)."""
        seen = self._stat()
        if seen is None or seen == self._checkpoint_seen:
            return
        blob = self.store.put_file(self.checkpoint_path)
        with session_scope(self.settings) as session:
            jobs.set_checkpoint(session, self.store, self.job_id, self.attempt, blob)
        self._checkpoint_seen = seen

    def __call__(self, event: ProgressEvent) -> None:
        self.sync_checkpoint()
        now = time.monotonic()
        phase = event.phase
        if phase != "evaluate":
            self._epoch, self._epochs = event.epoch, event.epochs
            fraction = self.plan.fraction(phase, event.epoch, event.batch, event.batches)
        else:
            fraction = self._fraction_so_far()
        if event.end_of_epoch and phase != "evaluate":
            with session_scope(self.settings) as session:
                jobs.record_epoch(
                    session,
                    self.job_id,
                    self.attempt,
                    phase=phase,
                    epoch=event.epoch,
                    losses=dict(event.losses),
                    metrics=dict(event.metrics) if event.metrics else None,
                )
        due = now - self._last_write >= self.settings.progress_interval_s
        if due or event.end_of_epoch or phase != self._last_phase:
            self._write(phase, fraction, now)

    def _fraction_so_far(self) -> float:
        return self.plan.fraction("distill", self._epoch, 0, 0) if self._epochs else 0.0

    def _write(self, phase: str, fraction: float, now: float) -> None:
        if self._start_fraction is None:
            self._start_fraction, self._started = fraction, now
        eta = None
        progressed = fraction - self._start_fraction
        if progressed > 0.01 and now > self._started:
            eta = (now - self._started) / progressed * (1.0 - fraction)
        with session_scope(self.settings) as session:
            jobs.update_progress(
                session,
                self.job_id,
                self.attempt,
                phase=phase,
                epoch=self._epoch,
                epochs=self._epochs,
                fraction=fraction,
                eta_s=eta,
            )
        self._last_write, self._last_phase = now, phase


@dataclass
class _Inputs:
    model: Model
    teacher: Model | None
    clean: Dataset
    test: Dataset | None
    poisoned: Dataset | None


def _load_inputs(settings: Settings, job: Job) -> _Inputs:
    from argd.core.errors import InvalidInput

    with session_scope(settings) as session:
        model = session.get(Model, job.model_id) if job.model_id else None
        clean = session.get(Dataset, job.clean_dataset_id) if job.clean_dataset_id else None
        if model is None or clean is None:
            raise InvalidInput("the job's model or clean dataset was deleted before the job ran")

        def optional(kind: type[RowT], key: str | None, label: str) -> RowT | None:
            if key is None:
                return None
            row = session.get(kind, key)
            if row is None:
                raise InvalidInput(f"the job's {label} was deleted before the job ran")
            return row

        return _Inputs(
            model=model,
            teacher=optional(Model, job.teacher_model_id, "teacher model"),
            clean=clean,
            test=optional(Dataset, job.test_dataset_id, "test dataset"),
            poisoned=optional(Dataset, job.poisoned_dataset_id, "poisoned dataset"),
        )


def _execute(
    job: Job, attempt: int, settings: Settings, store: ArtifactStore, workdir: Path, beat: Heartbeat
) -> None:
    """Run the engine for a claimed attempt and record its success (failures propagate)."""
    from argd.core.checkpoint import CheckpointError
    from argd.core.data import load_dataset
    from argd.core.device import resolve_device
    from argd.core.params import CleanseParams
    from argd.core.pipeline import run_cleanse
    from argd.core.report import build_report
    from argd.core.spec import ModelSpec
    from argd.core.weights import load_model, save_weights

    inputs = _load_inputs(settings, job)
    params = CleanseParams.model_validate(job.params)
    spec = ModelSpec.model_validate(inputs.model.spec)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = (inputs.model, inputs.teacher, inputs.clean, inputs.test, inputs.poisoned)
    fetch = input_fetcher(settings, store, keep=[row.sha256 for row in rows if row is not None])
    model_path = fetch(inputs.model.sha256, workdir / "model.safetensors")
    teacher_path = fetch(inputs.teacher.sha256, workdir / "teacher.safetensors") if inputs.teacher else None
    paths: dict[str, Path | None] = {
        "model": model_path,
        "teacher": teacher_path,
        "clean": fetch(inputs.clean.sha256, workdir / f"clean.{inputs.clean.format}"),
        "test": fetch(inputs.test.sha256, workdir / f"test.{inputs.test.format}") if inputs.test else None,
        "poisoned": (
            fetch(inputs.poisoned.sha256, workdir / f"poisoned.{inputs.poisoned.format}")
            if inputs.poisoned
            else None
        ),
    }

    def dataset(name: str) -> ImageData | None:
        path = paths[name]
        if path is None:
            return None
        return load_dataset(
            path, in_channels=spec.in_channels, image_size=spec.image_size, num_classes=spec.num_classes
        )

    model = load_model(model_path, spec)
    teacher_spec = ModelSpec.model_validate(inputs.teacher.spec) if inputs.teacher else None
    teacher = load_model(teacher_path, teacher_spec) if teacher_path is not None and teacher_spec else None

    checkpoint = workdir / "checkpoint.pt"
    if job.checkpoint_sha256:
        store.fetch(job.checkpoint_sha256, checkpoint)
        log.info("job %s attempt %d resumes from checkpoint %s", job.id, attempt, job.checkpoint_sha256[:12])
    else:
        checkpoint.unlink(missing_ok=True)
    needs_teacher = params.needs_teacher and teacher is None
    plan = _Plan(params.teacher_epochs if needs_teacher else 0, params.epochs)
    reporter = ProgressReporter(job.id, attempt, settings, store, checkpoint, plan)

    clean, test, poisoned = (dataset(name) for name in ("clean", "test", "poisoned"))
    assert clean is not None  # every job has a clean subset (checked when it was created)
    with session_scope(settings) as session:  # the `device` label of the metrics
        job_notes.set_device(session, job.id, attempt, resolve_device(settings.device).type)

    def run() -> CleanseResult:
        return run_cleanse(
            model,
            spec,
            params,
            clean,
            test=test,
            poisoned=poisoned,
            target_label=job.target_label,
            teacher=teacher,
            device=settings.device,
            progress=reporter,
            should_cancel=beat.should_stop,
            checkpoint_path=checkpoint,
            teacher_spec=teacher_spec,
        )

    try:
        result = run()
    except CheckpointError as exc:
        # An unreadable checkpoint costs the epochs it held, not the job: start over without it.
        log.warning("job %s: checkpoint unusable (%s); starting from the beginning", job.id, exc)
        checkpoint.unlink(missing_ok=True)
        result = run()
    output = workdir / "cleansed.safetensors"
    save_weights(result.model, output, metadata={"argd_job": job.id, "method": params.method})
    model_blob = store.put_file(output)
    report = build_report(
        result,
        inputs=paths,
        outputs={"model": output},
        spec=spec,
        target_label=job.target_label,
        device=settings.device,
        extra={"job_id": job.id, "attempts": attempt, "torch_threads": torch_threads()},
    )
    report_bytes = json.dumps(report, indent=2, sort_keys=True).encode()
    report_blob = store.put_stream([report_bytes])
    if job.mlflow:
        finished = FinishedJob(
            job_id=job.id,
            tenant_id=job.tenant_id,
            options=job.mlflow,
            params=params.model_dump(mode="json"),
            target_label=job.target_label,
            inputs={role: row.sha256 if row else None for role, row in vars(inputs).items()},
            result_sha256=model_blob.sha256,
            report_sha256=report_blob.sha256,
            metrics=result.metrics,
            report=report_bytes,
            weights=output,
        )
        exported = export_job(settings, finished)
        with session_scope(settings) as session:
            job_notes.record_export(
                session, job.id, attempt, mlflow=exported.mlflow, warnings=exported.warnings
            )
    with session_scope(settings) as session:
        jobs.mark_succeeded(
            session,
            store,
            job.id,
            attempt,
            metrics=result.metrics,
            model=model_blob,
            report=report_blob,
            epochs=params.epochs,
        )


def store_retry_delay_s(attempt: int) -> float:
    """Wait before the attempt after an unreachable store: 5 s, doubling per attempt, at most a minute."""
    return float(min(60, 5 * 2 ** (attempt - 1)))


def torch_threads() -> int:
    """The intra-op threads torch used in this pool process (the report shows it: a job at one thread on
    a many-core worker is the first thing to rule out when a job is slower than `argd cleanse`)."""
    import torch

    return int(torch.get_num_threads())


def classify_failure(exc: BaseException, settings: Settings) -> tuple[str, str] | None:
    """(error code, user message) for a failed attempt; None when it was cancelled."""
    from argd.core.errors import ArgdError, Cancelled, InvalidInput

    if isinstance(exc, Cancelled):
        return None
    if isinstance(exc, SoftTimeLimitExceeded):
        return "timed_out", jobs.timed_out_message(settings.job_soft_time_limit_s)
    if isinstance(exc, InvalidInput):
        return "invalid_input", exc.message
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    ):
        return "out_of_memory", OOM_MESSAGE
    if is_storage_full(exc):
        return "storage_full", STORAGE_FULL_MESSAGE
    if isinstance(exc, StoreUnavailable):
        log.error("job failed: artifact store unavailable: %s", exc)
        return "storage_unavailable", STORAGE_UNAVAILABLE_MESSAGE
    if isinstance(exc, ArgdError) and exc.code == "diverged":
        return "invalid_input", exc.message  # the user's hyperparameters made training diverge
    return "internal", jobs.INTERNAL_ERROR_MESSAGE


def run_job_attempt(job_id: str, settings: Settings | None = None, store: ArtifactStore | None = None) -> str:
    """Claim and run one attempt of a job; returns what happened (for logs and tests).

    Outcomes: succeeded, failed, canceled, superseded (another attempt took the job over), retry (the
    artifact store was unreachable: the job is queued again, after a delay, to resume), or the claim's
    refusal (missing, finished, busy) or the end it gave a lost job (canceled, exhausted, timed_out).
    """
    settings = settings or get_settings()
    store = store or get_store(settings)
    with session_scope(settings) as session:
        claim = jobs.claim_job(
            session,
            job_id,
            worker=worker_name(),
            stale_after_s=settings.stale_after_s,
            max_attempts=settings.max_attempts,
            store=store,
            time_limit_s=settings.job_time_limit_s,
        )
    if claim.outcome != "claimed":
        log.info("job %s not run: %s", job_id, claim.outcome)
        if claim.outcome in ("canceled", "exhausted", "timed_out") and claim.job is not None:
            announce_end(CeleryQueue(settings), claim.job)
        return claim.outcome
    assert claim.job is not None
    attempt = claim.attempt
    log.info("job %s attempt %d started%s", job_id, attempt, " (resuming)" if claim.resumed else "")
    workdir = settings.work_dir / job_id / f"attempt-{attempt}"
    beat = Heartbeat(job_id, attempt, settings)
    beat.start()
    outcome = "succeeded"
    try:
        _execute(claim.job, attempt, settings, store, workdir, beat)
    except BaseException as exc:
        outcome = _record_failure(job_id, attempt, exc, settings, store, beat)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt, SystemExit: let the worker stop; recovery requeues the job
    finally:
        beat.stop()
        _release_device_memory()
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the job's folder, unless another attempt is using it
            workdir.parent.rmdir()
    if outcome == "retry":
        delay = store_retry_delay_s(attempt)
        log.warning(
            "job %s attempt %d: the artifact store is unavailable; retrying in %.0f s", job_id, attempt, delay
        )
        enqueue_job(job_id, settings, countdown=delay)
    elif outcome not in ("superseded", "interrupted"):
        announce_end(CeleryQueue(settings), claim.job)
    log.info("job %s attempt %d ended: %s", job_id, attempt, outcome)
    return outcome


def _record_failure(
    job_id: str, attempt: int, exc: BaseException, settings: Settings, store: ArtifactStore, beat: Heartbeat
) -> str:
    if beat.lost.is_set():
        log.warning("job %s attempt %d was superseded by another attempt; stopping", job_id, attempt)
        return "superseded"
    if not isinstance(exc, Exception):
        return "interrupted"
    if isinstance(exc, StoreUnavailable) and exc.transient and attempt < settings.max_attempts:
        log.warning("job %s attempt %d: %s", job_id, attempt, exc)
        try:
            with session_scope(settings) as session:
                jobs.requeue_attempt(session, job_id, attempt)
            return "retry"
        except jobs.IllegalTransition:
            return "superseded"
    classified = classify_failure(exc, settings)
    if classified is not None and classified[0] == "internal":
        log.exception("job %s attempt %d failed", job_id, attempt, exc_info=exc)
    else:
        log.info("job %s attempt %d stopped: %s", job_id, attempt, exc)
    try:
        with session_scope(settings) as session:
            if classified is None:
                jobs.mark_canceled(session, store, job_id, attempt)
                return "canceled"
            jobs.mark_failed(session, store, job_id, attempt, code=classified[0], message=classified[1])
            return "failed"
    except jobs.IllegalTransition as refusal:
        log.warning("job %s attempt %d could not record its end: %s", job_id, attempt, refusal)
        return "superseded"


def _release_device_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["Heartbeat", "ProgressReporter", "classify_failure", "run_job_attempt"]
