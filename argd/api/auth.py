"""Bearer API keys: every `/v1` route resolves the caller's key to its tenant, or answers 401.

Keys are checked against their stored hash by `argd.persistence.keys.authenticate`; the routes then scope
every query to the returned tenant, which is what makes another tenant's ids answer 404.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from argd.api.errors import Problem
from argd.api.throttle import FailedAuthThrottle
from argd.persistence import keys
from argd.persistence.settings import Settings

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key made with `argd keys create`, sent as `Authorization: Bearer argd_...`",
)

REALM = 'Bearer realm="argd"'


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant that owns the presented key."""

    tenant_id: str
    tenant_name: str


def _unauthorized(detail: str, *, invalid_token: bool) -> Problem:
    challenge = f'{REALM}, error="invalid_token"' if invalid_token else REALM
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def refuse_while_throttled(throttle: FailedAuthThrottle, client: str, what: str) -> None:
    """429 (with Retry-After) while `client` is throttled for presenting too many invalid `what`."""
    wait = throttle.retry_after(client)
    if wait is not None:
        raise Problem(
            429,
            "too_many_failed_authentications",
            f"Too many invalid {what} from this client; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )


def authenticate(
    credentials: HTTPAuthorizationCredentials | None,
    session: Session,
    settings: Settings,
    throttle: FailedAuthThrottle,
    client: str,
) -> Principal:
    """The tenant of the bearer key; 401 problem (with WWW-Authenticate) when it is missing or unknown,
    429 (with Retry-After) while `client` is throttled for presenting too many invalid keys."""
    if credentials is None:
        raise _unauthorized("Missing API key: send 'Authorization: Bearer <key>'", invalid_token=False)
    refuse_while_throttled(throttle, client, "API keys")
    tenant = keys.authenticate(session, credentials.credentials, settings)
    if tenant is None:
        throttle.record_failure(client)
        raise _unauthorized("The API key is not valid (unknown or revoked)", invalid_token=True)
    throttle.clear(client)
    principal = Principal(tenant_id=tenant.id, tenant_name=tenant.name)
    if session.get_bind().dialect.name == "sqlite":
        # A SQLite read transaction that later writes fails if another process wrote meanwhile; end it.
        # On Postgres the route goes on in the same transaction: two round trips fewer per request.
        session.rollback()
    return principal
