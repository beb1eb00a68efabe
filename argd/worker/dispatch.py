"""Sending work to the workers: the producer side, light enough for the API to import (no torch).

Enqueue only after the job row is committed: the worker reads everything from the database, and a message for
a row it cannot see yet would be dropped as "missing".
"""

from __future__ import annotations

from dataclasses import dataclass

from argd.persistence.settings import Settings, get_settings
from argd.worker.celery_app import DELIVER_WEBHOOK, RUN_JOB, get_celery


def enqueue_job(job_id: str, settings: Settings | None = None, countdown: float | None = None) -> None:
    """Queue a committed job for the workers (to run no sooner than `countdown` seconds from now)."""
    settings = settings or get_settings()
    get_celery(settings).send_task(RUN_JOB, args=[job_id], queue=settings.queue, countdown=countdown)


def notify_finished(job_id: str, settings: Settings | None = None) -> None:
    """Queue the webhook of a job that has just finished (a no-op for jobs without a webhook URL).

    The worker calls it for jobs it ends; the API calls it after committing the cancellation of a queued job.
    Calling it twice sends one webhook: the delivery task claims the event first.
    """
    settings = settings or get_settings()
    get_celery(settings).send_task(DELIVER_WEBHOOK, args=[job_id], queue=settings.queue)


@dataclass(frozen=True)
class CeleryQueue:
    """The job service's queue (`argd.jobs.service.JobQueue`) on the Celery broker of `settings`."""

    settings: Settings

    def enqueue(self, job_id: str) -> None:
        enqueue_job(job_id, self.settings)

    def notify_finished(self, job_id: str) -> None:
        notify_finished(job_id, self.settings)


def queue_depth(settings: Settings | None = None, timeout_s: float = 3.0) -> int:
    """Messages waiting in the job queue (jobs and webhook deliveries) on the broker, for the metrics.

    kombu's virtual transports (Redis, the filesystem broker) count their own messages (`_size`: LLEN over
    the priority lists, or the files); a passive declare would miss a Redis queue under a key prefix.
    """
    settings = settings or get_settings()
    with get_celery(settings).connection_for_read(connect_timeout=timeout_s) as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout_s)
        channel = connection.default_channel
        size = getattr(channel, "_size", None)
        if size is not None:
            return int(size(settings.queue))
        return int(channel.queue_declare(queue=settings.queue, passive=True).message_count)
