"""Per-tenant quotas set by the operator: stored bytes, active jobs, epochs of one job (null: no limit).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 11:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [
    ("max_stored_bytes", sa.BigInteger()),
    ("max_active_jobs", sa.Integer()),
    ("max_job_epochs", sa.Integer()),
]


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    # Never recreate the table: on SQLite, dropping `tenants` to copy it would cascade to every row that
    # belongs to a tenant. Plain DROP COLUMN needs SQLite 3.35 (2021).
    with op.batch_alter_table("tenants", recreate="never") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
