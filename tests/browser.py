"""A real browser on a real dashboard: ``pgjobs web`` and ``pgjobs worker`` subprocesses for
``tests.web_app`` on each test's own database, and Debian's Chromium driven by Playwright.

Fixtures for tests/test_web_browser.py, which loads them with ``pytest_plugins``. Chromium is
started once per module; each test gets fresh browser contexts (cookies, dialogs) of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

import pgjobs
from tests import web_app
from tests.helpers import WorkerProcess

CHROMIUM = Path("/usr/bin/chromium")

VIEWPORT: ViewportSize = {"width": 1280, "height": 800}

SCREENSHOTS_ENV = "PGJOBS_SCREENSHOTS"
"""A directory that :func:`screenshot` saves into too: ``docs/screenshots`` refreshes the
guide's pictures."""

APP = "tests.web_app:app"


@dataclass
class Dashboard:
    """A ``pgjobs web`` subprocess serving at ``url`` (no trailing slash)."""

    url: str
    process: WorkerProcess

    def log(self) -> str:
        return self.process.output()


def start_dashboard(
    database_url: str, log: Path, *flags: str, env: dict[str, str] | None = None
) -> Dashboard:
    """``pgjobs web --port 0 --app tests.web_app:app FLAGS``, once it says where it
    listens."""
    process = WorkerProcess.start(
        ["web", "--port", "0", "--app", APP, *flags], database_url=database_url, log=log, env=env
    )
    try:
        process.wait_for_log("serving the dashboard on http://127.0.0.1:")
    except BaseException:
        process.kill()
        raise
    match = re.search(r"serving the dashboard on (http://127\.0\.0\.1:\d+)", process.output())
    assert match is not None, process.output()
    return Dashboard(match[1], process)


@pytest.fixture
def dashboards(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Dashboard]]:
    """``start(*flags, env=None)``: a dashboard on this test's database. Each is killed at the
    end, and its log must hold no traceback (a page that failed with a 500)."""
    started: list[Dashboard] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> Dashboard:
        log = tmp_path / f"web-{len(started)}.log"
        dashboard = start_dashboard(database_url, log, *flags, env=env)
        started.append(dashboard)
        return dashboard

    yield start
    for dashboard in started:
        dashboard.process.kill()
    for dashboard in started:
        assert "Traceback" not in dashboard.log(), dashboard.log()


@pytest.fixture
def dashboard(dashboards: Callable[..., Dashboard]) -> Dashboard:
    """A dashboard without authentication that may change things."""
    return dashboards()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(*args)``: a ``pgjobs worker`` for ``tests.web_app`` on this test's database, once
    it listens for jobs; all are killed at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess.start(
            ["--app", APP, "worker", "--poll-interval", "500ms", *args],
            database_url=database_url,
            log=tmp_path / f"worker-{len(started)}.log",
        )
        started.append(worker)
        worker.wait_for_log("listening on")
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def jobs(database_url: str) -> Iterator[pgjobs.App]:
    """``tests.web_app``'s app, pointed at this test's database, to enqueue with."""
    web_app.app.configure(database_url=database_url)
    yield web_app.app
    web_app.app.close()
    web_app.close_connections()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as started:
        yield started


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless. Missing, it fails the tests: the dashboard is not tested."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing, so the dashboard cannot be tested in a browser: "
            "apt-get install chromium chromium-driver"
        )
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    yield browser
    browser.close()


@pytest.fixture
def dialogs() -> list[str]:
    """The message of every dialog (``confirm()``) the test's pages opened; each is accepted."""
    return []


@pytest.fixture
def console() -> list[str]:
    """What the test's pages reported as errors: uncaught exceptions of their script, and console
    errors (a resource that failed, a Content-Security-Policy violation)."""
    return []


@pytest.fixture
def contexts(
    browser: Browser, dialogs: list[str], console: list[str]
) -> Iterator[Callable[..., BrowserContext]]:
    """``new(base_url, **options)``: a browser context of its own (cookies, credentials) with a
    1280x800 viewport, whose pages accept and record dialogs and record errors in ``console``;
    all are closed at the end."""
    opened: list[BrowserContext] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    def error(page: Page, message: ConsoleMessage) -> None:
        # the browser asks every site for /favicon.ico, which the dashboard does not have
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            console.append(f"{page.url}: {message.text}")

    def watch(page: Page) -> None:
        page.on("dialog", accept)
        page.on("pageerror", lambda exception: console.append(f"{page.url}: {exception}"))
        page.on("console", lambda message: error(page, message))

    def new(base_url: str, **options: Any) -> BrowserContext:
        context = browser.new_context(viewport=VIEWPORT, base_url=base_url, **options)
        context.on("page", watch)
        opened.append(context)
        return context

    yield new
    for context in opened:
        context.close()


@pytest.fixture
def page(contexts: Callable[..., BrowserContext], dashboard: Dashboard) -> Page:
    """A page on :func:`dashboard`."""
    return contexts(dashboard.url).new_page()


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[Page, str], None]:
    """``shoot(page, name)``: save ``page`` as ``NAME.png`` in the test's ``tmp_path``, and in
    ``$PGJOBS_SCREENSHOTS`` too when that names a directory."""

    def shoot(page: Page, name: str) -> None:
        page.screenshot(path=tmp_path / f"{name}.png")
        also = os.environ.get(SCREENSHOTS_ENV)
        if also:
            Path(also).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=Path(also) / f"{name}.png")

    return shoot
