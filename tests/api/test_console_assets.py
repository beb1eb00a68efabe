"""The console's files and the security headers, in-process: what a browser is told before any script runs.

The strict policy (own scripts and styles only, no inline code, no framing) is on every console answer, an
anti-framing policy on every other one; the pages reference their assets relatively and hold no inline
script or style, so the policy costs the console nothing. Unknown names are problem 404s, never files
from elsewhere on disk.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from argd.api.console import ASSETS, CONSOLE_CSP, STATIC_DIR
from tests.api.test_problems import assert_problem

pytestmark = pytest.mark.service


def test_console_pages_carry_the_strict_policy(anonymous: TestClient) -> None:
    for path, media in (
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ):
        response = anonymous.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(media), path
        assert response.headers["content-security-policy"] == CONSOLE_CSP
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert "script-src 'self';" in CONSOLE_CSP and "'unsafe-inline'" not in CONSOLE_CSP
    assert "frame-ancestors 'none'" in CONSOLE_CSP and "connect-src 'self'" in CONSOLE_CSP


def test_other_answers_refuse_framing_too(client: TestClient) -> None:
    for path in ("/v1/jobs", "/healthz", "/docs", "/v1/no-such-thing"):
        response = client.get(path)
        assert response.headers["content-security-policy"] == "frame-ancestors 'none'", path
        assert response.headers["x-frame-options"] == "DENY", path


def test_entry_points_redirect_relatively(anonymous: TestClient) -> None:
    for path in ("/", "/console"):
        response = anonymous.get(path, follow_redirects=False)
        assert response.status_code == 307 and response.headers["location"] == "console/", path


def test_unknown_files_are_problems(anonymous: TestClient) -> None:
    assert_problem(anonymous.get("/console/nope.js"), 404, "not_found")
    assert_problem(anonymous.get("/console/..%2Fapp.py"), 404)
    assert_problem(anonymous.get("/console/__init__.py"), 404, "not_found")


def test_pages_have_no_inline_code_and_only_relative_urls() -> None:
    assert set(ASSETS) == {"index.html", "app.js", "api.js", "chart.js", "style.css", "icon.svg"}
    html = (STATIC_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S)
    assert scripts and all(not body.strip() for body in scripts)  # src only
    assert "<style" not in html and not re.search(r"\s(style|on\w+)=", html)
    # No root-relative URL (it would escape a path prefix) and no other host (the webhook example aside).
    other_host = r"https?://(?!www\.w3\.org/|ci\.example\.com/)"
    for name in ("index.html", "app.js", "api.js", "chart.js"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"""(src|href)=["']/|fetch\(["']/|""" + other_host, text), name
