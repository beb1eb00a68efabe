"""Helpers the resource routers share: tenant-scoped lookups and deletes, upload names, the body schema."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from argd.api.auth import Principal
from argd.api.errors import Problem
from argd.api.pagination import paginate, split_page
from argd.persistence import jobs as job_state
from argd.persistence.artifacts import ArtifactStore, release_artifacts
from argd.persistence.db import RowT, get_owned

T = TypeVar("T")

MAX_NAME_LENGTH = 255


def owned(
    session: Session,
    entity: type[RowT],
    row_id: str,
    principal: Principal,
    what: str,
    *,
    lock: Literal["update", "share"] | None = None,
) -> RowT:
    """The row with this id if the caller's tenant owns it; a 404 problem otherwise (even if it exists).
    `lock`: see `argd.persistence.db.get_owned`."""
    row = get_owned(session, entity, row_id, principal.tenant_id, lock=lock)
    if row is None:
        raise Problem(404, "not_found", f"No {what} with id '{row_id}'")
    return row


def owned_page(
    session: Session,
    entity: type[T],
    principal: Principal,
    limit: int,
    cursor: str | None,
    *where: ColumnElement[bool],
) -> tuple[list[T], str | None]:
    """One page of the caller's tenant's rows of `entity` (that also meet `where`), newest first, and the
    next page's cursor (None on the last page)."""
    table: Any = entity
    query = select(entity).where(table.tenant_id == principal.tenant_id, *where)
    return split_page(list(session.scalars(paginate(query, entity, limit, cursor))), limit)


def delete_unused(
    session: Session,
    store: ArtifactStore,
    entity: type[Any],
    row_id: str,
    principal: Principal,
    what: Literal["model", "dataset"],
) -> None:
    """Delete the caller's model or dataset and release its stored bytes (kept while another row shares
    them); a 409 `in_use` problem listing the jobs while a queued or running job reads it.

    The row lock keeps a concurrent job creation from taking the row between the check and the delete.
    """
    row = owned(session, entity, row_id, principal, what, lock="update")
    if what == "model":
        active = job_state.jobs_using(session, model_id=row.id)
    else:
        active = job_state.jobs_using(session, dataset_id=row.id)
    if active:
        raise Problem(
            409,
            "in_use",
            f"The {what} is used by {len(active)} queued or running job(s); cancel them or wait",
            details={"jobs": [job.id for job in active]},
        )
    sha = row.sha256
    session.delete(row)
    session.flush()
    release_artifacts(session, store, [sha])
    session.commit()


def upload_name(given: str | None, filename: str) -> str:
    """The resource name: the `name` field if given, else the uploaded file's name."""
    name = (given or "").strip() or filename or "upload"
    if len(name) > MAX_NAME_LENGTH:
        raise Problem(422, "validation_error", f"The name is longer than {MAX_NAME_LENGTH} characters")
    return name


def multipart_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """`openapi_extra` documenting a multipart/form-data body the route parses itself (it streams)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": required}
                }
            },
        }
    }
