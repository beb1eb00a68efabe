"""Job state: creation, the state machine, progress, events, results and recovery of lost attempts.

The database row is the source of truth for a job; the broker only carries its id. Every transition is one
conditional UPDATE (`WHERE status IN (...)`, and for a worker's writes `AND attempts = <its attempt>`), so two
processes racing on a job cannot both win, and a worker that lost its job (cancelled, timed out, taken over
after its heartbeat went stale) cannot overwrite what happened since.

    queued  -> running      claim_job (a worker takes it; attempts += 1)
    queued  -> canceled     request_cancel (immediately)
    running -> succeeded    mark_succeeded
    running -> failed       mark_failed (also when the attempts are used up or the time limit passed)
    running -> canceled     mark_canceled (the worker honoured cancel_requested)
    running -> queued       requeue_stale_jobs (its worker was lost; it resumes from its checkpoint)
    running -> running      claim_job of a job whose heartbeat is stale (same as requeue + claim)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from argd.jobs.status import ACTIVE_STATUSES, TERMINAL_STATUSES, JobStatus
from argd.persistence.artifacts import ArtifactStore, Blob, register_artifact, release_artifacts
from argd.persistence.db import affected_rows
from argd.persistence.models import Job, JobEvent, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    # running -> succeeded / failed / canceled; -> queued (worker lost); -> running (taken over when stale)
    JobStatus.RUNNING: frozenset(JobStatus),
    **{status: frozenset() for status in TERMINAL_STATUSES},
}

# Error codes a failed job can carry; messages are for humans and never hold stack traces.
ERROR_CODES = (
    "invalid_input",
    "out_of_memory",
    "storage_full",
    "storage_unavailable",
    "timed_out",
    "worker_lost",
    "internal",
)
INTERNAL_ERROR_MESSAGE = (
    "The job failed because of an internal error; the operators have the details in the logs."
)


def worker_lost_message(attempts: int) -> str:
    return f"The job's worker stopped before finishing, {attempts} times; giving up."


def timed_out_message(limit_s: float) -> str:
    return f"The job ran past the time limit of {int(limit_s)} s and was stopped."


class JobError(Exception):
    """Base class of this module's refusals."""


class JobNotFound(JobError):
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class IllegalTransition(JobError):
    """The job is not in a state from which this change is allowed (or the caller no longer owns it)."""

    def __init__(self, job_id: str, current: str, target: str, reason: str = ""):
        detail = f": {reason}" if reason else ""
        super().__init__(f"job {job_id} is {current}; it cannot become {target}{detail}")
        self.job_id = job_id
        self.current = current
        self.target = target


class IdempotencyConflict(JobError):
    """The idempotency key was used before with a different request."""

    def __init__(self, job: Job):
        super().__init__(
            f"The Idempotency-Key was already used for job {job.id} with a different request body"
        )
        self.job = job


def _load(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(job_id)
    return job


def _transition(
    session: Session,
    job_id: str,
    target: str,
    *,
    sources: Iterable[str],
    attempt: int | None = None,
    values: dict[str, Any],
    extra: Any = None,
) -> Job:
    """Apply `values` if the job is in one of `sources` (and at `attempt`); else IllegalTransition."""
    sources = tuple(sources)
    for source in sources:
        assert target in ALLOWED_TRANSITIONS[source], (source, target)
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(sources))
    if attempt is not None:
        stmt = stmt.where(Job.attempts == attempt)
    if extra is not None:
        stmt = stmt.where(extra)
    result = session.execute(
        stmt.values(status=target, **values), execution_options={"synchronize_session": False}
    )
    job = _load(session, job_id)
    if affected_rows(result) != 1:
        reason = ""
        if attempt is not None and job.attempts != attempt and job.status in sources:
            reason = f"attempt {attempt} was superseded by attempt {job.attempts}"
        raise IllegalTransition(job_id, job.status, target, reason)
    return job


