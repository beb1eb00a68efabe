"""The job service: create, cancel and delete jobs, with their validation, idempotency and queueing.

Adapters (the API routes) parse requests and shape answers; the rules live here. Jobs reach the workers
through a `JobQueue` the adapter passes in (`argd.worker.dispatch.CeleryQueue`), so this module needs no
broker. The order that keeps workers from ever seeing a half-made job: commit the row, then enqueue, and
withdraw the job when the queue refuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from argd.core.params import CleanseParams
from argd.core.spec import ModelSpec
from argd.jobs import quotas
from argd.jobs.errors import (
    InvalidIdempotencyKey,
    InvalidJobRequest,
    JobConflict,
    NotFound,
    QueueUnavailable,
)
from argd.jobs.schemas import JobCreate
from argd.jobs.status import JobStatus
from argd.jobs.webhooks import WebhookUrlError, validate_webhook_url
from argd.persistence import jobs as job_state
from argd.persistence.artifacts import ArtifactStore
from argd.persistence.db import RowT, get_owned
from argd.persistence.models import Dataset, Job, Model
from argd.persistence.settings import Settings

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX = 255


class JobQueue(Protocol):
    """Where committed jobs and finished jobs' webhooks go (the Celery broker in the service)."""

    def enqueue(self, job_id: str) -> None: ...

    def notify_finished(self, job_id: str) -> None: ...


@dataclass(frozen=True)
class Submission:
    """A created job, or the earlier one an idempotent replay returns (`replayed`)."""

    job: Job
    replayed: bool


# --- creation -------------------------------------------------------------------------------------------


def effective_params(body: JobCreate) -> CleanseParams:
    """The job's hyperparameters with `method` settled: the top-level field and `params.method` must agree."""
    params = body.params or CleanseParams()
    method_given = "method" in body.model_fields_set
    params_method_given = body.params is not None and "method" in body.params.model_fields_set
    if method_given and params_method_given and params.method != body.method:
        raise InvalidJobRequest(
            "validation_error",
            f"method is '{body.method}' but params.method is '{params.method}'; give one or make them agree",
        )
    method = body.method if method_given or not params_method_given else params.method
    update: dict[str, object] = {"method": method}
    teacher_given = body.params is not None and "teacher" in body.params.model_fields_set
    if body.teacher_model_id is not None and not teacher_given:
        update["teacher"] = "uploaded"  # an uploaded teacher is what the request asks for
    params = params.model_copy(update=update)
    problem = params.teacher_problem(uploaded=body.teacher_model_id is not None)
    if problem is not None:
        raise InvalidJobRequest("validation_error", problem)
    return CleanseParams.model_validate(params.model_dump())


def request_fingerprint(body: JobCreate, params: CleanseParams) -> str:
    """SHA-256 of the request's meaning (defaults filled), compared when an Idempotency-Key is replayed."""
    canonical = body.model_dump(mode="json", exclude={"params", "method"})
    canonical["params"] = params.model_dump(mode="json")
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isascii() or not key.isprintable():
        raise InvalidIdempotencyKey(
            "invalid_idempotency_key",
            f"The Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters",
        )
    return key


def check_fits_model(spec: ModelSpec, dataset: Dataset, field: str) -> None:
    """Refuse a dataset whose images and labels do not fit the model's input and classes."""
    channels, height, width = (int(v) for v in dataset.shape)
    if channels != spec.in_channels:
        raise InvalidJobRequest(
            "dataset_mismatch",
            f"{field}: the dataset has {channels}-channel images but the model takes "
            f"{spec.in_channels} channel(s)",
            details={"field": field, "found": channels, "expected": spec.in_channels},
        )
    if (height, width) != (spec.image_size, spec.image_size):
        raise InvalidJobRequest(
            "dataset_mismatch",
            f"{field}: the dataset's images are {height}x{width} but the model takes "
            f"{spec.image_size}x{spec.image_size}",
            details={
                "field": field,
                "found": [height, width],
                "expected": [spec.image_size, spec.image_size],
            },
        )
    labels = [int(label) for label in dataset.classes]
    bad = [label for label in labels if label < 0 or label >= spec.num_classes]
    if bad:
        raise InvalidJobRequest(
            "dataset_mismatch",
            f"{field}: the dataset has labels {bad[:10]} outside the model's classes [0, {spec.num_classes})",
            details={"field": field, "labels": bad[:100], "num_classes": spec.num_classes},
        )


