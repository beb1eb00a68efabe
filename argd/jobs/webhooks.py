"""The webhook policy: which URLs may receive events, how bodies are signed and verified, and each tenant's
signing secret. The API checks URLs with it when a job is created; the worker's delivery
(`argd.worker.webhooks`) checks again after DNS resolution and signs with it.

A job may name a URL that receives `job.succeeded`, `job.failed` or `job.canceled` with the job, in the same
shape as `GET /v1/jobs/{id}`. The body is signed the Standard Webhooks way: headers `webhook-id`,
`webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) under a
`whsec_` secret. Each tenant has its own secret, derived from the deployment's master secret, so no tenant can
forge another's notifications.

URLs must be https to a public address. The check runs when the job is created (`validate_webhook_url`, no
DNS) and again at each delivery after DNS resolution (`resolve_target`, every address the name has); the
request then goes to the address that was checked, and the connection itself refuses any address this policy
refuses (`check_address`), so a name that re-resolves to a private address (DNS rebinding) cannot redirect
it. Settings relax this for tests and private deployments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from argd.jobs.views import job_out
from argd.persistence.settings import WEBHOOK_SECRET_PREFIX, Settings, decode_webhook_secret

if TYPE_CHECKING:
    from argd.persistence.models import Job, JobEvent

EVENT_TYPES = {"succeeded": "job.succeeded", "failed": "job.failed", "canceled": "job.canceled"}
MAX_URL_LENGTH = 2048
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
"""Host name and port to the addresses to try, as text (a seam: tests answer as a rebinding DNS would)."""


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


def check_address(host: str, settings: Settings) -> IPAddress:
    """The address a connection is about to be made to, if the policy allows it; WebhookUrlError if not.

    Only literal addresses pass: a connection that would resolve a name itself could reach anything.
    """
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError as exc:
        raise WebhookUrlError(f"webhook connection refused: {host!r} is not a checked address") from exc
    reason = _address_refusal(address, settings)
    if reason:
        raise WebhookUrlError(f"webhook connection refused: {reason}")
    return address


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for a TCP connection to host:port (socket.gaierror if none)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def resolve_target(
    url: str, settings: Settings, resolver: Resolver = system_resolver
) -> tuple[Target, IPAddress]:
    """Check the URL, resolve its host once, check every address; returns the address to connect to."""
    target = _parse(url, settings)
    try:
        answers = resolver(target.host, target.port)
    except socket.gaierror as exc:
        raise WebhookUrlError(
            f"webhook host {target.host} does not resolve: {exc.strerror}", transient=True
        ) from exc
    addresses = []
    for answer in answers:
        try:
            addresses.append(ipaddress.ip_address(answer.split("%")[0]))
        except ValueError as exc:
            message = f"webhook host {target.host} resolves to {answer!r}, not an address"
            raise WebhookUrlError(message) from exc
    if not addresses:
        raise WebhookUrlError(f"webhook host {target.host} has no addresses")
    for address in addresses:
        reason = _address_refusal(address, settings)
        if reason:
            raise WebhookUrlError(f"webhook target refused: {target.host} resolves to {reason}")
    return target, addresses[0]


def event_body(job: Job, events: Sequence[JobEvent]) -> tuple[str, bytes]:
    """The event type and the JSON body for a finished job (the same bytes on every attempt).

    `data` is the job exactly as `GET /v1/jobs/{id}` answers it, history included.
    """
    event_type = EVENT_TYPES[job.status]
    stamp = (job.finished_at or job.updated_at).isoformat()
    data = job_out(job, events).model_dump(mode="json")
    payload: dict[str, Any] = {"type": event_type, "timestamp": stamp, "data": data}
    return event_type, json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
