"""A size cap on every request body except the streaming uploads.

FastAPI reads JSON (and any other) bodies whole into memory before validating them, so without a cap a
single oversized `POST /v1/jobs` could exhaust the API process. This ASGI middleware answers 413 for a
declared `Content-Length` over the cap without reading anything, and otherwise reads the body (at most the
cap) before the app sees it. The upload routes are exempt: they stream to disk under their own, much larger
limit (`argd.api.uploads`).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from argd.api.errors import problem_response

DEFAULT_MAX_BODY_BYTES = 1 << 20


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with a 413 problem, except for the (method, path) pairs in `exempt`."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES, exempt: Iterable[tuple[str, str]]
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away; let the app see the disconnect
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            Request(scope),
            413,
            "payload_too_large",
            f"The request body exceeds the limit of {self.max_bytes} bytes for this route",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
