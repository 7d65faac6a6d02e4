"""Fixtures for fault tests: a PostgreSQL cluster per test, a fault proxy or pgbouncer before it.

These never touch the suite's shared server; each test gets a server it may crash or restart.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

import pgjobs
from tests import jobs_app
from tests.faults.cluster import Cluster, init_template, owned_tempdir
from tests.faults.pgbouncer import PgBouncer
from tests.faults.proxy import FaultProxy
from tests.helpers import LEDGER_DDL, WorkerProcess, worker_launcher


@pytest.fixture(scope="session")
def cluster_template() -> Iterator[Path]:
    """An initdb'd data directory, copied for each ``cluster`` (initdb runs once a session)."""
    directory = owned_tempdir("pgjobs-cluster-template-")
    try:
        yield init_template(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cluster(cluster_template: Path) -> Iterator[Cluster]:
    """A started PostgreSQL 15 server of this test's own; crash-stopped and deleted afterwards."""
    server = Cluster(cluster_template)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def pgbouncer(cluster: Cluster) -> Iterator[PgBouncer]:
    """pgbouncer in transaction pooling mode in front of ``cluster``."""
    bouncer = PgBouncer("127.0.0.1", cluster.port, pool_mode="transaction")
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def fault_proxy(cluster: Cluster) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of ``cluster``; ``fault_proxy.url_for(cluster.url)``."""
    proxy = FaultProxy("127.0.0.1", cluster.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def jobs_url(cluster: Cluster) -> Iterator[str]:
    """A migrated database on ``cluster`` with the ledger table; the tests' app points at it."""
    cluster.create_database("jobs")
    url = cluster.url_for("jobs")
    pgjobs.migrate(pgjobs.load_settings({"database_url": url}))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LEDGER_DDL)
    jobs_app.app.configure(database_url=url)
    yield url
    jobs_app.app.close()
    jobs_app.close_ledger_connections()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(url, *args)``: a ``pgjobs worker`` for the tests' app on ``url``."""
    with worker_launcher(tmp_path) as start:
        yield start
