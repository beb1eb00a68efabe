"""The scrape-time aggregates (argd.persistence.stats, workers) on Postgres and SQLite: bucket counts,
sums and labels of the duration histograms, jobs by status, webhook outcomes, worker heartbeats."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from argd.persistence import stats, workers
from argd.persistence.db import get_sessionmaker
from argd.persistence.migrate import upgrade
from argd.persistence.models import Job, JobEvent, Tenant, WebhookDelivery
from argd.persistence.settings import Settings

pytestmark = pytest.mark.service


@pytest.fixture(params=["postgres", "sqlite"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    if request.param == "postgres":
        yield request.getfixturevalue("db_session")
        return
    settings = Settings(data_dir=tmp_path)
    upgrade(settings)
    db = get_sessionmaker(settings)()
    try:
        yield db
    finally:
        db.close()


def _job(session: Session, tenant: Tenant, method: str, status: str, seconds: float | None) -> Job:
    end = datetime.now(UTC)
    job = Job(
        tenant_id=tenant.id,
        method=method,
        params={},
        status=status,
        device="cpu",
        started_at=end - timedelta(seconds=seconds) if seconds is not None else None,
        finished_at=end if seconds is not None else None,
    )
    session.add(job)
    session.flush()
    return job


def test_histograms_bucket_and_sum_in_sql(session: Session) -> None:
    tenant = Tenant(name=f"stats-{uuid.uuid4().hex[:8]}")
    session.add(tenant)
    session.flush()
    method = f"m{uuid.uuid4().hex[:8]}"  # a label set no other test's rows have
    fast, slow = (
        _job(session, tenant, method, "succeeded", 20.0),
        _job(session, tenant, method, "succeeded", 700.0),
    )
    _job(session, tenant, method, "failed", 5.0)  # not a success: not in the job histogram
    for epoch, seconds in enumerate((0.4, 1.5, 1.5, 90.0), start=1):
        session.add(
            JobEvent(
                job_id=fast.id,
                attempt=1,
                phase="distill",
                epoch=epoch,
                losses={},
                metrics={"seconds": seconds},
            )
        )
    session.add(
        JobEvent(job_id=slow.id, attempt=1, phase="teacher", epoch=1, losses={}, metrics={"val_acc": 0.5})
    )
    session.flush()

    (jobs,) = [h for h in stats.job_durations(session) if h.labels == (method, "cpu")]
    assert jobs.count == 2 and jobs.total == pytest.approx(720.0, abs=0.01)
    bounds = dict(jobs.buckets)
    assert (bounds[10.0], bounds[30.0], bounds[600.0], bounds[1200.0]) == (0, 1, 1, 2)

    (epochs,) = [h for h in stats.epoch_durations(session) if h.labels == (method, "cpu")]
    assert epochs.count == 4 and epochs.total == pytest.approx(93.4)  # the event without seconds is left out
    bounds = dict(epochs.buckets)
    assert (bounds[0.5], bounds[1.0], bounds[2.0], bounds[60.0], bounds[120.0]) == (1, 1, 3, 3, 4)


def test_status_counts_outcomes_and_heartbeats(session: Session) -> None:
    statuses, outcomes = stats.jobs_by_status(session), stats.webhook_outcomes(session)
    assert set(statuses) == {"queued", "running", "succeeded", "failed", "canceled"}
    tenant = Tenant(name=f"stats-{uuid.uuid4().hex[:8]}")
    session.add(tenant)
    session.flush()
    job = _job(session, tenant, "argd", "queued", None)
    for attempt, (code, ok) in enumerate([(None, False), (500, False), (204, True)], start=1):
        session.add(
            WebhookDelivery(
                job_id=job.id,
                event_type="job.succeeded",
                message_id="m",
                attempt=attempt,
                url="u",
                status_code=code,
                succeeded=ok,
            )
        )
    session.flush()
    assert stats.jobs_by_status(session)["queued"] == statuses["queued"] + 1
    after = stats.webhook_outcomes(session)
    assert {k: after[k] - outcomes[k] for k in after} == {"delivered": 1, "http_error": 1, "network_error": 1}

    name = f"w-{uuid.uuid4().hex[:8]}@host"
    workers.beat(session, name, "gpu")
    first = {n: seen for n, _, seen in workers.last_seen(session)}[name]
    workers.beat(session, name, "gpu")
    assert {n: seen for n, _, seen in workers.last_seen(session)}[name] >= first
    workers.forget(session, name)
    assert name not in {n for n, _, _ in workers.last_seen(session)}
