"""The FastAPI application factory: settings in, a fully wired app out.

Run it with `uvicorn --factory argd.api.app:create_app` (settings from ARGD_* variables), or build one on
explicit settings in tests. Nothing here imports torch: the engine is loaded on the first upload.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from argd import __version__
from argd.api import console
from argd.api.errors import document_problems, install_error_handlers
from argd.api.limits import BodySizeLimit
from argd.api.metrics import HttpMetrics, build_registry, start_metrics_port
from argd.api.routes import catalog, datasets, health, jobs, metrics, models, webhooks
from argd.api.throttle import FailedAuthThrottle
from argd.persistence.db import get_sessionmaker
from argd.persistence.settings import Settings, get_settings
from argd.persistence.stores import get_store
from argd.persistence.tempfiles import sweep_stale_temp_files

log = logging.getLogger("argd.api")

DESCRIPTION = """\
Removes backdoors from image classifiers with Attention Relation Graph Distillation (ARGD).

Upload a model (`POST /v1/models`) and a small clean subset of its training data (`POST /v1/datasets`),
create a job (`POST /v1/jobs`), poll it (`GET /v1/jobs/{id}`) and download the cleansed weights
(`GET /v1/jobs/{id}/model`). Every `/v1` call needs `Authorization: Bearer <API key>`; each key sees only its
own resources. Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`.
`GET /v1/jobs/{id}/events` streams a job's changes as Server-Sent Events. The web console is at `/console/`.
"""

OPENAPI_TAGS = [
    {"name": "models", "description": "Uploaded classifiers (validated at upload, stored as safetensors)"},
    {"name": "datasets", "description": "Uploaded image sets (clean subset, test set, poisoned set)"},
    {"name": "jobs", "description": "Cleanse jobs: progress, metrics, results"},
    {"name": "catalog", "description": "What a spec and a job may name: architectures, parameter presets"},
    {"name": "health", "description": "Liveness and readiness probes"},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app on `settings` (default: from the environment), with its own session factory and store."""
    settings = settings or get_settings()
    settings.ensure_dirs()  # data directory, and the embedded broker's folders when that is the broker
    app = FastAPI(
        title="argd",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = get_sessionmaker(settings)
    app.state.store = get_store(settings)
    app.state.auth_throttle = FailedAuthThrottle(settings.auth_failure_limit, settings.auth_failure_window_s)
    app.state.metrics_registry = build_registry(settings, app.state.sessionmaker)
    install_error_handlers(app)
    # Only the upload routes may receive big bodies; they stream them to disk under their own limit.
    app.add_middleware(BodySizeLimit, exempt=[("POST", "/v1/models"), ("POST", "/v1/datasets")])
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location"],
        )
    app.add_middleware(console.SecurityHeaders)
    app.add_middleware(HttpMetrics)  # outermost: every answer is counted, refusals included
    for module in (models, datasets, jobs, catalog, webhooks, health, metrics, console):
        app.include_router(module.router)
    _customize_openapi(app)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """At startup, delete the temporary upload files a crashed predecessor left (argd.persistence.tempfiles).

    It runs when the server starts, not in `create_app`, so that building an app (tests, the OpenAPI export)
    touches no files. A failed sweep is logged and does not stop the API from starting. The separate
    metrics port (ARGD_METRICS_PORT), when set, is served for the app's lifetime.
    """
    try:
        await anyio.to_thread.run_sync(sweep_stale_temp_files, app.state.settings)
    except Exception:
        log.exception("sweeping stale temporary upload files failed")
    stop_metrics = start_metrics_port(app.state.settings, app.state.metrics_registry)
    try:
        yield
    finally:
        if stop_metrics is not None:
            stop_metrics()


def _customize_openapi(app: FastAPI) -> None:
    """Post-process the generated document once (problem details everywhere), then cache it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
