"""Schema migrations run from code (`argd migrate`, `argd serve`, tests) with Alembic.

The scripts live in the repository's top-level `migrations/` folder; the database URL comes from the settings,
so the same call migrates the embedded SQLite file or a production Postgres.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from argd.persistence.db import make_engine
from argd.persistence.settings import Settings, get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    """An Alembic config for the settings' database, with no ini file and no logging reconfiguration."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise RuntimeError(
            f"migration scripts not found in {MIGRATIONS_DIR}: install argd from its source tree "
            "(the migrations/ folder ships beside the argd package)"
        )
    settings = settings or get_settings()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser treats '%' as interpolation; URLs may hold percent-encoded passwords.
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(settings: Settings | None = None, revision: str = "head") -> None:
    """Bring the database up to `revision` (default: the newest)."""
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings | None = None, revision: str = "base") -> None:
    """Take the database down to `revision` (default: empty)."""
    command.downgrade(alembic_config(settings), revision)


def current_revision(settings: Settings | None = None) -> str | None:
    """The revision the database is at, or None for an unmigrated database."""
    engine = make_engine((settings or get_settings()).database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision among the scripts."""
    return ScriptDirectory.from_config(alembic_config(Settings())).get_current_head()


class SchemaNotReady(RuntimeError):
    """The database is not at the newest revision and this process may not migrate it (not the embedded
    SQLite file): the operator runs `argd migrate` (the message says so)."""

    def __init__(self, url: str, current: str | None, head: str | None):
        at = f"at revision {current}" if current else "empty (no argd tables)"
        super().__init__(f"the database {url} is {at}; the newest is {head}: run `argd migrate`")
        self.current = current
        self.head = head


def is_embedded(settings: Settings) -> bool:
    """Whether the database is a SQLite file, which belongs to this data directory and may be migrated
    by any command that needs it (a shared Postgres is migrated only by `argd migrate`)."""
    return make_url(settings.database_url).get_backend_name() == "sqlite"
