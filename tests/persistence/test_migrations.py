"""The migrations build exactly the schema the models describe, and can be undone and redone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from argd.persistence.db import make_engine
from argd.persistence.migrate import current_revision, downgrade, head_revision, upgrade
from argd.persistence.models import Base
from argd.persistence.settings import Settings
from argd.persistence.throwaway import empty_database
from tests.fixtures.database import admin_url


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _up_down_up(settings: Settings) -> None:
    url = settings.database_url
    assert current_revision(settings) is None
    upgrade(settings)
    assert current_revision(settings) == head_revision()
    assert set(Base.metadata.tables) <= _tables(url)
    downgrade(settings, "base")
    assert current_revision(settings) is None
    assert _tables(url) <= {"alembic_version"}
    upgrade(settings)
    assert current_revision(settings) == head_revision()
    assert _diff(url) == [], "the models and the migrated schema differ; write a migration"


@pytest.mark.service
def test_postgres_upgrade_downgrade_upgrade_matches_models(tmp_path: Path) -> None:
    with empty_database(admin_url(), "argd_migration_test") as url:
        _up_down_up(Settings(database_url=url, data_dir=tmp_path))


def test_sqlite_upgrade_downgrade_upgrade_matches_models(tmp_path: Path) -> None:
    _up_down_up(Settings(data_dir=tmp_path))


def test_dataset_upload_sha256_moves_from_meta_to_its_column_and_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings, "0001")
    engine = make_engine(settings.database_url)
    rows = {
        "tenants": {"id": "t", "name": "t", "created_at": "2026-01-01 00:00:00"},
        "artifacts": {"sha256": "a" * 64, "size": 1, "kind": "dataset", "created_at": "2026-01-01 00:00:00"},
        "datasets": {
            "id": "d", "tenant_id": "t", "name": "d", "sha256": "a" * 64, "size": 1, "format": "npz",
            "count": 1, "shape": "[1, 2, 2]", "classes": "[0]", "created_at": "2026-01-01 00:00:00",
            "meta": json.dumps({"filename": "d.npz", "upload_sha256": "b" * 64}),
        },
    }  # fmt: skip
    try:
        with engine.begin() as conn:
            for table, row in rows.items():
                names = ", ".join(row)
                conn.execute(
                    text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in row)})"), row
                )
        upgrade(settings)
        with engine.connect() as conn:
            sha, meta = conn.execute(text("SELECT source_sha256, meta FROM datasets")).one()
        assert sha == "b" * 64 and json.loads(meta) == {"filename": "d.npz"}
        downgrade(settings, "0001")
        with engine.connect() as conn:
            (meta,) = conn.execute(text("SELECT meta FROM datasets")).one()
        assert json.loads(meta) == {"filename": "d.npz", "upload_sha256": "b" * 64}
    finally:
        engine.dispose()
