"""Request-scoped resources the routes share: settings, a database session, the artifact store, the caller
and the job queue, each as an `Annotated` alias a route names as a parameter type (`session: SessionDep`).

They come from `app.state`, set once by `create_app`, so a test can build an app on its own settings and
database without touching process-wide state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session, sessionmaker

from argd.api.auth import Principal, authenticate, bearer_scheme
from argd.api.throttle import FailedAuthThrottle
from argd.persistence.artifacts import ArtifactStore
from argd.persistence.settings import Settings
from argd.worker.dispatch import CeleryQueue

# The dependencies that only read app.state are coroutines: FastAPI would run plain functions in its
# thread pool, a thread hop per dependency per request on the polling path.


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return cast(Settings, request.app.state.settings)


async def app_store(request: Request) -> ArtifactStore:
    """The app's artifact store (the data directory's folder, or S3)."""
    return cast(ArtifactStore, request.app.state.store)


def session_factory(request: Request) -> sessionmaker[Session]:
    return cast("sessionmaker[Session]", request.app.state.sessionmaker)


def db_session(request: Request) -> Iterator[Session]:
    """One session per request; routes commit explicitly, anything left uncommitted is rolled back."""
    session = session_factory(request)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


async def job_queue(request: Request) -> CeleryQueue:
    """Where the app sends committed jobs and the webhooks of jobs it ends (the broker of its settings)."""
    return CeleryQueue(cast(Settings, request.app.state.settings))


SettingsDep = Annotated[Settings, Depends(app_settings)]
StoreDep = Annotated[ArtifactStore, Depends(app_store)]
SessionDep = Annotated[Session, Depends(db_session)]
QueueDep = Annotated[CeleryQueue, Depends(job_queue)]


def auth_throttle(request: Request) -> FailedAuthThrottle:
    """The app's throttle of failed authentication (one per API process)."""
    return cast(FailedAuthThrottle, request.app.state.auth_throttle)


def client_address(request: Request) -> str:
    """The client's address as the throttle counts it ("unknown" when the server does not know it)."""
    return request.client.host if request.client else "unknown"


def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    session: SessionDep,
    settings: SettingsDep,
) -> Principal:
    """The tenant of the bearer key, or a 401/429 problem (`argd.api.auth.authenticate`)."""
    return authenticate(credentials, session, settings, auth_throttle(request), client_address(request))


PrincipalDep = Annotated[Principal, Depends(current_principal)]
