"""Engines and sessions: one engine per database URL and process, tuned for Postgres and for SQLite.

SQLite is the embedded default, where the API and a worker process write the same file: WAL journaling and a
busy timeout let them take turns instead of failing with "database is locked". Worker pool processes are
forked from the worker's main process, so they call `dispose_engines()` first thing to drop the inherited
connections.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

from argd.persistence.settings import Settings, get_settings


class TenantRow(Protocol):
    """A row some tenant owns (models, datasets, jobs)."""

    tenant_id: Any  # a mapped str column on the classes, a plain str on their instances


RowT = TypeVar("RowT", bound=TenantRow)
MAX_ID_LENGTH = 64

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


#: SQLSTATEs of a server that is shutting down or starting up (admin_shutdown, crash_shutdown,
#: cannot_connect_now): the connection is gone even when the driver has not marked it broken yet.
SERVER_GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def _server_gone_is_a_disconnect(context: ExceptionContext) -> None:
    """Count "terminating connection due to administrator command" as a lost connection.

    psycopg raises it on the first use of a pooled connection after a Postgres restart, before it marks the
    connection broken, so the pool's pre-ping would pass the error on instead of reconnecting.
    """
    if getattr(context.original_exception, "sqlstate", None) in SERVER_GONE_SQLSTATES:
        context.is_disconnect = True


def make_engine(url: str) -> Engine:
    """A new engine for `url` (SQLite: parent folder created, pragmas set on every connection)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    event.listen(engine, "handle_error", _server_gone_is_a_disconnect)
    return engine


def get_engine(settings: Settings | None = None) -> Engine:
    """The process's engine for the configured database URL."""
    url = (settings or get_settings()).database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def get_sessionmaker(settings: Settings | None = None) -> sessionmaker[Session]:
    """A session factory bound to the configured database (objects stay readable after commit)."""
    url = (settings or get_settings()).database_url
    engine = get_engine(settings)
    with _lock:
        factory = _factories.get(url)
        if factory is None:
            factory = _factories[url] = sessionmaker(engine, expire_on_commit=False)
        return factory


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    session = get_sessionmaker(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines(close: bool = True) -> None:
    """Forget every engine; `close=False` in a forked child leaves the parent's connections alone."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=close)
        _engines.clear()
        _factories.clear()


def affected_rows(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE changed (what `session.execute` returns for one is a cursor
    result)."""
    return int(cast("CursorResult[Any]", result).rowcount)


def get_owned(
    session: Session,
    entity: type[RowT],
    row_id: str,
    tenant_id: str,
    *,
    lock: Literal["update", "share"] | None = None,
) -> RowT | None:
    """The row with this id if `tenant_id` owns it, else None (whether it exists or not).

    `lock` takes a row lock on Postgres (FOR UPDATE / FOR SHARE) so that deleting a model or dataset and
    creating a job that uses it cannot interleave.
    """
    if len(row_id) > MAX_ID_LENGTH or "\x00" in row_id:  # Postgres text cannot hold NUL: no such row
        return None
    options: dict[str, Any] = {}
    if lock is not None:
        options["with_for_update"] = {"read": lock == "share"}
    row = session.get(entity, row_id, **options)
    if row is None or row.tenant_id != tenant_id:
        return None
    return row
