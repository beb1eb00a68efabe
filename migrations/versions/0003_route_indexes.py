"""An index for every query the API routes make (docs/internals.md, "Queries and their indexes").

Listings page by (created_at, id) with and without a status filter; a status poll reads the newest event
of a job; deleting a model or dataset looks for the active jobs that use it in any of its roles.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns): the tenant listings gain `id`, the keyset tie-break, so a page needs no sort.
WIDENED = [
    ("ix_models_tenant_created", "models", ["tenant_id", "created_at"]),
    ("ix_datasets_tenant_created", "datasets", ["tenant_id", "created_at"]),
    ("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at"]),
]
NEW = [
    ("ix_jobs_tenant_status_created", "jobs", ["tenant_id", "status", "created_at", "id"]),
    ("ix_jobs_test_dataset_id", "jobs", ["test_dataset_id"]),
    ("ix_jobs_poisoned_dataset_id", "jobs", ["poisoned_dataset_id"]),
    ("ix_jobs_teacher_model_id", "jobs", ["teacher_model_id"]),
    ("ix_job_events_job", "job_events", ["job_id", "id"]),
]


def upgrade() -> None:
    for name, table, columns in WIDENED:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [*columns, "id"])
    for name, table, columns in NEW:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(NEW):
        op.drop_index(name, table_name=table)
    for name, table, columns in WIDENED:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns)
