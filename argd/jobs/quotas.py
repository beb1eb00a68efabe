"""What a tenant's quotas allow: a new upload of so many bytes, one more job of so many epochs.

A request past a quota is refused before anything is stored or queued, with the quota named: 413 for one
that is too big by itself (bytes, epochs), 429 for one that must wait for others to finish (active jobs).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from argd.jobs.errors import QuotaExceeded
from argd.persistence import quotas


def check_upload(session: Session, tenant_id: str, size: int) -> None:
    """Refuse an upload that would take the tenant's stored bytes past its quota.

    With a quota set, the tenant stays locked until the caller's transaction ends: store and commit in the
    same transaction, so that concurrent uploads cannot each pass the check and together overshoot it.
    """
    if quotas.tenant_quotas(session, tenant_id).max_stored_bytes is None:
        return
    quotas.lock_tenant(session, tenant_id)
    # The limit and the usage as they are now that no other upload of the tenant is between check and commit.
    limit = quotas.tenant_quotas(session, tenant_id, fresh=True).max_stored_bytes
    if limit is None:
        return
    used = quotas.stored_bytes(session, tenant_id)
    if used + size > limit:
        raise QuotaExceeded(
            413,
            "max_stored_bytes",
            f"Storing {size} more bytes would exceed the quota max_stored_bytes={limit} "
            f"({used} stored); delete models or datasets, or ask the operator for more",
            limit=limit,
            used=used,
        )


def check_job(session: Session, tenant_id: str, *, epochs: int) -> None:
    """Refuse a job longer than the epoch quota, or one more than the active-jobs quota allows."""
    limits = quotas.tenant_quotas(session, tenant_id)
    if limits.max_job_epochs is not None and epochs > limits.max_job_epochs:
        raise QuotaExceeded(
            413,
            "max_job_epochs",
            f"The job asks for {epochs} epochs (teacher and student); the quota max_job_epochs is "
            f"{limits.max_job_epochs}",
            limit=limits.max_job_epochs,
            used=epochs,
        )
    if limits.max_active_jobs is not None:
        active = quotas.active_jobs(session, tenant_id)
        if active >= limits.max_active_jobs:
            raise QuotaExceeded(
                429,
                "max_active_jobs",
                f"The tenant has {active} queued or running jobs, the quota max_active_jobs; wait for one "
                "to finish or cancel one",
                limit=limits.max_active_jobs,
                used=active,
            )
