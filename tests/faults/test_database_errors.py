"""A read-only database (at start and mid-run) and a database stopped during a worker's final
acknowledgements. Each test owns a PostgreSQL cluster (see conftest.py).

A worker rides these out with back-off and a log line, and stops on SIGTERM within its shutdown
timeout in every state. Times from SIGTERM to exit are printed for the release notes
(``pytest -s``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests import jobs_app
from tests.faults.cluster import Cluster
from tests.helpers import STOP_TIMEOUT, WorkerProcess, eventually, stop_and_time

pytestmark = pytest.mark.faults

StartWorker = Callable[..., WorkerProcess]

"""Seconds past the shutdown timeout a worker may take to exit (interpreter teardown, a loaded
machine)."""
FLAGS = ("--shutdown-timeout", f"{STOP_TIMEOUT:g}s", "--poll-interval", "0.5")


def claim_refusals(worker: WorkerProcess) -> int:
    """Log lines of the claim link refused by a read-only server."""
    return sum(
        ":claim: cannot execute" in line and "read-only transaction; retrying with back-off" in line
        for line in worker.output().splitlines()
    )


def fetch_one(url: str, query: str, *params: Any) -> tuple[Any, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row


def set_read_only(cluster: Cluster, read_only: bool) -> None:
    """Make every session of the server read-only (as a hot standby is), or writable again."""
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        if read_only:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")
    with psycopg.connect(cluster.url, autocommit=True) as conn:  # a new session sees the reload
        eventually(
            lambda: (
                conn.execute("SHOW default_transaction_read_only").fetchone()
                == ("on" if read_only else "off",)
            )
        )


def completed(url: str, ids: list[int]) -> bool:
    query = "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND state = 'completed'"
    return fetch_one(url, query, ids) == (len(ids),)


def test_worker_started_on_a_read_only_database_stops_on_sigterm_before_registering(
    cluster: Cluster, jobs_url: str, start_worker: StartWorker
) -> None:
    set_read_only(cluster, True)
    worker = start_worker(jobs_url, *FLAGS)
    worker.wait_for_log("read-only transaction")

    output = stop_and_time(worker, "read-only database, before registering")
    assert "Traceback" not in output
    assert fetch_one(jobs_url, "SELECT count(*) FROM pgjobs.workers") == (0,)


def test_worker_rides_out_a_database_turned_read_only_and_stops_on_sigterm_meanwhile(
    cluster: Cluster, jobs_url: str, start_worker: StartWorker
) -> None:
    worker = start_worker(jobs_url, *FLAGS)
    worker.wait_for_log("listening on")

    set_read_only(cluster, True)
    eventually(lambda: claim_refusals(worker) == 1, timeout=20)
    set_read_only(cluster, False)
    ids = jobs_app.app.enqueue_many([jobs_app.nap.call(0) for _ in range(3)])
    eventually(lambda: completed(jobs_url, ids), timeout=20)
    assert worker.process.poll() is None
    assert worker.output().count(":claim: the database answers again") == 1

    set_read_only(cluster, True)
    eventually(lambda: claim_refusals(worker) == 2, timeout=20)
    output = stop_and_time(worker, "read-only database, mid-run")
    assert claim_refusals(worker) == 2  # once each time it turned read-only: no flood
    assert "Traceback" not in output


def test_worker_whose_database_stops_during_its_final_acknowledgements_exits_in_time(
    cluster: Cluster, jobs_url: str, start_worker: StartWorker
) -> None:
    """The jobs end after the database went away: their outcomes cannot be written. The worker
    gives up at its shutdown timeout and says so; the jobs stay ``running`` under it, for the
    rescue sweep to hand back."""
    worker = start_worker(jobs_url, *FLAGS, "--concurrency", "2")
    worker.wait_for_log("listening on")
    ids = jobs_app.app.enqueue_many([jobs_app.nap.call(2.0) for _ in range(2)])
    running = "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND state = 'running'"
    eventually(lambda: fetch_one(jobs_url, running, ids) == (2,))

    output = stop_and_time(
        worker, "database stopped during the final acknowledgements", lambda: cluster.stop("fast")
    )
    assert "could not write 2 job outcome(s) before the shutdown timeout" in output, output
    assert "Traceback" not in output

    cluster.start()
    assert fetch_one(jobs_url, running, ids) == (2,)
