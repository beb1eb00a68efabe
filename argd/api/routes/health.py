"""Probes: `/healthz` says the process answers, `/readyz` that it can reach its database, its broker and
its artifact store.

Orchestrators restart on a failing liveness probe and stop routing on a failing readiness probe, so
`/healthz` checks nothing external (a database outage must not restart every API process).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import APIRouter, Request
from sqlalchemy import text

from argd import __version__
from argd.api.deps import SettingsDep, StoreDep, session_factory
from argd.api.errors import Problem, problem_responses
from argd.api.schemas import Health, Readiness
from argd.persistence.artifacts import StoreUnavailable
from argd.persistence.settings import Settings

log = logging.getLogger("argd.api")

router = APIRouter(tags=["health"])

PROBE_TIMEOUT_S = 3.0


def check_database(request: Request) -> None:
    with session_factory(request)() as session:
        session.execute(text("SELECT 1"))


def check_broker(settings: Settings) -> None:
    """Connect to the broker (Redis: PING; the embedded filesystem broker: its folders are writable)."""
    url = settings.broker_url
    if settings.uses_filesystem_broker:
        options = settings.celery_transport_options()
        for key in ("data_folder_in", "data_folder_out", "control_folder"):
            folder = Path(options[key])
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise RuntimeError(f"broker folder {key} missing or not writable")
        return
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(
            url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
        )
        try:
            client.ping()
        finally:
            client.close()
        return
    from kombu.connection import Connection

    options = settings.celery_transport_options()
    with Connection(url, transport_options=options, connect_timeout=PROBE_TIMEOUT_S) as conn:
        conn.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT_S)


@router.get("/healthz", operation_id="getHealth", summary="Liveness", response_model=Health)
async def healthz() -> Health:
    """The process is up and serving requests."""
    return Health(version=__version__)


@router.get(
    "/readyz",
    operation_id="getReadiness",
    summary="Readiness",
    response_model=Readiness,
    responses=problem_responses(503),
)
def readyz(request: Request, settings: SettingsDep, store: StoreDep) -> Readiness:
    """The database, the broker and the artifact store are reachable; otherwise 503 naming the failing
    check (for the artifact store, also the cause: bucket missing, credentials refused, endpoint down)."""
    checks: dict[str, str] = {}
    causes: list[str] = []
    for name in ("database", "broker", "artifact_store"):
        try:
            if name == "database":
                check_database(request)
            elif name == "broker":
                check_broker(settings)
            else:
                store.check()
            checks[name] = "ok"
        except StoreUnavailable as exc:  # its message is written for operators and holds no secret
            log.warning("readiness check %s failed: %s", name, exc)
            checks[name] = f"unavailable: {exc}"
            causes.append(str(exc))
        except Exception as exc:  # any failure means "not ready"; details go to the log only
            log.warning("readiness check %s failed: %s", name, exc.__class__.__name__, exc_info=exc)
            checks[name] = "unavailable"
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        detail = f"Not ready: {', '.join(failing)} unreachable" + "".join(f" ({c})" for c in causes)
        raise Problem(503, "not_ready", detail, checks=checks)
    return Readiness(checks=checks)
