"""Webhook delivery: one signed HTTP attempt to a checked address, with its record in the database.

What may be called and how bodies are signed is the domain's policy (`argd.jobs.webhooks`); this module only
sends. The request goes to the address `resolve_target` checked (the host name is kept for TLS, as SNI and
for the certificate, and in the Host header), and redirects are not followed. The connection is made by
httpcore through `GuardedBackend`, which refuses, at connect time, any address the policy refuses, so no
path through the HTTP stack can reach a private address the check did not see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import httpcore
from sqlalchemy import update

from argd.jobs.status import TERMINAL_STATUSES
from argd.jobs.webhooks import (
    Resolver,
    WebhookUrlError,
    check_address,
    event_body,
    resolve_target,
    sign,
    system_resolver,
    tenant_webhook_secret,
)
from argd.persistence.db import affected_rows, session_scope
from argd.persistence.jobs import job_events
from argd.persistence.models import Job, WebhookDelivery
from argd.persistence.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class AttemptResult:
    """What one HTTP attempt produced."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    retryable: bool


class ConnectionRefusedByPolicy(httpcore.ConnectError):
    """The connection was about to go to an address the webhook policy refuses."""


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, checking each address against the webhook policy before connecting."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            check_address(host, self.settings)
        except WebhookUrlError as exc:
            raise ConnectionRefusedByPolicy(str(exc)) from exc
        return super().connect_tcp(host, port, timeout, local_address, socket_options)


_NETWORK_ERRORS = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    OSError,
)


def post_signed(
    url: str,
    body: bytes,
    *,
    message_id: str,
    secret: str,
    settings: Settings,
    resolver: Resolver = system_resolver,
) -> AttemptResult:
    """POST the signed body to the URL's checked address; never raises for network or HTTP failures.

    The name is resolved once (`resolver`), and the connection is made to the address that was checked.
    """
    started = time.perf_counter()

    def result(ok: bool, code: int | None, error: str | None, retryable: bool) -> AttemptResult:
        return AttemptResult(ok, code, error, (time.perf_counter() - started) * 1000, retryable)

    try:
        target, address = resolve_target(url, settings, resolver)
    except WebhookUrlError as exc:
        # A name that does not resolve may be fixed by DNS later; a forbidden target never is.
        return result(False, None, str(exc), retryable=exc.transient)
    host_for_url = f"[{address}]" if address.version == 6 else str(address)
    pinned = f"{target.scheme}://{host_for_url}:{target.port}{target.path_query}"
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "argd-webhooks/1",
        "host": host_header,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
    timeout = settings.webhook_timeout_s
    extensions: dict[str, Any] = {
        "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    }
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    try:
        # httpcore follows no redirects and reads no proxy settings; the answer's body is never read.
        with (
            httpcore.ConnectionPool(network_backend=GuardedBackend(settings)) as pool,
            pool.stream(
                "POST", pinned, headers=list(headers.items()), content=body, extensions=extensions
            ) as response,
        ):
            status = response.status
    except ConnectionRefusedByPolicy as exc:
        return result(False, None, str(exc), False)
    except _NETWORK_ERRORS as exc:
        return result(False, None, f"{exc.__class__.__name__}: {exc}"[:500], True)
    if 200 <= status < 300:
        return result(True, status, None, False)
    # Any other answer may be a receiver that is down or being deployed: retry with backoff.
    return result(False, status, f"HTTP {status}", True)


# --- delivery with its records --------------------------------------------------------------------------

DeliveryOutcome = Literal["delivered", "retry", "failed", "skipped"]


def deliver_attempt(job_id: str, attempt: int, settings: Settings | None = None) -> DeliveryOutcome:
    """Make delivery attempt `attempt` of a finished job's webhook and record it.

    The first attempt claims the job's event (`pending` -> `delivering`), so a second notification for the
    same job sends nothing. Returns `retry` when the caller should try again later (after backoff).
    """
    settings = settings or get_settings()
    with session_scope(settings) as session:
        if attempt == 1:
            claimed = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status.in_(TERMINAL_STATUSES),
                    Job.webhook_status == "pending",
                    Job.webhook_url.is_not(None),
                )
                .values(webhook_status="delivering"),
                execution_options={"synchronize_session": False},
            )
            if affected_rows(claimed) != 1:
                return "skipped"
        job = session.get(Job, job_id)
        if job is None or job.webhook_url is None or job.webhook_status != "delivering":
            return "skipped"
        url = job.webhook_url
        event_type, body = event_body(job, job_events(session, job_id))
        secret = tenant_webhook_secret(settings, job.tenant_id)
    message_id = f"msg_{job_id}_{event_type}"
    result = post_signed(url, body, message_id=message_id, secret=secret, settings=settings)
    last = attempt >= settings.webhook_max_attempts or not result.retryable
    outcome: DeliveryOutcome = "delivered" if result.ok else ("failed" if last else "retry")
    with session_scope(settings) as session:
        session.add(
            WebhookDelivery(
                job_id=job_id,
                event_type=event_type,
                message_id=message_id,
                attempt=attempt,
                url=url,
                status_code=result.status_code,
                error=result.error,
                succeeded=result.ok,
                duration_ms=result.duration_ms,
            )
        )
        if outcome != "retry":
            session.execute(
                update(Job).where(Job.id == job_id).values(webhook_status=outcome),
                execution_options={"synchronize_session": False},
            )
    if outcome == "retry":
        log.info("webhook of job %s attempt %d failed (%s); will retry", job_id, attempt, result.error)
    elif outcome == "failed":
        log.warning("webhook of job %s failed after %d attempts (%s)", job_id, attempt, result.error)
    return outcome


def backoff_s(attempt: int, settings: Settings) -> float:
    """Delay before attempt `attempt + 1`: the base delay doubled per attempt, capped at one hour."""
    return float(min(settings.webhook_backoff_s * 2 ** (attempt - 1), 3600.0))