# --- creation and queries -------------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    tenant_id: str,
    model_id: str,
    clean_dataset_id: str,
    params: dict[str, Any],
    test_dataset_id: str | None = None,
    poisoned_dataset_id: str | None = None,
    target_label: int | None = None,
    teacher_model_id: str | None = None,
    webhook_url: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[Job, bool]:
    """A queued job (flushed, not committed), or the existing one for a repeated idempotency key.

    Returns `(job, created)`. A key reused with a different `request_hash` raises IdempotencyConflict.
    Enqueue the job only after the caller has committed (`argd.worker.dispatch.enqueue_job`).
    """
    if idempotency_key is not None:
        existing = find_replay(session, tenant_id, idempotency_key, request_hash)
        if existing is not None:
            return existing, False
    job = Job(
        tenant_id=tenant_id,
        model_id=model_id,
        clean_dataset_id=clean_dataset_id,
        test_dataset_id=test_dataset_id,
        poisoned_dataset_id=poisoned_dataset_id,
        target_label=target_label,
        teacher_model_id=teacher_model_id,
        method=str(params.get("method", "argd")),
        params=params,
        status="queued",
        epochs=int(params.get("epochs", 0)),
        webhook_url=webhook_url,
        webhook_status="pending" if webhook_url else None,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = find_replay(session, tenant_id, idempotency_key, request_hash)
        if existing is None:
            raise
        return existing, False
    # webhook_status "pending" means: send when the job ends.
    return job, True


def find_replay(session: Session, tenant_id: str, key: str, request_hash: str | None) -> Job | None:
    """The tenant's job created with this idempotency key, or None; IdempotencyConflict when that job was
    created by a different request (the one check of a replay, for every caller)."""
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and job.request_hash != request_hash:
        raise IdempotencyConflict(job)
    return job


def job_events(session: Session, job_id: str) -> list[JobEvent]:
    """The job's per-epoch history in the order it happened (teacher epochs, then distillation epochs)."""
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def history_marker(session: Session, job_id: str) -> tuple[int, int]:
    """(count, newest id) of the job's events: one index-only look-up that changes whenever the history
    does (events are only added, or replaced with a new id), so a status poll can tell "unchanged" without
    reading every event row."""
    count, newest = session.execute(
        select(func.count(JobEvent.id), func.coalesce(func.max(JobEvent.id), 0)).where(
            JobEvent.job_id == job_id
        )
    ).one()
    return int(count), int(newest)


def webhook_deliveries(session: Session, job_id: str) -> list[WebhookDelivery]:
    return list(
        session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)
        )
    )


def jobs_using(session: Session, *, model_id: str | None = None, dataset_id: str | None = None) -> list[Job]:
    """Queued or running jobs that read this model or dataset (deleting it must wait for them)."""
    conditions = []
    if model_id is not None:
        conditions += [Job.model_id == model_id, Job.teacher_model_id == model_id]
    if dataset_id is not None:
        conditions += [
            Job.clean_dataset_id == dataset_id,
            Job.test_dataset_id == dataset_id,
            Job.poisoned_dataset_id == dataset_id,
        ]
    if not conditions:
        return []
    return list(session.scalars(select(Job).where(Job.status.in_(ACTIVE_STATUSES), or_(*conditions))))


# --- the worker's side ----------------------------------------------------------------------------------

ClaimOutcome = Literal["claimed", "missing", "finished", "busy", "canceled", "exhausted", "timed_out"]


@dataclass
class Claim:
    """What `claim_job` found: `claimed` means this caller now runs attempt `attempt` of `job`."""

    outcome: ClaimOutcome
    job: Job | None = None
    attempt: int = 0
    resumed: bool = False


