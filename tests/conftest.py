"""Real PostgreSQL for every test, cloned per test from a migrated template database.

The server is ``PGJOBS_TEST_DSN`` when set; otherwise a throwaway one: testcontainers when a
Docker engine answers, else the embedded ``pgserver`` (PostgreSQL 16) in a temporary directory.
"""

from __future__ import annotations

import functools
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import pgjobs
from tests import jobs_app
from tests.helpers import LEDGER_DDL, WorkerProcess, worker_launcher


def _docker_answers() -> bool:
    """Whether a Docker engine answers, for testcontainers."""
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    import docker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=2)
        except Exception:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    if os.environ.get("PGJOBS_TEST_DSN"):
        yield os.environ["PGJOBS_TEST_DSN"]
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
    else:
        import pgserver

        with tempfile.TemporaryDirectory(prefix="pgjobs-test-") as directory:
            server = pgserver.get_server(directory, cleanup_mode="delete")
            yield server.get_uri()
            server.cleanup()


def database_url_for(server_url: str, dbname: str) -> str:
    """``server_url`` (a postgresql:// URL) pointed at database ``dbname``."""
    parts = urlsplit(server_url)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"PGJOBS_TEST_DSN must be a postgresql:// URL, not {server_url!r}")
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def template_name(server_url: str) -> Iterator[str]:
    name = f"pgjobs_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url_for(server_url, name)
    pgjobs.migrate(pgjobs.load_settings({"database_url": url}))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LEDGER_DDL)
    yield name
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(server_url: str, template_name: str) -> Iterator[str]:
    name = f"pgjobs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    yield database_url_for(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A database with no pgjobs tables at all."""
    name = f"pgjobs_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url_for(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
