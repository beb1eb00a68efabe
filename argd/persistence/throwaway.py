"""Throw-away Postgres databases for the test suite and the service benchmarks: created empty, migrated to
head, dropped (forcefully) when done, so runs on a shared server never see each other's rows.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from argd.persistence.db import dispose_engines
from argd.persistence.migrate import upgrade
from argd.persistence.settings import Settings


def postgres_unavailable(admin_url: str) -> str | None:
    """None when the server behind `admin_url` answers, else why not (for skips and error messages)."""
    engine = create_engine(admin_url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:
        where = make_url(admin_url).render_as_string(hide_password=True)
        return f"no Postgres at {where}: {exc.__class__.__name__}"
    finally:
        engine.dispose()


@contextlib.contextmanager
def empty_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new empty database `<prefix>_<random>` on the server of `admin_url` (a user that may create
    databases); its URL, dropped on exit whatever happened."""
    reason = postgres_unavailable(admin_url)
    if reason is not None:
        raise RuntimeError(reason)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            dispose_engines()  # the pooled connections of this process would keep the database open
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def throwaway_database(admin_url: str, prefix: str) -> Iterator[str]:
    """`empty_database`, migrated to head first."""
    with empty_database(admin_url, prefix) as url:
        with tempfile.TemporaryDirectory(prefix="argd-migrate-") as scratch:
            upgrade(Settings(database_url=url, data_dir=Path(scratch)), "head")
        yield url