def claim_job(
    session: Session,
    job_id: str,
    *,
    worker: str,
    stale_after_s: float,
    max_attempts: int,
    store: ArtifactStore | None = None,
    time_limit_s: float | None = None,
) -> Claim:
    """Take a queued job, or a running one whose worker is gone (stale heartbeat), for a new attempt.

    A job that is finished, or running with a live heartbeat, is refused (`finished` / `busy`): the message
    that asked for it was a duplicate. A lost job that asked to be cancelled becomes canceled, one whose
    attempt ran past `time_limit_s` (its process was killed by the hard limit) fails with `timed_out`, and
    one whose attempts are used up fails with `worker_lost`.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return Claim("missing")
    if job.status in TERMINAL_STATUSES:
        return Claim("finished", job)
    now = utcnow()
    cutoff = now - timedelta(seconds=stale_after_s)
    if job.status == "running" and job.heartbeat_at is not None and job.heartbeat_at >= cutoff:
        return Claim("busy", job)
    claimable = or_(Job.status == "queued", and_(Job.status == "running", Job.heartbeat_at < cutoff))
    try:
        # Only a running attempt can have run past the limit (a queued job's start time is an old attempt's).
        ending = _lost_attempt_ending(
            job, now, time_limit_s if job.status == "running" else None, max_attempts
        )
        if ending is not None:
            outcome, status, error = ending
            job = _end_attempt(
                session, store, job.id, job.attempts, status, sources=(job.status,), extra=claimable, **error
            )
            return Claim(outcome, job)
        resumed = job.attempts > 0
        job = _transition(
            session,
            job_id,
            "running",
            sources=("queued", "running"),
            attempt=job.attempts,
            extra=claimable,
            values={
                "attempts": job.attempts + 1,
                "worker": worker,
                "heartbeat_at": now,
                "attempt_started_at": now,
                "started_at": func.coalesce(Job.started_at, now),
                "eta_s": None,
            },
        )
    except IllegalTransition:
        # Another process changed the job between our read and our write; let it be.
        job = _load(session, job_id)
        return Claim("finished" if job.status in TERMINAL_STATUSES else "busy", job)
    return Claim("claimed", job, job.attempts, resumed)


def _lost_attempt_ending(
    job: Job, now: datetime, time_limit_s: float | None, max_attempts: int
) -> tuple[Literal["canceled", "timed_out", "exhausted"], JobStatus, dict[str, str]] | None:
    """How a job whose attempt was lost ends instead of running again, as (claim outcome, final status,
    error fields); None when it may run again.

    Cancelled on request; failed with `timed_out` when the attempt ran past `time_limit_s` (the hard limit
    killed its process); failed with `worker_lost` when its attempts are used up.
    """
    if job.cancel_requested:
        return "canceled", JobStatus.CANCELED, {}
    if (
        time_limit_s is not None
        and job.attempt_started_at is not None
        and now - job.attempt_started_at >= timedelta(seconds=time_limit_s)
    ):
        error = {"error_code": "timed_out", "error_message": timed_out_message(time_limit_s)}
        return "timed_out", JobStatus.FAILED, error
    if job.attempts >= max_attempts:
        error = {"error_code": "worker_lost", "error_message": worker_lost_message(job.attempts)}
        return "exhausted", JobStatus.FAILED, error
    return None


def heartbeat(session: Session, job_id: str, attempt: int) -> bool | None:
    """Mark attempt `attempt` alive; returns the job's cancel flag, or None if the attempt lost the job."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.attempts == attempt)
        .values(heartbeat_at=utcnow())
        .returning(Job.cancel_requested),
        execution_options={"synchronize_session": False},
    ).first()
    return None if row is None else bool(row[0])


