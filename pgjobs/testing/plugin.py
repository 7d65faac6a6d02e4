"""The pgjobs pytest plugin: ``pgjobs_*`` fixtures for testing an app's jobs.

Registered as the ``pgjobs`` entry point of ``pytest11``, so installing pgjobs enables it;
``pytest -p no:pgjobs`` disables it. Loading it imports nothing but pytest: each fixture imports
what it needs when a test asks for it.

The app under test comes from the ``pgjobs_app`` fixture: set the ``pgjobs_app`` ini option
(``pgjobs_app = "myproject.jobs:app"``), or override the fixture in your ``conftest.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pgjobs import App
    from pgjobs.testing import Clock, Crash, DatabasePool, FakeQueue, Inline

APP_OPTION = "pgjobs_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        APP_OPTION, "the pgjobs App the pgjobs_* fixtures test: MODULE:ATTRIBUTE", default=""
    )


@pytest.fixture
def pgjobs_app(pytestconfig: pytest.Config) -> App:
    """The app under test: the ``pgjobs_app`` ini option's, unless a conftest overrides this."""
    path = str(pytestconfig.getini(APP_OPTION))
    if not path:
        pytest.fail(
            "the pgjobs_* fixtures need the app to test: set pgjobs_app = "
            '"myproject.jobs:app" in the [tool.pytest.ini_options] of pyproject.toml (or '
            "pytest.ini), or define a pgjobs_app fixture in conftest.py",
            pytrace=False,
        )
    from pgjobs._loading import import_app

    return import_app(path, source=APP_OPTION)


@pytest.fixture
def pgjobs_fake(pgjobs_app: App) -> Iterator[FakeQueue]:
    """Fake mode for the test: ``pgjobs_app``'s enqueues are recorded, nothing is written."""
    from pgjobs.testing import fake

    with fake(pgjobs_app) as queue:
        yield queue


@pytest.fixture(scope="session")
def pgjobs_server() -> Iterator[str]:
    """A PostgreSQL server's URL: ``PGJOBS_TEST_DSN``, else testcontainers, else embedded."""
    from pgjobs.testing import server

    with server() as url:
        yield url


@pytest.fixture(scope="session")
def pgjobs_databases(pgjobs_server: str) -> Iterator[DatabasePool]:
    """Clones of a migrated template database, emptied and reused from test to test."""
    from pgjobs.testing import DatabasePool, migrated_template

    with migrated_template(pgjobs_server) as template:
        pool = DatabasePool(pgjobs_server, template, "pgjobs_test")
        try:
            yield pool
        finally:
            pool.close()


@pytest.fixture
def pgjobs_database(pgjobs_databases: DatabasePool) -> Iterator[str]:
    """The URL of a migrated database, this test's alone."""
    with pgjobs_databases.lease() as name:
        yield pgjobs_databases.url(name)


@pytest.fixture
def pgjobs_real(pgjobs_app: App, pgjobs_database: str) -> Iterator[App]:
    """``pgjobs_app`` on ``pgjobs_database`` (set with ``configure``: an app made with its own
    ``database_url=`` keeps it); its pool is closed at the end."""
    pgjobs_app.configure(database_url=pgjobs_database)
    try:
        yield pgjobs_app
    finally:
        pgjobs_app.close()
        pgjobs_app.configure()


@pytest.fixture
def pgjobs_inline(pgjobs_real: App) -> Iterator[Inline]:
    """Inline mode on the test's database: each job runs here once its enqueue commits."""
    from pgjobs.testing import inline

    with inline(pgjobs_real) as runner:
        yield runner


@pytest.fixture
def pgjobs_clock(pgjobs_app: App) -> Clock:
    """Moves ``pgjobs_app``'s scheduled jobs, back-off and cron ticks forward (fake or real)."""
    from pgjobs.testing import Clock

    return Clock(pgjobs_app)


@pytest.fixture
def pgjobs_crash(pgjobs_real: App, pytestconfig: pytest.Config) -> Callable[..., Crash]:
    """``crash(job_id, at="checkpoint", retry=True)``: :func:`pgjobs.testing.run_until_killed`
    for ``pgjobs_app`` on the test's database."""
    from pgjobs.testing import run_until_killed

    path = str(pytestconfig.getini(APP_OPTION)) or _path_of(pgjobs_real)

    def crash(job_id: int, *, at: str, **options: Any) -> Crash:
        return run_until_killed(pgjobs_real, job_id, at=at, app_path=path, **options)

    return crash


def _path_of(app: App) -> str:
    """``MODULE:ATTRIBUTE`` of ``app`` among the loaded modules, for a worker process."""
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attribute}"
    pytest.fail(
        "pgjobs_crash runs a worker process, which must import the app: set the pgjobs_app ini "
        "option",
        pytrace=False,
    )
