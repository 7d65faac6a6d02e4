"""Database errors other than a lost connection, on the shared server: a tiny statement_timeout
set on the database, a lock held on the jobs table; and a stop with a job's leaked thread.

Times from SIGTERM to exit are printed for the release notes (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import psycopg.sql
import pytest

import pgjobs
from pgjobs._connection import LOCK_TIMEOUT
from tests import jobs_app
from tests.helpers import (
    PGJOBS,
    ROOT,
    STOP_TIMEOUT,
    WorkerProcess,
    count,
    environment,
    eventually,
    stop_and_time,
)

"""Seconds past the shutdown timeout a worker may take to exit (interpreter teardown, a loaded
machine)."""
BLOCKER = "pgjobs-test-blocker"


def completed(db: psycopg.Connection[Any], job_id: int) -> bool:
    query = "SELECT count(*) FROM pgjobs.jobs WHERE id = %s AND state = 'completed'"
    return count(db, query, job_id) == 1


@pytest.mark.fresh_database
def test_jobs_complete_and_sigterm_works_under_a_1ms_statement_timeout_on_the_database(
    database_url: str, db: psycopg.Connection[Any], app: pgjobs.App, worker_process: Any
) -> None:
    """A database whose default statement_timeout is 1 ms cancels nearly every statement; pgjobs'
    own connections set their own, so claims, acknowledgements and enqueues still work."""
    dbname = db.info.dbname
    db.execute(f"ALTER DATABASE \"{dbname}\" SET statement_timeout = '1ms'")
    with psycopg.connect(database_url, autocommit=True) as probe:
        assert probe.execute("SHOW statement_timeout").fetchone() == ("1ms",)
    worker = worker_process("--shutdown-timeout", f"{STOP_TIMEOUT:g}s")
    worker.wait_for_log("listening on")

    # on the test's connection, opened before the ALTER: the worker alone meets the 1 ms
    ids = app.enqueue_many([jobs_app.nap.call(0) for _ in range(20)], conn=db)  # no ledger writes

    eventually(lambda: all(completed(db, job_id) for job_id in ids), timeout=20)
    job_id = jobs_app.nap.enqueue(0)  # and on pgjobs' own pool
    eventually(lambda: completed(db, job_id), timeout=20)
    assert worker.process.poll() is None
    stop_and_time(worker, "statement_timeout = 1ms on the database")


def test_a_stopping_worker_exits_although_a_job_left_a_non_daemon_thread_running(
    database_url: str, db: psycopg.Connection[Any], app: pgjobs.App, worker_process: Any
) -> None:
    """The interpreter waits for non-daemon threads at exit; a job's leaked one must not keep
    the worker from exiting."""
    worker = worker_process("--shutdown-timeout", f"{STOP_TIMEOUT:g}s")
    worker.wait_for_log("listening on")
    job_id = jobs_app.leaks_a_thread.enqueue()
    eventually(lambda: completed(db, job_id))
    stop_and_time(worker, "a job's leaked non-daemon thread")
    assert "worker" in worker.output() and "stopped" in worker.output()


@pytest.fixture
def locked_jobs_table(database_url: str) -> Iterator[int]:
    """A second session holding ``LOCK TABLE pgjobs.jobs`` in an open transaction; its pid.

    Let go after 60 s whatever happens, so that a call that waits for it cannot hang the suite.
    """
    conn = psycopg.connect(database_url, application_name=BLOCKER)
    conn.execute("LOCK TABLE pgjobs.jobs")
    released = threading.Timer(60, conn.rollback)
    released.start()
    try:
        yield conn.info.backend_pid
    finally:
        released.cancel()
        conn.rollback()
        conn.close()


def assert_names_the_blocker(message: str, pid: int) -> None:
    assert f"waited {LOCK_TIMEOUT:g} s for a lock on the jobs table" in message, message
    assert f"pid {pid} ({BLOCKER}, AccessExclusiveLock" in message, message
    assert "LOCK TABLE pgjobs.jobs" in message, message


def test_enqueue_behind_a_held_table_lock_fails_within_the_lock_timeout_naming_the_holder(
    app: pgjobs.App, db: psycopg.Connection[Any], locked_jobs_table: int
) -> None:
    began = time.monotonic()
    with pytest.raises(pgjobs.DatabaseError) as raised:
        jobs_app.noop.enqueue("blocked")
    elapsed = time.monotonic() - began

    print(f"enqueue behind LOCK TABLE: DatabaseError after {elapsed:.2f} s")
    assert LOCK_TIMEOUT - 0.5 <= elapsed <= LOCK_TIMEOUT + 5
    assert_names_the_blocker(str(raised.value), locked_jobs_table)
    assert "Nothing was written" in str(raised.value)


@pytest.mark.parametrize("command", [["stats"], ["enqueue", "noop"], ["cancel", "1"]])
def test_cli_behind_a_held_table_lock_exits_1_naming_the_holder_without_a_traceback(
    database_url: str, locked_jobs_table: int, command: list[str]
) -> None:
    began = time.monotonic()
    result = subprocess.run(
        [PGJOBS, "--app", "tests.jobs_app:app", *command],
        cwd=ROOT,
        env=environment(database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - began

    print(
        f"pgjobs {' '.join(command)} behind LOCK TABLE: exit {result.returncode} after "
        f"{elapsed:.2f} s"
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: "), result.stderr
    assert_names_the_blocker(result.stderr, locked_jobs_table)
    assert elapsed <= LOCK_TIMEOUT + 10


def claim_lock_wait_began(db: psycopg.Connection[Any]) -> datetime | None:
    """When the worker's claim statement began, if it is waiting for a lock now."""
    row = db.execute(
        "SELECT query_start FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND application_name LIKE 'pgjobs-worker:%:claim'"
    ).fetchone()
    return None if row is None else row[0]