def update_progress(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    phase: str,
    epoch: int,
    epochs: int,
    fraction: float,
    eta_s: float | None,
) -> bool:
    """Store the live progress of a running attempt; False if the attempt no longer owns the job.

    Callers throttle these writes (see `argd.worker.runner.ProgressReporter`).
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.attempts == attempt)
        .values(
            phase=phase,
            epoch=epoch,
            epochs=epochs,
            fraction=min(max(fraction, 0.0), 1.0),
            eta_s=eta_s,
            heartbeat_at=utcnow(),
        ),
        execution_options={"synchronize_session": False},
    )
    return affected_rows(result) == 1


def record_epoch(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    phase: str,
    epoch: int,
    losses: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> JobEvent:
    """Record one finished epoch. An epoch run again after a resume replaces its earlier record."""
    session.execute(
        delete(JobEvent).where(JobEvent.job_id == job_id, JobEvent.phase == phase, JobEvent.epoch == epoch),
        execution_options={"synchronize_session": False},
    )
    event = JobEvent(job_id=job_id, attempt=attempt, phase=phase, epoch=epoch, losses=losses, metrics=metrics)
    session.add(event)
    session.flush()
    return event


def set_checkpoint(session: Session, store: ArtifactStore, job_id: str, attempt: int, blob: Blob) -> None:
    """Point the running job at its newest checkpoint and let the previous one go."""
    register_artifact(session, blob, "checkpoint")
    job = _load(session, job_id)
    if job.status != "running" or job.attempts != attempt:
        raise IllegalTransition(job_id, job.status, "running", "checkpoint from an attempt that lost the job")
    previous = job.checkpoint_sha256
    job.checkpoint_sha256 = blob.sha256
    if previous and previous != blob.sha256:
        release_artifacts(session, store, [previous])
    else:
        session.flush()


def mark_succeeded(
    session: Session,
    store: ArtifactStore,
    job_id: str,
    attempt: int,
    *,
    metrics: dict[str, Any],
    model: Blob,
    report: Blob,
    epochs: int | None = None,
) -> Job:
    """Finish a running attempt with its results; the checkpoint is no longer needed and is released.

    `epochs`: the job's distillation epochs, shown as its final progress (epoch = epochs).
    """
    register_artifact(session, model, "result-model")
    register_artifact(session, report, "report")
    results: dict[str, Any] = {
        "metrics": metrics,
        "result_model_sha256": model.sha256,
        "report_sha256": report.sha256,
        "fraction": 1.0,
        "eta_s": 0.0,
        "error_code": None,
        "error_message": None,
    }
    if epochs is not None:
        results.update(epoch=epochs, epochs=epochs)
    return _end_attempt(session, store, job_id, attempt, JobStatus.SUCCEEDED, **results)


def mark_failed(
    session: Session,
    store: ArtifactStore | None,
    job_id: str,
    attempt: int,
    *,
    code: str,
    message: str,
) -> Job:
    """Finish a running attempt as failed with a stable code and a human message."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}; known: {', '.join(ERROR_CODES)}")
    return _end_attempt(
        session, store, job_id, attempt, JobStatus.FAILED, error_code=code, error_message=message[:2000]
    )


def requeue_attempt(session: Session, job_id: str, attempt: int) -> Job:
    """Put a running attempt's job back in the queue after a failure a later attempt may not meet (the
    artifact store was unreachable). It keeps its checkpoint, and its next claim counts another attempt, so
    `max_attempts` still caps the retries. IllegalTransition when the attempt no longer owns the job."""
    return _transition(
        session,
        job_id,
        "queued",
        sources=("running",),
        attempt=attempt,
        values={"worker": None, "eta_s": None},
    )


def mark_canceled(session: Session, store: ArtifactStore | None, job_id: str, attempt: int) -> Job:
    """Finish a running attempt that stopped because cancellation was requested."""
    return _end_attempt(session, store, job_id, attempt, JobStatus.CANCELED)


