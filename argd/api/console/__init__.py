"""The web console: static pages served by the API itself at `/console/`, and the security headers.

The console is plain HTML, CSS and ES modules written for this project (no build step, nothing from a CDN).
It talks only to the public `/v1` API with the key in an Authorization header, so it has no endpoint of its
own beyond its files. Every URL it uses is relative to its page, which makes it work unchanged behind a
reverse proxy at a path prefix (or with uvicorn's `--root-path`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from argd.api.errors import Problem

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONSOLE_PREFIX = "/console"

#: Strict policy of the console's pages: its own scripts and styles only, no inline code, no framing.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Every other answer (JSON, the interactive docs) may not be framed either.
DEFAULT_CSP = "frame-ancestors 'none'"

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


def _assets() -> dict[str, Path]:
    """The files the console may serve, fixed at import: a request can name nothing else."""
    return {path.name: path for path in STATIC_DIR.iterdir() if path.suffix in _MEDIA_TYPES}


ASSETS = _assets()


@router.get("/")
@router.get(CONSOLE_PREFIX)
def to_console() -> RedirectResponse:
    """A relative redirect, so that it lands on the console under any path prefix."""
    return RedirectResponse("console/", status_code=307)


@router.get(CONSOLE_PREFIX + "/")
def console_page() -> FileResponse:
    return _file("index.html")


@router.get(CONSOLE_PREFIX + "/{name}")
def console_asset(name: str) -> FileResponse:
    return _file(name)


def _file(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise Problem(404, "not_found", f"The console has no file '{name}'")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


class SecurityHeaders:
    """Adds nosniff, no-referrer, `X-Frame-Options: DENY` and a Content-Security-Policy to every answer:
    the strict one on the console's paths, `frame-ancestors 'none'` elsewhere (the docs pages keep their
    scripts)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        console = path == "/" or path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")
        policy = CONSOLE_CSP if console else DEFAULT_CSP

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = policy
                headers["X-Frame-Options"] = "DENY"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, with_headers)
