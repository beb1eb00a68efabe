"""What a running attempt notes about its job beside the state machine: the device it runs on, the MLflow
run it exported to, and warnings (problems that do not fail the job, such as an unreachable MLflow server).

Each write is scoped to the attempt that owns the running job, like progress writes, so a superseded
attempt cannot overwrite its successor's notes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from argd.persistence.db import affected_rows
from argd.persistence.models import Job


def _owned(job_id: str, attempt: int) -> Any:
    return update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempt)


def set_device(session: Session, job_id: str, attempt: int, device: str) -> bool:
    """Record the device type ('cpu', 'cuda') the attempt runs on (the metrics' `device` label)."""
    result = session.execute(
        _owned(job_id, attempt).values(device=device[:16]), execution_options={"synchronize_session": False}
    )
    return affected_rows(result) == 1


def record_export(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    mlflow: dict[str, Any],
    warnings: list[dict[str, str]],
) -> bool:
    """Store the job's MLflow block (options plus run id, version) and append `warnings` to its list."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status != "running" or job.attempts != attempt:
        return False
    values: dict[str, Any] = {"mlflow": mlflow}
    if warnings:
        values["warnings"] = [*(job.warnings or []), *warnings]
    result = session.execute(
        _owned(job_id, attempt).values(**values), execution_options={"synchronize_session": False}
    )
    return affected_rows(result) == 1
