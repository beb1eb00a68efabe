"""GET /metrics for the operator's Prometheus: behind its own bearer token (ARGD_METRICS_TOKEN), never an
API key, and absent (404, like any unknown path) when no token is set. It is left out of the OpenAPI
document: it is no part of the tenants' API. The separate-port alternative is `argd.api.metrics`.
"""

from __future__ import annotations

import hmac
from typing import Annotated, cast

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from argd.api.auth import bearer_scheme, refuse_while_throttled
from argd.api.deps import SettingsDep, auth_throttle, client_address
from argd.api.errors import Problem
from argd.api.metrics import render

router = APIRouter(include_in_schema=False)

CHALLENGE = 'Bearer realm="argd-metrics"'


@router.get("/metrics")
async def metrics(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Response:
    """The Prometheus text format; 401 without the operator's token (an API key is not one)."""
    if settings.metrics_token is None:
        raise StarletteHTTPException(404)
    throttle, client = auth_throttle(request), client_address(request)
    refuse_while_throttled(throttle, client, "tokens")
    expected = settings.metrics_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, expected):
        throttle.record_failure(client)
        raise Problem(
            401,
            "unauthorized",
            "GET /metrics needs the operator's metrics token: 'Authorization: Bearer <ARGD_METRICS_TOKEN>'",
            headers={"WWW-Authenticate": CHALLENGE},
        )
    registry = cast(CollectorRegistry, request.app.state.metrics_registry)
    body = await anyio.to_thread.run_sync(render, registry)  # the scrape-time queries block
    return Response(body, media_type=CONTENT_TYPE_LATEST)
