"""The embedded default just works: commands that need the schema make the SQLite file themselves, and on
any other database that is behind they stop with exit 2 and `run argd migrate`, never "internal error"."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from argd.cli.common import EXIT_OK, EXIT_USAGE
from argd.cli.main import describe_error
from argd.persistence.throwaway import empty_database
from tests.cli.conftest import argd_env, run_argd
from tests.fixtures.database import admin_url


def test_keys_create_on_a_fresh_data_dir_makes_the_schema(tmp_path: Path) -> None:
    env = argd_env(ARGD_DATA_DIR=str(tmp_path / "fresh"))
    created = run_argd("keys", "create", "--tenant", "acme", env=env, timeout=120)
    assert created.returncode == EXIT_OK, created.stderr
    key = created.stdout.strip()
    assert key.startswith("argd_") and "internal error" not in created.stderr
    assert (tmp_path / "fresh" / "argd.sqlite3").is_file()
    listed = run_argd("keys", "list", "--json", env=env, timeout=120)
    assert listed.returncode == EXIT_OK, listed.stderr
    assert key[:13] in listed.stdout and '"acme"' in listed.stdout


@pytest.mark.service
def test_commands_on_an_unmigrated_postgres_say_run_argd_migrate(tmp_path: Path) -> None:
    with empty_database(admin_url(), "argd_unmigrated") as url:
        env = argd_env(ARGD_DATA_DIR=str(tmp_path), ARGD_DATABASE_URL=url)
        for command in (
            ["keys", "create", "--tenant", "acme"],
            ["keys", "list"],
            ["worker"],
            ["serve", "--no-migrate", "--port", "1"],
        ):
            result = run_argd(*command, env=env, timeout=120)
            assert result.returncode == EXIT_USAGE, (command, result.stderr)
            assert "run `argd migrate`" in result.stderr and "internal error" not in result.stderr
            assert "empty (no argd tables)" in result.stderr
        migrated = run_argd("migrate", env=env, timeout=120)
        assert migrated.returncode == EXIT_OK, migrated.stderr
        assert run_argd("keys", "create", "--tenant", "acme", env=env, timeout=120).returncode == EXIT_OK


def test_a_missing_table_anywhere_is_a_usage_error_naming_the_fix() -> None:
    error = OperationalError("SELECT 1 FROM tenants", {}, Exception("no such table: tenants"))
    code, message = describe_error(error)
    assert code == EXIT_USAGE and "run `argd migrate`" in message
