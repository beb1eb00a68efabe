"""Datasets keep the sha256 of the file as uploaded in a column, as models do (it was in `meta`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 08:10:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

META_KEY = "upload_sha256"
datasets = sa.table(
    "datasets",
    sa.column("id", sa.String(36)),
    sa.column("meta", JSON),
    sa.column("source_sha256", sa.String(64)),
)


def _rows() -> list[Any]:
    return list(op.get_bind().execute(sa.select(datasets.c.id, datasets.c.meta, datasets.c.source_sha256)))


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("source_sha256", sa.String(length=64), nullable=True))
    for row in _rows():
        meta = dict(row.meta or {})
        if META_KEY in meta:
            sha = meta.pop(META_KEY)
            op.execute(datasets.update().where(datasets.c.id == row.id).values(meta=meta, source_sha256=sha))


def downgrade() -> None:
    for row in _rows():
        if row.source_sha256 is not None:
            meta = {**(row.meta or {}), META_KEY: row.source_sha256}
            op.execute(datasets.update().where(datasets.c.id == row.id).values(meta=meta))
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("source_sha256")
