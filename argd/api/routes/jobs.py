"""`/v1/jobs`: create (idempotent), read with progress and history, list, cancel, delete, download, report."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

from argd.api.auth import Principal, current_principal
from argd.api.deps import app_settings, app_store, db_session
from argd.api.errors import Problem, problem_responses
from argd.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from argd.api.routes.common import owned, owned_page
from argd.api.schemas import (
    HistoryEntry,
    JobCreate,
    JobError,
    JobOut,
    JobPage,
    JobPhase,
    JobStatus,
    JobSummary,
    Metrics,
    Progress,
)
from argd.core.params import CleanseParams
from argd.core.spec import ModelSpec
from argd.persistence import jobs as job_state
from argd.persistence.models import Dataset, Job, JobEvent, Model
from argd.persistence.settings import Settings
from argd.worker.dispatch import enqueue_job, notify_finished
from argd.worker.webhooks import WebhookUrlError, validate_webhook_url

log = logging.getLogger("argd.api")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

IDEMPOTENCY_KEY_MAX = 255


def job_summary(job: Job) -> JobSummary:
    return JobSummary(**_summary_fields(job))


def job_out(job: Job, events: list[JobEvent]) -> JobOut:
    history = [
        HistoryEntry(
            phase=event.phase,
            epoch=event.epoch,
            losses=event.losses or {},
            metrics=event.metrics,
            recorded_at=event.created_at,
        )
        for event in events
    ]
    return JobOut(**_summary_fields(job), history=history)


def _summary_fields(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "phase": job.phase if job.phase in get_args(JobPhase) else None,
        "method": job.method,
        "model_id": job.model_id,
        "clean_dataset_id": job.clean_dataset_id,
        "test_dataset_id": job.test_dataset_id,
        "poisoned_dataset_id": job.poisoned_dataset_id,
        "target_label": job.target_label,
        "teacher_model_id": job.teacher_model_id,
        "params": job.params,
        "webhook_url": job.webhook_url,
        "progress": Progress(
            epoch=job.epoch if job.phase else None,
            epochs=job.epochs or None,
            fraction=job.fraction,
            eta_s=job.eta_s,
        ),
        "metrics": Metrics.model_validate(job.metrics or {}),
        "error": JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        "cancel_requested": job.cancel_requested,
        "attempts": job.attempts,
        "result_sha256": job.result_model_sha256,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


# --- creation -------------------------------------------------------------------------------------------


def effective_params(body: JobCreate) -> CleanseParams:
    """The job's hyperparameters with `method` settled: the top-level field and `params.method` must agree."""
    params = body.params or CleanseParams()
    method_given = "method" in body.model_fields_set
    params_method_given = body.params is not None and "method" in body.params.model_fields_set
    if method_given and params_method_given and params.method != body.method:
        raise Problem(
            422,
            "validation_error",
            f"method is '{body.method}' but params.method is '{params.method}'; give one or make them agree",
        )
    method = body.method if method_given or not params_method_given else params.method
    return params.model_copy(update={"method": method})


def request_fingerprint(body: JobCreate, params: CleanseParams) -> str:
    """SHA-256 of the request's meaning (defaults filled), compared when an Idempotency-Key is replayed."""
    canonical = body.model_dump(mode="json", exclude={"params", "method"})
    canonical["params"] = params.model_dump(mode="json")
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isascii() or not key.isprintable():
        raise Problem(
            400,
            "invalid_idempotency_key",
            f"The Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters",
        )
    return key


