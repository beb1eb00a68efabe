"""Helpers the resource routers share: tenant-scoped lookups, upload folders, the multipart body schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy.orm import Session

from argd.api.auth import Principal
from argd.api.errors import Problem
from argd.persistence.settings import Settings

T = TypeVar("T")

MAX_NAME_LENGTH = 255


def owned(
    session: Session,
    entity: type[T],
    row_id: str,
    principal: Principal,
    what: str,
    *,
    lock: Literal["update", "share"] | None = None,
) -> T:
    """The row with this id if the caller's tenant owns it; a 404 problem otherwise (even if it exists).

    `lock` takes a row lock on Postgres (FOR UPDATE / FOR SHARE) so that deleting a model or dataset and
    creating a job that uses it cannot interleave.
    """
    options: dict[str, Any] = {}
    if lock is not None:
        options["with_for_update"] = {"read": lock == "share"}
    row: Any = session.get(entity, row_id, **options) if len(row_id) <= 64 else None
    if row is None or row.tenant_id != principal.tenant_id:
        raise Problem(404, "not_found", f"No {what} with id '{row_id}'")
    return row  # type: ignore[no-any-return]


def upload_dir(settings: Settings) -> Path:
    """Where uploads stream to: inside the data directory, on the artifact store's filesystem."""
    return settings.data_dir / "tmp" / "uploads"


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