def _referenced(
    session: Session, entity: type[RowT], row_id: str | None, tenant_id: str, field: str
) -> RowT | None:
    """The input a job names, share-locked until the job row is committed; NotFound naming the field."""
    if row_id is None:
        return None
    row = get_owned(session, entity, row_id, tenant_id, lock="share")
    if row is None:
        what = "model" if entity is Model else "dataset"
        raise NotFound("not_found", f"{field}: no {what} with id '{row_id}'", details={"field": field})
    return row


def validate_inputs(session: Session, body: JobCreate, tenant_id: str, settings: Settings) -> None:
    """Every input exists for the tenant and fits the model; the teacher fits too; the webhook URL is
    allowed; an MLflow export is only asked of a deployment that has a tracking server."""
    if body.mlflow is not None and not settings.mlflow_tracking_uri:
        raise InvalidJobRequest(
            "mlflow_not_configured",
            "mlflow: this deployment has no MLflow tracking server (the operator sets "
            "ARGD_MLFLOW_TRACKING_URI); leave out the mlflow block",
            details={"field": "mlflow"},
        )
    model = _referenced(session, Model, body.model_id, tenant_id, "model_id")
    assert model is not None  # model_id is required
    spec = ModelSpec.model_validate(model.spec)
    for field in ("clean_dataset_id", "test_dataset_id", "poisoned_dataset_id"):
        dataset = _referenced(session, Dataset, getattr(body, field), tenant_id, field)
        if dataset is not None:
            check_fits_model(spec, dataset, field)
    if body.target_label is not None and body.target_label >= spec.num_classes:
        raise InvalidJobRequest(
            "validation_error",
            f"target_label {body.target_label} is not a class of the model (num_classes={spec.num_classes})",
        )
    teacher = _referenced(session, Model, body.teacher_model_id, tenant_id, "teacher_model_id")
    if teacher is not None:
        teacher_spec = ModelSpec.model_validate(teacher.spec)
        for attr in ("num_classes", "in_channels", "image_size"):
            if getattr(teacher_spec, attr) != getattr(spec, attr):
                raise InvalidJobRequest(
                    "teacher_mismatch",
                    f"teacher_model_id: the teacher's {attr} is {getattr(teacher_spec, attr)} but the "
                    f"model's is {getattr(spec, attr)}",
                )
    if body.webhook_url is not None:
        try:
            validate_webhook_url(body.webhook_url, settings)
        except WebhookUrlError as exc:
            raise InvalidJobRequest("invalid_webhook_url", f"webhook_url: {exc}") from exc


def _key_reused(exc: job_state.IdempotencyConflict) -> InvalidJobRequest:
    return InvalidJobRequest("idempotency_key_reused", str(exc), details={"job_id": exc.job.id})


def _replay(session: Session, tenant_id: str, key: str, fingerprint: str) -> Job | None:
    try:
        return job_state.find_replay(session, tenant_id, key, fingerprint)
    except job_state.IdempotencyConflict as exc:
        raise _key_reused(exc) from exc


