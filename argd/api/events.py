"""Server-Sent Events for one job: `GET /v1/jobs/{id}/events` pushes the job whenever it changes.

Clients that would otherwise poll (the web console, `argd status --wait`, `ArgdClient.wait`, MLOps steps)
hold one connection instead. The stream reads the job on a short server-side tick and, like a poll with
`If-None-Match`, compares its entity tag first (`job_etag`: the public fields and the history's count and
newest id), so an unchanged tick reads no event rows and builds no body. When the tag moved it sends an
`event: job` frame, whose data is the job exactly as `GET /v1/jobs/{id}` answers it. A final status ends
the stream with `event: end`. The key is checked again on every tick, so a key revoked while a page is open
stops its stream with an `event: problem` frame (the problem details of the 401) instead of leaking further
updates.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from argd.jobs.errors import NotFound
from argd.jobs.service import owned_job
from argd.jobs.status import TERMINAL_STATUSES
from argd.jobs.views import job_etag, job_out
from argd.persistence import jobs as job_state
from argd.persistence import keys
from argd.persistence.settings import Settings

EVENT_STREAM = "text/event-stream"
#: How often the stream looks at the job (seconds); progress is written per epoch, so this is plenty.
TICK_S = 0.5
#: A comment line this often keeps proxies and clients from timing an idle stream out.
KEEPALIVE_S = 10.0
#: What a client's EventSource (or our own readers) waits before reconnecting, in milliseconds.
RETRY_MS = 2000


def frame(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE frame: `event:`, optional `id:`, the JSON `data:` on one line, and the blank line."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


@dataclass(frozen=True)
class Snapshot:
    """What one tick saw: whether the key still holds, the job's entity tag (None when the job is gone),
    and its body, which is None too when the tag is the one the caller already had."""

    authorized: bool
    etag: str | None = None
    job: dict[str, Any] | None = None


def read_snapshot(
    sessions: sessionmaker[Session],
    settings: Settings,
    api_key: str,
    tenant_id: str,
    job_id: str,
    known_etag: str | None = None,
) -> Snapshot:
    """The job as `GET /v1/jobs/{id}` would answer it now, if the key is still valid (a blocking read);
    no body when its tag is still `known_etag`."""
    with sessions() as session:
        tenant = keys.authenticate(session, api_key, settings)
        if tenant is None or tenant.id != tenant_id:
            return Snapshot(authorized=False)
        try:
            job = owned_job(session, tenant_id, job_id)
        except NotFound:
            return Snapshot(authorized=True)
        etag = job_etag(job, job_state.history_marker(session, job.id))
        if etag == known_etag:
            return Snapshot(authorized=True, etag=etag)
        body = job_out(job, job_state.job_events(session, job.id)).model_dump(mode="json")
        return Snapshot(authorized=True, etag=etag, job=body)


async def job_stream(
    read: Callable[[str | None], Snapshot],
    problem: Callable[[int, str, str], dict[str, Any]],
    *,
    tick_s: float = TICK_S,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The frames of one stream. `read(known_etag)` takes a snapshot (run in a thread);
    `problem(status, code, detail)` builds the problem body sent when the key is revoked or the job deleted
    mid-stream."""
    yield f"retry: {RETRY_MS}\n\n".encode()
    last_etag: str | None = None
    status = ""
    sent = 0
    quiet_since = time.monotonic()
    while True:
        snapshot = await anyio.to_thread.run_sync(read, last_etag)
        if not snapshot.authorized:
            body = problem(401, "unauthorized", "The API key is not valid (unknown or revoked)")
            yield frame("problem", body)
            return
        if snapshot.etag is None:
            yield frame("problem", problem(404, "not_found", "The job was deleted"))
            return
        if snapshot.job is not None:
            sent += 1
            last_etag, status = snapshot.etag, snapshot.job["status"]
            quiet_since = time.monotonic()
            yield frame("job", snapshot.job, sent)
        if status in TERMINAL_STATUSES:
            yield frame("end", {"status": status}, sent)
            return
        if time.monotonic() - quiet_since >= keepalive_s:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await anyio.sleep(tick_s)
