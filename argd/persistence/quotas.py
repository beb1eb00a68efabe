"""Tenant quotas and what a tenant uses against them: bytes stored, jobs queued or running.

The operator sets the limits (`argd quota`); the job domain (`argd.jobs.quotas`) decides what a request
may do with them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from argd.jobs.status import ACTIVE_STATUSES
from argd.persistence.models import Dataset, Job, Model, Tenant


@dataclass(frozen=True)
class Quotas:
    """A tenant's limits; None is no limit."""

    max_stored_bytes: int | None = None
    max_active_jobs: int | None = None
    max_job_epochs: int | None = None


QUOTA_NAMES = tuple(field.name for field in fields(Quotas))


def tenant_quotas(session: Session, tenant_id: str, *, fresh: bool = False) -> Quotas:
    """The tenant's limits (`fresh`: read again from the database, not from the session)."""
    tenant = session.get(Tenant, tenant_id, populate_existing=fresh)
    if tenant is None:
        return Quotas()
    return Quotas(**{name: getattr(tenant, name) for name in QUOTA_NAMES})


def set_quotas(session: Session, tenant_name: str, changes: dict[str, int | None]) -> Quotas:
    """Change the named limits of an existing tenant (None lifts one); LookupError for an unknown name."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise LookupError(f"no tenant named {tenant_name!r}")
    for name, value in changes.items():
        if name not in QUOTA_NAMES:
            raise ValueError(f"unknown quota {name!r}")
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0")
        setattr(tenant, name, value)
    session.flush()
    return tenant_quotas(session, tenant.id)


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Hold the tenant's row until this transaction ends, so that check-then-store of a quota is atomic.

    Concurrent uploads of one tenant then take turns between their quota check and their commit, and each
    check sees the bytes the others stored. Postgres: a row lock (`SELECT ... FOR UPDATE`). SQLite has one
    writer at a time: a no-op write to the row takes the database's write lock now rather than at the insert.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name))
    else:
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def stored_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's models and datasets as stored."""
    total = 0
    for entity in (Model, Dataset):
        total += int(
            session.scalar(
                select(func.coalesce(func.sum(entity.size), 0)).where(entity.tenant_id == tenant_id)
            )
            or 0
        )
    return total


def active_jobs(session: Session, tenant_id: str) -> int:
    """The tenant's queued and running jobs."""
    count = session.scalar(
        select(func.count(Job.id)).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_STATUSES))
    )
    return int(count or 0)
