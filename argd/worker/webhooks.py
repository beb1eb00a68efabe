"""Webhooks: URL policy, Standard Webhooks signatures, and one delivery attempt with its record.

A job may name a URL that receives `job.succeeded`, `job.failed` or `job.canceled` with the job summary. The
body is signed the Standard Webhooks way: headers `webhook-id`, `webhook-timestamp` and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) under a `whsec_` secret. Each tenant has its own secret,
derived from the deployment's master secret, so no tenant can forge another's notifications.

URLs must be https to a public address. The check runs when the job is created (`validate_webhook_url`) and
again at each delivery after DNS resolution; the request then goes to the address that was checked (the host
name is kept for TLS and the Host header), so a name that re-resolves to a private address cannot redirect it.
Redirects are not followed. Settings relax this for tests and private deployments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import update

from argd.persistence.db import session_scope
from argd.persistence.jobs import job_summary
from argd.persistence.models import TERMINAL_STATUSES, Job, WebhookDelivery
from argd.persistence.settings import WEBHOOK_SECRET_PREFIX, Settings, decode_webhook_secret, get_settings

log = logging.getLogger(__name__)

EVENT_TYPES = {"succeeded": "job.succeeded", "failed": "job.failed", "canceled": "job.canceled"}
MAX_URL_LENGTH = 2048
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookUrlError(ValueError):
    """The webhook URL is not acceptable; the message says why. `transient`: DNS may fix it later."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def tenant_webhook_secret(settings: Settings, tenant_id: str) -> str:
    """The tenant's signing secret ('whsec_' + base64), to show to the tenant so they can verify webhooks."""
    key = hmac.new(settings.master_webhook_secret(), f"argd-webhook:{tenant_id}".encode(), hashlib.sha256)
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(key.digest()).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for this message."""
    key = decode_webhook_secret(secret)
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300) -> bool:
    """Whether a received webhook carries a valid signature and a recent timestamp (receivers' check)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        message_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        signatures = lower["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def _address_refusal(address: IPAddress, settings: Settings) -> str | None:
    """Why this address may not receive webhooks, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        if settings.webhook_allow_private or settings.webhook_allow_http_loopback:
            return None
        return f"{address} is a loopback address"
    if settings.webhook_allow_private:
        return None if not (address.is_multicast or address.is_unspecified) else f"{address} is not routable"
    if (
        address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    ):
        return f"{address} is in a private or reserved range"
    return None


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: its parts and the scheme's default port resolved."""

    url: str
    scheme: str
    host: str
    port: int
    path_query: str


def validate_webhook_url(url: str, settings: Settings) -> str:
    """The URL if settings allow webhooks to it (no DNS lookup); WebhookUrlError saying why not.

    https only; http is accepted for loopback targets when `webhook_allow_http_loopback` is set. Literal
    private, loopback, link-local and reserved addresses, and local-only names, are refused unless
    `webhook_allow_private` is set. Delivery repeats the address check after resolving the name.
    """
    _parse(url, settings)
    return url


def _parse(url: str, settings: Settings) -> Target:
    if not isinstance(url, str) or not url:
        raise WebhookUrlError("webhook URL must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlError(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"webhook URL is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("https", "http"):
        raise WebhookUrlError("webhook URL must use https")
    if not host:
        raise WebhookUrlError("webhook URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("webhook URL must not contain credentials")
    if any(ch.isspace() for ch in url):
        raise WebhookUrlError("webhook URL must not contain whitespace")
    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    loopback_name = host == "localhost" or host.endswith(".localhost")
    is_loopback = loopback_name or (literal is not None and _unmapped(literal).is_loopback)
    if scheme == "http" and not (settings.webhook_allow_http_loopback and is_loopback):
        raise WebhookUrlError(
            "webhook URL must use https (plain http is allowed only to loopback when "
            "webhook_allow_http_loopback is set)"
        )
    if literal is not None:
        reason = _address_refusal(literal, settings)
        if reason:
            raise WebhookUrlError(f"webhook target refused: {reason}")
    elif loopback_name:
        if not (settings.webhook_allow_private or settings.webhook_allow_http_loopback):
            raise WebhookUrlError(f"webhook target refused: {host} is a loopback name")
    elif (host.endswith(_PRIVATE_SUFFIXES) or "." not in host) and not settings.webhook_allow_private:
        raise WebhookUrlError(f"webhook target refused: {host} is a local-network name")
    path_query = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80), path_query)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve_target(url: str, settings: Settings) -> tuple[Target, IPAddress]:
    """Check the URL, resolve its host, check every address; returns the address to connect to."""
    target = _parse(url, settings)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookUrlError(
            f"webhook host {target.host} does not resolve: {exc.strerror}", transient=True
        ) from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise WebhookUrlError(f"webhook host {target.host} has no addresses")
    for address in addresses:
        reason = _address_refusal(address, settings)
        if reason:
            raise WebhookUrlError(f"webhook target refused: {target.host} resolves to {reason}")
    return target, addresses[0]


def event_body(job: Job) -> tuple[str, bytes]:
    """The event type and the JSON body for a finished job (the same bytes on every attempt)."""
    event_type = EVENT_TYPES[job.status]
    stamp = (job.finished_at or job.updated_at).isoformat()
    payload: dict[str, Any] = {"type": event_type, "timestamp": stamp, "data": job_summary(job)}
    return event_type, json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class AttemptResult:
    """What one HTTP attempt produced."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    retryable: bool


def post_signed(url: str, body: bytes, *, message_id: str, secret: str, settings: Settings) -> AttemptResult:
    """POST the signed body to the URL's checked address; never raises for network or HTTP failures."""
    started = time.perf_counter()

    def result(ok: bool, code: int | None, error: str | None, retryable: bool) -> AttemptResult:
        return AttemptResult(ok, code, error, (time.perf_counter() - started) * 1000, retryable)

    try:
        target, address = resolve_target(url, settings)
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
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(
            timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            response = client.post(pinned, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return result(False, None, f"{exc.__class__.__name__}: {exc}"[:500], True)
    if 200 <= response.status_code < 300:
        return result(True, response.status_code, None, False)
    # Any other answer may be a receiver that is down or being deployed: retry with backoff.
    return result(False, response.status_code, f"HTTP {response.status_code}", True)


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
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return "skipped"
        job = session.get(Job, job_id)
        if job is None or job.webhook_url is None or job.webhook_status != "delivering":
            return "skipped"
        url = job.webhook_url
        event_type, body = event_body(job)
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
