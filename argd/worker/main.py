"""Starting a worker: the Celery app with the recovery step added, and the `celery worker` arguments.

A worker runs the recovery pass (`argd.worker.recovery`) on a timer in its main process: it requeues jobs
whose worker was lost without the broker noticing (the whole worker killed; the filesystem broker). Only a
worker needs it, so it is added here, where workers start, and not to every app the API enqueues through.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Celery

from argd.persistence.settings import Settings, get_settings, use_settings
from argd.worker.celery_app import get_celery
from argd.worker.presence import PresenceStep
from argd.worker.recovery import RecoveryStep


def worker_app(settings: Settings | None = None) -> Celery:
    """The process's Celery app for these settings, with the recovery timer among the worker's steps."""
    app = get_celery(settings)
    app.steps["worker"].add(RecoveryStep)  # a set: adding it again changes nothing
    app.steps["worker"].add(PresenceStep)  # the heartbeat row the metrics scrape reads
    return app


def worker_argv(settings: Settings, *, loglevel: str = "INFO", hostname: str | None = None) -> list[str]:
    """Command-line arguments of `celery worker` for these settings."""
    return [
        "worker",
        f"--queues={settings.queue}",
        f"--concurrency={settings.worker_concurrency}",
        f"--loglevel={loglevel}",
        f"--hostname={hostname or f'argd-{os.getpid()}@{socket.gethostname()}'}",
        "--pool=prefork",
        "--prefetch-multiplier=1",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]


def run_worker(
    settings: Settings | None = None, *, loglevel: str = "INFO", hostname: str | None = None
) -> None:
    """Run a worker in this process until it is stopped (`argd worker`, and the worker `argd serve` starts).

    The settings become the process settings, so the pool processes see the same configuration.
    """
    settings = settings or get_settings()
    use_settings(settings)
    if settings.torch_threads is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.torch_threads))
    app = worker_app(settings)
    app.worker_main(worker_argv(settings, loglevel=loglevel, hostname=hostname))


def __getattr__(name: str) -> Any:
    # `celery -A argd.worker.main worker` looks for `app`; build it from the environment on demand.
    if name == "app":
        return worker_app()
    raise AttributeError(name)
