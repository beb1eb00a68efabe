"""Headless Chromium for the console tests: the Debian `chromium` package driven by Playwright.

No browser is downloaded (`playwright install` is never run): Playwright starts the system binary through
`executable_path` (`ARGD_TEST_CHROMIUM`, default /usr/bin/chromium; `make test` installs the package when it
is missing). Every page records its console messages, uncaught errors and failed requests in a `BrowserLog`,
and a test ends by asserting that nothing went wrong beyond the refusals it provoked on purpose.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

CHROMIUM = Path(os.environ.get("ARGD_TEST_CHROMIUM", "/usr/bin/chromium"))
#: Where the README's screenshots go when set (e.g. `docs`); otherwise into the test's temporary folder.
SCREENSHOT_DIR = os.environ.get("ARGD_SCREENSHOT_DIR")
#: Chromium's console line for an HTTP error answer to a fetch or XHR.
_HTTP_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


@dataclass
class BrowserLog:
    """What the page reported: console errors and warnings, page errors, failed requests."""

    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on(
            "console",
            lambda message: (
                self.console.append(f"{message.type}: {message.text}")
                if message.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on(
            "requestfailed",
            lambda request: self.failed_requests.append(f"{request.url} {request.failure}"),
        )

    def assert_clean(self, allowed_statuses: set[int] = frozenset(), aborted: str | None = None) -> None:
        """No page error, no console message but HTTP refusals of `allowed_statuses` (the ones the test
        provoked), and no failed request except aborted ones whose URL contains `aborted` (an event stream
        left behind by a page change, a canceled upload)."""
        assert not self.page_errors, self.page_errors
        unexpected = [
            line
            for line in self.console
            if not ((match := _HTTP_ERROR.search(line)) and int(match.group(1)) in allowed_statuses)
        ]
        assert not unexpected, unexpected
        failed = [
            line
            for line in self.failed_requests
            if not (aborted and aborted in line and "ERR_ABORTED" in line)
        ]
        assert not failed, failed


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module. Not per session: Playwright's sync API keeps an asyncio loop running
    on the main thread while it is started, and later tests that call asyncio.run() must not see it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian packages chromium and chromium-driver")
    expect.set_options(timeout=30_000)  # the first upload loads torch in the API server: seconds on CI
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Tab:
    """One browser tab of its own context (its own sessionStorage), with its log."""

    context: BrowserContext
    page: Page
    log: BrowserLog


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    log = BrowserLog()
    log.attach(page)
    try:
        yield Tab(context, page, log)
    finally:
        context.close()


def screenshot(page: Page, name: str, fallback: Path) -> Path:
    """A full-page screenshot into SCREENSHOT_DIR (the README's images) or `fallback`."""
    folder = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else fallback
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path
