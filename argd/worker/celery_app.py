"""The Celery application: JSON only, one queue, late acknowledgement, time limits from the settings.

Long GPU jobs want the message acknowledged only when the job is done (`acks_late`), requeued when the pool
process running it dies (`reject_on_worker_lost`; the job's attempt count caps the retries), one message
reserved at a time (`prefetch 1`), and, on Redis, a visibility timeout longer than the hard time limit so a
running job is never redelivered while it runs. The job state lives in the database; no result backend.

The producer side (`argd.worker.dispatch`) needs only this module. A worker process is started by
`argd.worker.main`, which also adds the recovery pass (`argd.worker.recovery`) to it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from argd.persistence.db import dispose_engines
from argd.persistence.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB = "argd.run_job"
DELIVER_WEBHOOK = "argd.deliver_webhook"
WEBHOOK_TIME_LIMIT_S = 120

_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app configured from `settings` (the process settings by default)."""
    settings = settings or get_settings()
    settings.ensure_dirs()
    app = Celery("argd", broker=settings.broker_url, include=["argd.worker.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_default_queue=settings.queue,
        task_default_routing_key=settings.queue,
        task_create_missing_queues=True,
        task_routes={"argd.*": {"queue": settings.queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_enable_remote_control=not settings.uses_filesystem_broker,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=settings.celery_transport_options(),
        task_annotations={
            RUN_JOB: {
                "soft_time_limit": settings.job_soft_time_limit_s,
                "time_limit": settings.job_time_limit_s,
            },
            DELIVER_WEBHOOK: {
                "soft_time_limit": WEBHOOK_TIME_LIMIT_S - 10,
                "time_limit": WEBHOOK_TIME_LIMIT_S,
            },
        },
    )
    return app


def _key(settings: Settings) -> str:
    return json.dumps(
        [settings.broker_url, settings.queue, settings.celery_transport_options()],
        sort_keys=True,
        default=str,
    )


def get_celery(settings: Settings | None = None) -> Celery:
    """The process's app for these settings (one per broker configuration, created on first use)."""
    settings = settings or get_settings()
    key = _key(settings)
    with _apps_lock:
        app = _apps.get(key)
        if app is None:
            app = _apps[key] = create_celery(settings)
        return app


def pool_threads(settings: Settings) -> int:
    """torch's intra-op threads in a pool process: ARGD_TORCH_THREADS, else OMP_NUM_THREADS when it is a
    number, else every CPU this process may run on (what a one-shot `argd cleanse` gets)."""
    if settings.torch_threads:
        return settings.torch_threads
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(omp) if omp.isdigit() and int(omp) > 0 else len(os.sched_getaffinity(0))


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    """In each forked pool process: drop inherited DB connections, and set torch's thread count here,
    after the fork, where the job runs (a count inherited from the parent, or left to a library's guess
    in a forked child, is not trusted)."""
    dispose_engines(close=False)
    import torch

    threads = pool_threads(get_settings())
    torch.set_num_threads(threads)
    log.info("pool process %d: torch on %d threads", os.getpid(), threads)
