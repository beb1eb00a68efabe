"""Rows to the public job shape: the only place that maps `Job` columns to `argd.jobs.schemas`.

The API's answers and the webhook bodies are both built here, so a poller and a webhook subscriber see the
same object, key for key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

from argd.jobs.schemas import (
    HistoryEntry,
    JobError,
    JobOut,
    JobPhase,
    JobSummary,
    JobWarning,
    Metrics,
    MlflowExport,
    Progress,
)

if TYPE_CHECKING:
    from argd.persistence.models import Job, JobEvent


def job_summary(job: Job) -> JobSummary:
    """The job without its history (listings)."""
    return JobSummary(**_summary_fields(job))


def job_out(job: Job, events: Sequence[JobEvent]) -> JobOut:
    """The job with its per-epoch history (`GET /v1/jobs/{id}`, webhook bodies)."""
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
        "mlflow": MlflowExport.model_validate(job.mlflow) if job.mlflow else None,
        "warnings": [JobWarning.model_validate(item) for item in job.warnings or []],
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def job_etag(job: Job, history_marker: tuple[int, int]) -> str:
    """The entity tag of `GET /v1/jobs/{id}`: a digest of the job's public fields and of its history's
    (count, newest event id), so it changes exactly when the answer does, and a poll that presents it
    again is answered 304 without reading the history (heartbeats touch no public field)."""
    digest = hashlib.sha256(job_summary(job).model_dump_json().encode())
    digest.update(f"/{history_marker[0]}/{history_marker[1]}".encode())
    return f'"{digest.hexdigest()[:32]}"'
