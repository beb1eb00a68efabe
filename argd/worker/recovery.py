"""Recovery of jobs whose worker was lost, run on a timer inside every worker's main process.

When only a pool process dies, Celery requeues its message at once (`reject_on_worker_lost`) and the job's
next attempt resumes from its checkpoint. When the whole worker dies, Redis keeps the message unacknowledged
until the visibility timeout (hours, by design), and the filesystem broker forgets it; the database still
says `running`, but its heartbeat stops. This pass finds such jobs, puts them back in the queue (or ends them
once their attempts or time are used up), and sends webhooks that were never sent. The same timer also
removes temporary upload files that a killed process left behind (`argd.persistence.tempfiles`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from argd.persistence.db import session_scope
from argd.persistence.jobs import Recovery, jobs_with_pending_webhooks, requeue_stale_jobs
from argd.persistence.settings import Settings, get_settings
from argd.persistence.stores import get_store
from argd.persistence.tempfiles import sweep_stale_temp_files
from argd.worker.dispatch import enqueue_job, notify_finished

log = logging.getLogger(__name__)

PENDING_WEBHOOK_GRACE_S = 60.0


def recover(settings: Settings | None = None) -> Recovery:
    """One recovery pass: requeue or end lost jobs, and enqueue what that calls for."""
    settings = settings or get_settings()
    with session_scope(settings) as session:
        outcome = requeue_stale_jobs(
            session,
            get_store(settings),
            stale_after_s=settings.stale_after_s,
            max_attempts=settings.max_attempts,
            time_limit_s=settings.job_time_limit_s,
        )
        forgotten = jobs_with_pending_webhooks(session, PENDING_WEBHOOK_GRACE_S)
    for job_id in outcome.requeued:
        log.warning("job %s lost its worker; requeued to resume from its last checkpoint", job_id)
        enqueue_job(job_id, settings)
    for job_id in outcome.failed + outcome.canceled:
        log.warning("job %s lost its worker and was ended", job_id)
    for job_id in outcome.failed + outcome.canceled + forgotten:
        notify_finished(job_id, settings)
    return outcome


class RecoveryStep(bootsteps.StartStopStep):
    """Runs `housekeeping` soon after the worker starts and then every `recovery_interval_s` seconds."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timers: list[Any] = []

    def start(self, parent: Any) -> None:
        interval = get_settings().recovery_interval_s
        self._timers = [
            parent.timer.call_after(min(1.0, interval), self._run),
            parent.timer.call_repeatedly(interval, self._run),
        ]

    def stop(self, parent: Any) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    @staticmethod
    def _run() -> None:
        housekeeping()


def housekeeping(settings: Settings | None = None) -> None:
    """One tick of the worker's timer: the recovery pass, then the sweep of stale temporary upload files.

    Neither raises (the next tick tries again; the timer must never die), and a failing recovery pass (the
    database is down, say) does not skip the sweep.
    """
    settings = settings or get_settings()
    try:
        recover(settings)
    except Exception:
        log.exception("job recovery pass failed")
    try:
        sweep_stale_temp_files(settings)
    except Exception:
        log.exception("sweeping stale temporary upload files failed")
