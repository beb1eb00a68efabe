"""Celery tasks: thin wrappers that pass a job id to the runner or the webhook sender.

Imported by the worker only; the API enqueues by task name (`argd.worker.dispatch`) and never imports this.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from argd.persistence.settings import get_settings
from argd.worker.celery_app import DELIVER_WEBHOOK, RUN_JOB
from argd.worker.runner import run_job_attempt
from argd.worker.webhooks import backoff_s, deliver_attempt


@shared_task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self: Any, job_id: str) -> str:
    """Run one attempt of the job (the runner refuses jobs that are not queued or resumable)."""
    return run_job_attempt(str(job_id), get_settings())


@shared_task(name=DELIVER_WEBHOOK, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def deliver_webhook(self: Any, job_id: str, attempt: int = 1) -> str:
    """Deliver a finished job's webhook; failed attempts come back after an exponential backoff."""
    settings = get_settings()
    outcome = deliver_attempt(str(job_id), int(attempt), settings)
    if outcome == "retry":
        raise self.retry(args=(job_id, attempt + 1), countdown=backoff_s(attempt, settings))
    return outcome