def _end_attempt(
    session: Session,
    store: ArtifactStore | None,
    job_id: str,
    attempt: int,
    status: JobStatus,
    *,
    sources: Iterable[str] = (JobStatus.RUNNING,),
    extra: Any = None,
    **values: Any,
) -> Job:
    """The one way an attempt ends: the final status with `values`, `finished_at` now, no ETA, and the
    checkpoint released (kept when `store` is None). IllegalTransition when the attempt no longer owns the
    job (or `extra` no longer holds)."""
    checkpoint = _load(session, job_id).checkpoint_sha256
    job = _transition(
        session,
        job_id,
        status,
        sources=sources,
        attempt=attempt,
        extra=extra,
        values={"finished_at": utcnow(), "eta_s": None, "checkpoint_sha256": None, **values},
    )
    if store is not None:
        release_artifacts(session, store, [checkpoint])
    return job


# --- the API's side -------------------------------------------------------------------------------------


def request_cancel(session: Session, job_id: str) -> Job:
    """Cancel a job: a queued one becomes canceled now, a running one is flagged for its worker.

    The worker reads the flag with its heartbeat and stops at the next batch. A finished job raises
    IllegalTransition. Returns the job as it is after the request.
    """
    job = _load(session, job_id)
    if job.status == "queued":
        try:
            return _transition(
                session,
                job_id,
                "canceled",
                sources=("queued",),
                values={"finished_at": utcnow(), "eta_s": None},
            )
        except IllegalTransition:
            job = _load(session, job_id)  # a worker took it meanwhile: flag it below
    if job.status == "running":
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True),
            execution_options={"synchronize_session": False},
        )
        return _load(session, job_id)
    raise IllegalTransition(job_id, job.status, "canceled", "the job has already finished")


def delete_job(session: Session, store: ArtifactStore, job_id: str) -> None:
    """Delete a finished job with its events and deliveries; its result files go unless shared."""
    job = _load(session, job_id)
    if job.status not in TERMINAL_STATUSES:
        raise IllegalTransition(job_id, job.status, "deleted", "cancel it first")
    shas = [job.result_model_sha256, job.report_sha256, job.checkpoint_sha256]
    session.delete(job)
    session.flush()
    release_artifacts(session, store, shas)


# --- recovery -------------------------------------------------------------------------------------------


@dataclass
class Recovery:
    """What one recovery pass did: jobs put back in the queue, and jobs it ended."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)


def requeue_stale_jobs(
    session: Session,
    store: ArtifactStore | None,
    *,
    stale_after_s: float,
    max_attempts: int,
    time_limit_s: float,
) -> Recovery:
    """Deal with running jobs whose worker stopped beating: requeue them, or end them.

    A job past its attempt time limit (its worker was killed by the hard limit) fails with `timed_out`; one
    whose attempts are used up fails with `worker_lost`; one that asked to be cancelled becomes canceled;
    the others go back to `queued` and resume from their last checkpoint. Each change is conditional on
    the heartbeat still being stale, so concurrent passes (one per worker) do each job once.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=stale_after_s)
    stale = session.scalars(
        select(Job).where(Job.status == "running", or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None)))
    ).all()
    outcome = Recovery()
    still_stale = or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None))
    for job in stale:
        try:
            ending = _lost_attempt_ending(job, now, time_limit_s, max_attempts)
            if ending is not None:
                _, status, error = ending
                _end_attempt(session, store, job.id, job.attempts, status, extra=still_stale, **error)
                (outcome.canceled if status == "canceled" else outcome.failed).append(job.id)
            else:
                _transition(
                    session,
                    job.id,
                    "queued",
                    sources=("running",),
                    attempt=job.attempts,
                    extra=still_stale,
                    values={"worker": None, "eta_s": None},
                )
                outcome.requeued.append(job.id)
        except IllegalTransition:
            continue  # someone else dealt with it first
    return outcome


def jobs_with_pending_webhooks(session: Session, older_than_s: float) -> list[str]:
    """Finished jobs whose webhook was never picked up (e.g. the process that ended them died first)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return list(
        session.scalars(
            select(Job.id).where(
                Job.status.in_(TERMINAL_STATUSES), Job.webhook_status == "pending", Job.finished_at < cutoff
            )
        )
    )