def create(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    queue: JobQueue,
    *,
    tenant_id: str,
    body: JobCreate,
    idempotency_key: str | None = None,
) -> Submission:
    """Validate, create and queue a job; a replayed Idempotency-Key returns the earlier job instead.

    The job row is committed before it is sent to the queue, so a worker always finds it; when the queue
    refuses it the job is withdrawn (QueueUnavailable: nothing was created).
    """
    key = check_idempotency_key(idempotency_key)
    params = effective_params(body)
    fingerprint = request_fingerprint(body, params)
    if key is not None:
        existing = _replay(session, tenant_id, key, fingerprint)
        if existing is not None:  # replayed before validation: its inputs may be gone by now
            return Submission(existing, replayed=True)
    validate_inputs(session, body, tenant_id, settings)
    teacher_epochs = params.teacher_epochs if params.needs_teacher and body.teacher_model_id is None else 0
    quotas.check_job(session, tenant_id, epochs=params.epochs + teacher_epochs)
    try:
        job, created = job_state.create_job(
            session,
            tenant_id=tenant_id,
            model_id=body.model_id,
            clean_dataset_id=body.clean_dataset_id,
            params=params.model_dump(mode="json"),
            test_dataset_id=body.test_dataset_id,
            poisoned_dataset_id=body.poisoned_dataset_id,
            target_label=body.target_label,
            teacher_model_id=body.teacher_model_id,
            webhook_url=body.webhook_url,
            idempotency_key=key,
            request_hash=fingerprint,
        )
    except job_state.IdempotencyConflict as exc:  # a concurrent request with another body won the race
        raise _key_reused(exc) from exc
    if not created:  # a concurrent request with the same key and body won the race
        return Submission(job, replayed=True)
    if body.mlflow is not None:
        job.mlflow = body.mlflow.model_dump(mode="json")
    session.commit()
    try:
        queue.enqueue(job.id)
    except Exception as exc:
        log.error("could not enqueue job %s; withdrawing it", job.id, exc_info=exc)
        job_state.request_cancel(session, job.id)
        job_state.delete_job(session, store, job.id)
        session.commit()
        raise QueueUnavailable(
            "queue_unavailable", "The job queue is unreachable; nothing was created, try again later"
        ) from exc
    return Submission(job, replayed=False)


# --- the rest of a job's life ---------------------------------------------------------------------------


def owned_job(session: Session, tenant_id: str, job_id: str, *, lock: bool = False) -> Job:
    """The tenant's job; NotFound for an unknown id and for another tenant's."""
    job = get_owned(session, Job, job_id, tenant_id, lock="update" if lock else None)
    if job is None:
        raise NotFound("not_found", f"No job with id '{job_id}'")
    return job


def cancel(session: Session, queue: JobQueue, *, tenant_id: str, job_id: str) -> Job:
    """Cancel a job: a queued one ends at once (and its webhook is queued), a running one is asked to stop
    and stays running until its worker honours the request. A finished job is a JobConflict."""
    job = owned_job(session, tenant_id, job_id)
    try:
        job = job_state.request_cancel(session, job.id)
    except job_state.IllegalTransition as exc:
        raise JobConflict("job_finished", f"The job is already {exc.current}; nothing to cancel") from exc
    session.commit()
    if job.status == JobStatus.CANCELED:
        announce_end(queue, job)
    return job


def delete(session: Session, store: ArtifactStore, *, tenant_id: str, job_id: str) -> None:
    """Delete a finished job with its history and its result files (unless shared); a JobConflict while it
    is queued or running."""
    job = owned_job(session, tenant_id, job_id, lock=True)
    try:
        job_state.delete_job(session, store, job.id)
    except job_state.IllegalTransition as exc:
        raise JobConflict(
            "job_active", f"The job is {exc.current}; cancel it and wait for it to stop before deleting"
        ) from exc
    session.commit()


def announce_end(queue: JobQueue, job: Job) -> None:
    """Queue the webhook of a job that has just ended (a no-op without a webhook URL).

    A failure only delays the call: the workers' recovery pass sends webhooks that stay pending.
    """
    if not job.webhook_url:
        return
    try:
        queue.notify_finished(job.id)
    except Exception as exc:
        log.warning("could not queue the webhook of job %s", job.id, exc_info=exc)