def test_worker_behind_a_held_table_lock_logs_the_holder_once_and_claims_after_it_is_gone(
    database_url: str,
    db: psycopg.Connection[Any],
    app: pgjobs.App,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    worker = worker_process("--poll-interval", "0.2")
    worker.wait_for_log("listening on")
    blocker = psycopg.connect(database_url, application_name=BLOCKER)
    try:
        blocker.execute("LOCK TABLE pgjobs.jobs")
        worker.wait_for_log("lock timeout", timeout=LOCK_TIMEOUT + 15)
        waits: list[datetime] = []

        def another_wait() -> bool:
            began = claim_lock_wait_began(db)
            if began is None or began in waits:
                return False
            waits.append(began)
            return True

        for _ in range(3):  # the logged claim's wait, then two more that time out unlogged
            eventually(another_wait, timeout=LOCK_TIMEOUT + 15)
        blocker.rollback()
    finally:
        blocker.close()
    job_id = jobs_app.nap.enqueue(0)
    eventually(lambda: completed(db, job_id), timeout=20)
    output = worker.output()
    assert f"({BLOCKER}, AccessExclusiveLock" in output, output
    assert output.count(":claim: canceling statement due to lock timeout") == 1, output
    assert "the database answers again" in output
    assert worker.process.poll() is None


@pytest.mark.fresh_database
def test_a_read_only_database_refuses_an_enqueue_with_a_pgjobs_error(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    """As on a standby, or with default_transaction_read_only on: on pgjobs' own pool and on the
    caller's connection, sync and async, in Python and in the CLI."""
    done = jobs_app.noop.enqueue("before")
    app.close()
    db.execute(
        psycopg.sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
            psycopg.sql.Identifier(db.info.dbname)
        )
    )  # connections made from now on are read-only

    def refused(raised: pytest.ExceptionInfo[pgjobs.DatabaseError]) -> None:
        message = str(raised.value)
        reason = "cannot execute INSERT in a read-only transaction"
        assert message.startswith(f"the database refused to write: {reason}; nothing was"), message
        assert isinstance(raised.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)

    with pytest.raises(pgjobs.DatabaseError) as raised:
        jobs_app.noop.enqueue("own pool")
    refused(raised)

    async def enqueue_async() -> None:
        try:
            await jobs_app.noop.enqueue_async("own async pool")
        finally:
            await app.aclose()

    with pytest.raises(pgjobs.DatabaseError) as raised:
        asyncio.run(enqueue_async())
    refused(raised)
    with psycopg.connect(database_url) as conn, pytest.raises(pgjobs.DatabaseError) as raised:
        jobs_app.noop.using(conn).enqueue("caller's transaction")
    refused(raised)
    with pytest.raises(pgjobs.DatabaseError, match=r"refused to write: .* read-only"):
        app.retry(done)

    result = subprocess.run(
        [PGJOBS, "--app", "tests.jobs_app:app", "enqueue", "noop"],
        cwd=ROOT,
        env=environment(database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result
    assert result.stderr.startswith("Error: the database refused to write: "), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 1