def check_fits_model(spec: ModelSpec, dataset: Dataset, field: str) -> None:
    """422 unless the dataset's images and labels fit the model's input and classes."""
    channels, height, width = (int(v) for v in dataset.shape)
    if channels != spec.in_channels:
        raise Problem(
            422,
            "dataset_mismatch",
            f"{field}: the dataset has {channels}-channel images but the model takes "
            f"{spec.in_channels} channel(s)",
            details={"field": field, "found": channels, "expected": spec.in_channels},
        )
    if (height, width) != (spec.image_size, spec.image_size):
        raise Problem(
            422,
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
        raise Problem(
            422,
            "dataset_mismatch",
            f"{field}: the dataset has labels {bad[:10]} outside the model's classes [0, {spec.num_classes})",
            details={"field": field, "labels": bad[:100], "num_classes": spec.num_classes},
        )


def _referenced(
    session: Session, entity: type[Any], row_id: str | None, principal: Principal, field: str
) -> Any:
    if row_id is None:
        return None
    what = "model" if entity is Model else "dataset"
    try:
        return owned(session, entity, row_id, principal, what, lock="share")
    except Problem as exc:
        raise Problem(
            404, "not_found", f"{field}: no {what} with id '{row_id}'", details={"field": field}
        ) from exc


def _validate_inputs(session: Session, body: JobCreate, principal: Principal, settings: Settings) -> None:
    model = _referenced(session, Model, body.model_id, principal, "model_id")
    spec = ModelSpec.model_validate(model.spec)
    for field in ("clean_dataset_id", "test_dataset_id", "poisoned_dataset_id"):
        dataset = _referenced(session, Dataset, getattr(body, field), principal, field)
        if dataset is not None:
            check_fits_model(spec, dataset, field)
    if body.target_label is not None and body.target_label >= spec.num_classes:
        raise Problem(
            422,
            "validation_error",
            f"target_label {body.target_label} is not a class of the model (num_classes={spec.num_classes})",
        )
    teacher = _referenced(session, Model, body.teacher_model_id, principal, "teacher_model_id")
    if teacher is not None:
        teacher_spec = ModelSpec.model_validate(teacher.spec)
        for attr in ("num_classes", "in_channels", "image_size"):
            if getattr(teacher_spec, attr) != getattr(spec, attr):
                raise Problem(
                    422,
                    "teacher_mismatch",
                    f"teacher_model_id: the teacher's {attr} is {getattr(teacher_spec, attr)} but the "
                    f"model's is {getattr(spec, attr)}",
                )
    if body.webhook_url is not None:
        try:
            validate_webhook_url(body.webhook_url, settings)
        except WebhookUrlError as exc:
            raise Problem(422, "invalid_webhook_url", f"webhook_url: {exc}") from exc


def _notify_finished(job_id: str, settings: Settings) -> None:
    """Queue the webhook of a job the API ended (cancelled while queued); a failure only loses the call."""
    try:
        notify_finished(job_id, settings)
    except Exception as exc:  # the job is canceled either way; the worker's sweep retries pending webhooks
        log.error("could not queue the webhook of job %s", job_id, exc_info=exc)


def _replayed(job: Job, fingerprint: str) -> Job:
    if job.request_hash != fingerprint:
        raise Problem(
            422,
            "idempotency_key_reused",
            f"The Idempotency-Key was already used for job {job.id} with a different request body",
            details={"job_id": job.id},
        )
    return job


@router.post(
    "",
    operation_id="createJob",
    summary="Create a cleanse job",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Replay of an earlier request with the same Idempotency-Key"},
        **problem_responses(400, 401, 404, 413, 422, 503),
    },
)
def create_job(
    request: Request,
    body: JobCreate,
    principal: Annotated[Principal, Depends(current_principal)],
    session: Annotated[Session, Depends(db_session)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Repeating a request with the same key and body returns the same job (200) instead "
            "of creating another; the same key with another body is a 422",
        ),
    ] = None,
) -> JSONResponse:
    """Queue a cleanse of `model_id` with the clean subset; answers 202 with the job and its Location.

    Every dataset must fit the model (channels, image size, labels below num_classes). The job row is
    committed before the job is sent to the queue, so a worker always finds it."""
    settings = app_settings(request)
    key = check_idempotency_key(idempotency_key)
    params = effective_params(body)
    fingerprint = request_fingerprint(body, params)
    if key is not None:
        existing = job_state.find_by_idempotency_key(session, principal.tenant_id, key)
        if existing is not None:
            return _job_response(session, _replayed(existing, fingerprint), 200)
    _validate_inputs(session, body, principal, settings)
    try:
        job, created = job_state.create_job(
            session,
            tenant_id=principal.tenant_id,
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
    except job_state.IdempotencyConflict as exc:
        raise Problem(
            422, "idempotency_key_reused", str(exc).capitalize(), details={"job_id": exc.job.id}
        ) from exc
    if not created:  # a concurrent request with the same key won the race
        return _job_response(session, job, 200)
    session.commit()
    try:
        enqueue_job(job.id, settings)
    except Exception as exc:
        log.error("could not enqueue job %s; withdrawing it", job.id, exc_info=exc)
        job_state.request_cancel(session, job.id)
        job_state.delete_job(session, app_store(request), job.id)
        session.commit()
        raise Problem(
            503, "queue_unavailable", "The job queue is unreachable; nothing was created, try again later"
        ) from exc
    return _job_response(session, job, 202)


def _job_response(session: Session, job: Job, status: int) -> JSONResponse:
    body = job_out(job, job_state.job_events(session, job.id))
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, headers={"Location": f"/v1/jobs/{job.id}"}
    )


# --- reading --------------------------------------------------------------------------------------------


