"""Real PostgreSQL for the tests that need it, isolated as cheaply as each test allows.

The server is ``PGJOBS_TEST_DSN`` when set; otherwise a throwaway one: testcontainers when a
Docker engine answers, else the embedded ``pgserver`` (PostgreSQL 16) in a temporary directory.
Each test process (each pytest-xdist worker) migrates a template database once; ``database_url``
is a clone of it from a pool (emptied and reused after each test: ``pgjobs.testing``'s own),
a new clone for tests marked ``fresh_database``. Tests of pure code ask for no database at all.

Tests marked ``faults``, ``browser`` or ``slow`` are left out unless ``PGJOBS_TEST_ALL=1`` or
``CI=true``, ``-m`` picks tests by marker, or their file is named on the command line; under
``CI=true`` a skipped test fails.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs.testing import DatabasePool, migrated_template, server
from pgjobs.testing._databases import create_database, drop_database, unique_name
from tests import jobs_app
from tests.helpers import LEDGER_DDL, WorkerProcess, worker_launcher

OPT_IN_MARKERS = ("faults", "browser", "slow")
"""Markers of the tests a default run leaves out."""

RUN_ALL = "PGJOBS_TEST_ALL"
"""Environment variable that selects the :data:`OPT_IN_MARKERS` tests too (``1``)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def runs_everything(config: pytest.Config) -> bool:
    """Whether this run keeps the opt-in tests: asked for, in CI, or ``-m`` chose by marker."""
    return os.environ.get(RUN_ALL) == "1" or in_ci() or bool(config.option.markexpr)


def named_files(config: pytest.Config) -> set[Path]:
    """The test files named on the command line (by path or by a test's id in them)."""
    here = config.invocation_params.dir
    paths = (here / str(arg).partition("::")[0] for arg in config.args)
    return {path.resolve() for path in paths if path.is_file()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if runs_everything(config):
        return
    named = named_files(config)
    left_out = [
        item
        for item in items
        if any(item.get_closest_marker(m) for m in OPT_IN_MARKERS) and item.path not in named
    ]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        kept = set(items) - set(left_out)
        items[:] = [item for item in items if item in kept]


def pytest_report_header(config: pytest.Config) -> str:
    if config.option.markexpr:
        return "opt-in tests (faults, browser, slow): as -m selects"
    if runs_everything(config):
        return "opt-in tests (faults, browser, slow): selected"
    return (
        f"opt-in tests (faults, browser, slow): left out unless their file is named; "
        f"{RUN_ALL}=1 runs them all"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"
    return report


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    with server() as url:
        yield url


def _add_ledger(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LEDGER_DDL)


@pytest.fixture(scope="session")
def template_name(server_url: str) -> Iterator[str]:
    """A database migrated to the newest revision, with the ledger table: what tests clone."""
    with migrated_template(server_url, then=_add_ledger) as name:
        yield name


@pytest.fixture(scope="session")
def databases(server_url: str, template_name: str) -> Iterator[DatabasePool]:
    """Clones of the migrated template, reused from test to test."""
    pool = DatabasePool(server_url, template_name, "pgjobs_test")
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def empty_databases(server_url: str) -> Iterator[DatabasePool]:
    """Databases with no pgjobs tables at all, reused from test to test."""
    template = unique_name("pgjobs_empty_template")
    create_database(server_url, template)
    try:
        pool = DatabasePool(server_url, template, "pgjobs_empty")
        yield pool
        pool.close()
    finally:
        drop_database(server_url, template)


def _database_for(request: pytest.FixtureRequest, pool: DatabasePool) -> Iterator[str]:
    fresh = request.node.get_closest_marker("fresh_database") is not None
    with pool.fresh() if fresh else pool.lease() as name:
        yield pool.url(name)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, databases: DatabasePool) -> Iterator[str]:
    """A migrated database with the ledger table, this test's alone."""
    yield from _database_for(request, databases)


@pytest.fixture
def empty_database_url(
    request: pytest.FixtureRequest, empty_databases: DatabasePool
) -> Iterator[str]:
    """A database with no pgjobs tables at all, this test's alone."""
    yield from _database_for(request, empty_databases)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database, for assertions."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app(database_url: str) -> Iterator[pgjobs.App]:
    """The tests' job registry, pointed at this test's database."""
    jobs_app.app.configure(database_url=database_url)
    yield jobs_app.app
    jobs_app.app.close()
    jobs_app.close_ledger_connections()


@pytest.fixture
def worker_process(database_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``pgjobs worker`` subprocesses on this test's database; all are killed at the end."""
    with worker_launcher(tmp_path) as start:
        yield functools.partial(start, database_url)


@pytest.fixture
def pgjobs_database(database_url: str) -> str:
    """The pgjobs plugin's real-mode fixtures use this suite's pooled databases."""
    return database_url
