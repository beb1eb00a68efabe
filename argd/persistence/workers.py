"""Worker presence: each running worker upserts its row every few seconds (argd.worker.presence), and
removes it at a clean shutdown, so a row that stops moving is a worker that died (the metrics scrape
exports the timestamps; an alert compares them with the time)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from argd.persistence.db import affected_rows
from argd.persistence.models import WorkerHeartbeat, utcnow

#: Rows of workers silent for longer than this are dropped (a worker killed long ago is not news).
FORGET_AFTER = timedelta(days=1)


def beat(session: Session, name: str, queue: str) -> None:
    """Record that worker `name` (consuming `queue`) is alive now."""
    now = utcnow()
    result = session.execute(
        update(WorkerHeartbeat)
        .where(WorkerHeartbeat.name == name)
        .values(last_seen_at=now, queue=queue[:64]),
        execution_options={"synchronize_session": False},
    )
    if affected_rows(result) == 0:
        session.add(WorkerHeartbeat(name=name[:255], queue=queue[:64], started_at=now, last_seen_at=now))
    session.execute(
        delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen_at < now - FORGET_AFTER),
        execution_options={"synchronize_session": False},
    )


def forget(session: Session, name: str) -> None:
    """A worker that stops cleanly takes its row with it."""
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))


def last_seen(session: Session) -> list[tuple[str, str, datetime]]:
    """(name, queue, last_seen_at) of every known worker."""
    rows = session.execute(
        select(WorkerHeartbeat.name, WorkerHeartbeat.queue, WorkerHeartbeat.last_seen_at).order_by(
            WorkerHeartbeat.name
        )
    )
    return [(name, queue, seen) for name, queue, seen in rows]
