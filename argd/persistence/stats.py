"""Aggregates the Prometheus scrape reads from the database: jobs by status, job and epoch durations as
histogram buckets, webhook deliveries by outcome.

Workers record everything they do in the database anyway, so deriving these at scrape time makes every
worker's work visible through any API process, on any host, without a port per worker or a shared
multiprocess folder, and nothing is lost when a process restarts. Each is one grouped statement; the
durations are bucketed in SQL, so no rows come back beyond one per label set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session

from argd.jobs.status import JobStatus
from argd.persistence.models import Job, JobEvent, WebhookDelivery

JOB_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
EPOCH_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Histogram:
    """One label set's observations: cumulative counts per upper bound, their count and sum."""

    labels: tuple[str, ...]
    buckets: list[tuple[float, int]]
    count: int
    total: float


def jobs_by_status(session: Session) -> dict[str, int]:
    """Every status with its number of jobs (0 where none)."""
    counts = {str(status): 0 for status in JobStatus}
    for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[str(status)] = int(count)
    return counts


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def _histograms(
    session: Session, value: Any, labels: Sequence[Any], bounds: Sequence[float], where: Any, joined: Any
) -> list[Histogram]:
    # The value is computed once per row in a materialised CTE: inlined, Postgres would evaluate it (a
    # JSON extraction, a date difference) again in every bucket's CASE, three to five times slower.
    rows = (
        select(
            *(func.coalesce(label, UNKNOWN).label(f"l{i}") for i, label in enumerate(labels)),
            value.label("v"),
        )
        .select_from(joined)
        .where(where)
        .cte("observed")
        .prefix_with("MATERIALIZED")
    )
    keys = [rows.c[f"l{i}"] for i in range(len(labels))]
    v = rows.c.v
    columns = [
        *keys,
        func.count(),
        func.coalesce(func.sum(v), 0.0),
        *(func.sum(case((v <= bound, 1), else_=0)) for bound in bounds),
    ]
    stmt = select(*columns).where(v.is_not(None)).group_by(*keys)
    out = []
    for row in session.execute(stmt):
        names = tuple(str(value) for value in row[: len(labels)])
        count, total = int(row[len(labels)]), float(row[len(labels) + 1])
        cumulative = [int(n or 0) for n in row[len(labels) + 2 :]]
        out.append(Histogram(names, list(zip(bounds, cumulative, strict=True)), count, total))
    return out


def job_durations(session: Session) -> list[Histogram]:
    """Wall time from first start to success of succeeded jobs, by (method, device)."""
    seconds = _seconds_between(session, Job.started_at, Job.finished_at)
    where = (
        (Job.status == str(JobStatus.SUCCEEDED)) & Job.started_at.is_not(None) & Job.finished_at.is_not(None)
    )
    return _histograms(session, seconds, [Job.method, Job.device], JOB_BUCKETS, where, Job)


def epoch_durations(session: Session) -> list[Histogram]:
    """Seconds of every recorded epoch (both phases), by the job's (method, device)."""
    seconds = cast(JobEvent.metrics["seconds"].as_float(), Float)
    joined = JobEvent.__table__.join(Job.__table__, JobEvent.job_id == Job.id)
    return _histograms(
        session, seconds, [Job.method, Job.device], EPOCH_BUCKETS, seconds.is_not(None), joined
    )


def webhook_outcomes(session: Session) -> dict[str, int]:
    """Delivery attempts by outcome: delivered, http_error (an answer other than 2xx), network_error."""
    outcome = case(
        (WebhookDelivery.succeeded.is_(True), "delivered"),
        (WebhookDelivery.status_code.is_not(None), "http_error"),
        else_="network_error",
    )
    counts = {"delivered": 0, "http_error": 0, "network_error": 0}
    for name, count in session.execute(select(outcome, func.count()).group_by(outcome)):
        counts[str(name)] = int(count)
    return counts
