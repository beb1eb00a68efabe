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
