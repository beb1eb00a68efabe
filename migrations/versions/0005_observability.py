"""Observability: the device, MLflow run and warnings of a job, and the workers' heartbeats.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
COLUMNS = [("device", sa.String(16)), ("mlflow", JSON), ("warnings", JSON)]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_worker_heartbeats"),
    )


def downgrade() -> None:
    op.drop_table("worker_heartbeats")
    # As in 0004: never recreate `jobs` on SQLite (its rows would cascade away); plain DROP COLUMN.
    with op.batch_alter_table("jobs", recreate="never") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
