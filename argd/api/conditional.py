"""Conditional GETs (RFC 9110): an `ETag` on answers that pollers repeat, and 304 for `If-None-Match`.

A poller that sends back the tag it last saw gets an empty 304 while nothing changed, which costs the
server no body to build and the client nothing to parse.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import Response

IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="The ETag of an earlier answer: 304 Not Modified (no body) while it is still current",
    ),
]

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified since the ETag given in If-None-Match"}
}


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether `If-None-Match` names `etag` (weak comparison, `*` matches anything, lists allowed)."""
    if not if_none_match:
        return False
    given = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in given or etag.removeprefix("W/") in given


def not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag})


def json_with_etag(body: bytes, if_none_match: str | None, status_code: int = 200) -> Response:
    """`body` (JSON bytes) with an ETag made from its digest, or 304 when the client has it already."""
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    if etag_matches(if_none_match, etag):
        return not_modified(etag)
    return Response(body, status_code=status_code, media_type="application/json", headers={"ETag": etag})
