"""The worker's heartbeat row (argd.persistence.workers), written from a timer in the worker's main
process: the Prometheus scrape reads it from the database, so no worker needs a port of its own."""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from argd.persistence import workers
from argd.persistence.db import session_scope
from argd.persistence.settings import get_settings

log = logging.getLogger(__name__)

#: Most seconds between two heartbeats (faster when the recovery interval is shorter).
BEAT_INTERVAL_S = 15.0


class PresenceStep(bootsteps.StartStopStep):
    """Beats at start and then every min(recovery_interval_s, 15 s); removes the row at a clean stop."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timers: list[Any] = []
        self._name = ""

    def start(self, parent: Any) -> None:
        self._name = str(parent.hostname)
        interval = min(get_settings().recovery_interval_s, BEAT_INTERVAL_S)
        self._beat()
        self._timers = [parent.timer.call_repeatedly(interval, self._beat)]

    def stop(self, parent: Any) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        try:
            with session_scope(get_settings()) as session:
                workers.forget(session, self._name)
        except Exception:
            log.warning("could not remove the heartbeat row of %s", self._name, exc_info=True)

    def _beat(self) -> None:
        settings = get_settings()
        try:
            with session_scope(settings) as session:
                workers.beat(session, self._name, settings.queue)
        except Exception:  # a database hiccup: the next beat tries again
            log.warning("worker heartbeat of %s failed", self._name, exc_info=True)
