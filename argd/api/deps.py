"""Request-scoped resources the routes share: settings, a database session and the artifact store.

They come from `app.state`, set once by `create_app`, so a test can build an app on its own settings and
database without touching process-wide state.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from argd.persistence.artifacts import LocalArtifactStore
from argd.persistence.settings import Settings


def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings  # type: ignore[no-any-return]


def app_store(request: Request) -> LocalArtifactStore:
    """The artifact store of the app's data directory."""
    return request.app.state.store  # type: ignore[no-any-return]


def session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessionmaker  # type: ignore[no-any-return]


def db_session(request: Request) -> Iterator[Session]:
    """One session per request; routes commit explicitly, anything left uncommitted is rolled back."""
    session = session_factory(request)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()
