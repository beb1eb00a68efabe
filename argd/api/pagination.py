"""Keyset pagination over (created_at, id), newest first: cheap on the (tenant_id, created_at) indexes and
stable while rows are added, unlike offsets.

The cursor is opaque to clients: URL-safe base64 of the last row's timestamp and id.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Query
from sqlalchemy import Select, and_, or_

from argd.api.errors import Problem

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

# The query parameters of every listing (`limit: LimitQuery = DEFAULT_LIMIT`, `cursor: CursorQuery = None`).
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
CursorQuery = Annotated[str | None, Query(max_length=512)]


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor points after; a 422 problem for anything not made by `encode_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, row_id = json.loads(raw)
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not isinstance(row_id, str):
            raise ValueError("bad cursor fields")
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError) as exc:
        raise Problem(
            422, "invalid_cursor", "The cursor is not valid; use the next_cursor of a previous page"
        ) from exc
    return created_at, row_id


def paginate(query: Select[Any], entity: Any, limit: int, cursor: str | None) -> Select[Any]:
    """Order newest first and start after `cursor`; fetches one extra row to know if a next page exists."""
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(
            or_(entity.created_at < created_at, and_(entity.created_at == created_at, entity.id < row_id))
        )
    return query.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)


def split_page(rows: list[T], limit: int) -> tuple[list[T], str | None]:
    """The page's rows and the cursor of the next page (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last: Any = rows[-1]
    return rows, encode_cursor(last.created_at, last.id)