@router.get(
    "",
    operation_id="listJobs",
    summary="List jobs",
    response_model=JobPage,
    responses=problem_responses(401, 422),
)
def list_jobs(
    principal: Annotated[Principal, Depends(current_principal)],
    session: Annotated[Session, Depends(db_session)],
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
) -> JobPage:
    """The caller's jobs, newest first, without their per-epoch history."""
    only = [Job.status == status] if status is not None else []
    rows, next_cursor = owned_page(session, Job, principal, limit, cursor, *only)
    return JobPage(items=[job_summary(row) for row in rows], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    operation_id="getJob",
    summary="Get a job",
    response_model=JobOut,
    responses=problem_responses(401, 404),
)
def get_job(
    job_id: str,
    principal: Annotated[Principal, Depends(current_principal)],
    session: Annotated[Session, Depends(db_session)],
) -> JobOut:
    """Status, phase, progress, metrics (before / teacher / after, DER, fidelity), history and error."""
    job = owned(session, Job, job_id, principal, "job")
    return job_out(job, job_state.job_events(session, job.id))


@router.post(
    "/{job_id}/cancel",
    operation_id="cancelJob",
    summary="Cancel a job",
    response_model=JobOut,
    responses={
        202: {
            "model": JobOut,
            "description": "Running: the worker stops at its next step (cancel_requested)",
        },
        **problem_responses(401, 404, 409),
    },
)
def cancel_job(
    request: Request,
    job_id: str,
    principal: Annotated[Principal, Depends(current_principal)],
    session: Annotated[Session, Depends(db_session)],
) -> JSONResponse:
    """A queued job is canceled at once (200); a running one is asked to stop (202, still running until
    its worker honours the request). A finished job answers 409."""
    job = owned(session, Job, job_id, principal, "job")
    try:
        job = job_state.request_cancel(session, job.id)
    except job_state.IllegalTransition as exc:
        raise Problem(409, "job_finished", f"The job is already {exc.current}; nothing to cancel") from exc
    session.commit()
    if job.status == "canceled" and job.webhook_url:
        _notify_finished(job.id, app_settings(request))
    return _job_response(session, job, 200 if job.status == "canceled" else 202)


@router.delete(
    "/{job_id}",
    operation_id="deleteJob",
    summary="Delete a finished job",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 404, 409),
)
def delete_job(
    request: Request,
    job_id: str,
    principal: Annotated[Principal, Depends(current_principal)],
    session: Annotated[Session, Depends(db_session)],
) -> Response:
    """Delete a finished job with its history and its result files (unless shared). 409 while it is queued
    or running: cancel it first."""
    job = owned(session, Job, job_id, principal, "job", lock="update")
    try:
        job_state.delete_job(session, app_store(request), job.id)
    except job_state.IllegalTransition as exc:
        raise Problem(
            409, "job_active", f"The job is {exc.current}; cancel it and wait for it to stop before deleting"
        ) from exc
    session.commit()
    return Response(status_code=204)


def _finished_artifact(job: Job, sha: str | None, what: str) -> str:
    if job.status != "succeeded" or sha is None:
        raise Problem(
            409,
            "job_not_succeeded",
            f"The job is {job.status}; its {what} exists once it has succeeded",
            details={"status": job.status},
        )
    return sha


@router.get(
    "/{job_id}/model",
    operation_id="downloadJobModel",
    summary="Download the cleansed model",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The cleansed weights (.safetensors)",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **problem_responses(401, 404, 409),
    },
)
def download_job_model(
    request: Request,
    job_id: str,
    principal: Annotated[Principal, Depends(current_principal)],
    session: Annotated[Session, Depends(db_session)],
) -> StreamingResponse:
    """The cleansed student's weights, streamed; 409 unless the job succeeded."""
    job = owned(session, Job, job_id, principal, "job")
    sha = _finished_artifact(job, job.result_model_sha256, "cleansed model")
    store = app_store(request)
    handle = store.open(sha)
    size = handle.seek(0, 2)
    handle.seek(0)

    def chunks() -> Any:
        with handle:
            yield from iter(lambda: handle.read(1 << 20), b"")

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{job.id}.safetensors"',
            "ETag": f'"{sha}"',
        },
    )


@router.get(
    "/{job_id}/report",
    operation_id="getJobReport",
    summary="Get the job's report",
    response_model=dict[str, Any],
    responses=problem_responses(401, 404, 409),
)
def get_job_report(
    request: Request,
    job_id: str,
    principal: Annotated[Principal, Depends(current_principal)],
    session: Annotated[Session, Depends(db_session)],
) -> JSONResponse:
    """The JSON report: metrics, every parameter, seed, software versions, input and output sha256."""
    job = owned(session, Job, job_id, principal, "job")
    sha = _finished_artifact(job, job.report_sha256, "report")
    with app_store(request).open(sha) as handle:
        report = json.load(handle)
    return JSONResponse(report)
