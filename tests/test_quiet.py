"""Quiet mode: SIGTSTP (``systemctl reload`` in the documented unit) stops claiming, lets the
running jobs end and keeps the worker up, heartbeat and all, until SIGTERM stops it as usual.

Before, SIGTSTP's default action froze the process (state ``T``): its jobs stopped mid-way and
its heartbeat with them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

import pgjobs
from tests import jobs_app
from tests.helpers import WorkerProcess, count, eventually, process_state, rows, value

StartWorker = Callable[..., WorkerProcess]

HEARTBEAT = 0.3
POLL = 0.2
TIMINGS = (
    *("--heartbeat-interval", str(HEARTBEAT)),
    *("--lease-timeout", "3"),
    *("--poll-interval", str(POLL)),
)
QUIET_LOGGED = "quiet: no new jobs"
LOCK_KEY = 91_412


def assert_not_stopped(pids: list[int]) -> None:
    states = {pid: process_state(pid) for pid in pids}
    assert all(state in ("R", "S", "D") for state in states.values()), states


def quiet_lines(worker: WorkerProcess) -> int:
    return worker.output().count(QUIET_LOGGED)


def heartbeats_after(db: psycopg.Connection[Any], moment: datetime, workers: int) -> bool:
    """Whether each of ``workers`` live workers has beaten twice since ``moment`` at least."""
    fresh = count(
        db,
        "SELECT count(*) FROM pgjobs.workers WHERE heartbeat_at >= %s + %s * interval '1 s'",
        moment,
        2 * HEARTBEAT,
    )
    return fresh == workers


def check_quiet(
    db: psycopg.Connection[Any],
    database_url: str,
    signalled: WorkerProcess,
    workers: Callable[[], list[int]],
    *,
    quieted: int,
    before_stop: Callable[[], None] = lambda: None,
) -> None:
    """While a job runs, SIGTSTP ``signalled``: the job ends, new jobs stay ``available`` through
    the job's end, its written outcome and two heartbeats (six poll intervals) of ``workers()``,
    which stay alive and unstopped; then SIGTERM exits 0."""
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        running = jobs_app.waits_for_lock.enqueue(LOCK_KEY)
        eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE job_id = %s", running))

        signalled.signal(signal.SIGTSTP)
        eventually(lambda: quiet_lines(signalled) == quieted, 15)
        waiting = jobs_app.app.enqueue_many(
            jobs_app.noop.call(f"after quiet {i}") for i in range(3)
        )
        assert_not_stopped([signalled.process.pid, *workers()])
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

    eventually(
        lambda: value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", running) == "completed",
        15,
    )
    completed: datetime = value(db, "SELECT clock_timestamp()")
    eventually(lambda: heartbeats_after(db, completed, len(workers())), 15)

    states = rows(db, "SELECT state, worker_id FROM pgjobs.jobs WHERE id = ANY(%s)", waiting)
    assert states == [("available", None)] * len(waiting)
    assert count(db, "SELECT count(*) FROM ledger WHERE label LIKE 'after quiet%%'") == 0
    assert_not_stopped([signalled.process.pid, *workers()])
    assert quiet_lines(signalled) == quieted  # once per process, whatever else happened

    before_stop()
    signalled.signal(signal.SIGTERM)
    assert signalled.wait(30) == 0, signalled.output()


def test_sigtstp_quiets_a_worker_that_finishes_its_job_and_stops_on_sigterm(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--concurrency", "2", *TIMINGS)
    worker.wait_for_log("listening on")

    check_quiet(db, database_url, worker, lambda: [worker.process.pid], quieted=1)


def test_sigtstp_to_the_supervisor_quiets_every_child_and_not_itself(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    supervisor = worker_process("--processes", "2", "--concurrency", "2", *TIMINGS)
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.workers") == 2, 30)

    def kill_a_child() -> None:
        """A quiet supervisor replaces no child: a new one would claim nothing."""
        killed, survivor = supervisor.children()
        os.kill(killed, signal.SIGKILL)
        supervisor.wait_for_log("not replacing worker process")
        assert supervisor.children() == [survivor]
        assert "restarting worker process" not in supervisor.output()

    check_quiet(
        db, database_url, supervisor, supervisor.children, quieted=2, before_stop=kill_a_child
    )
    assert "supervisor: SIGTSTP" in supervisor.output()


def test_sigtstp_while_the_children_start_waits_for_them_instead_of_stopping_them(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    """The children are still importing pgjobs when the supervisor passes SIGTSTP on: its
    default action would stop them; they must take it once they can, and go quiet."""
    supervisor = worker_process("--processes", "2", *TIMINGS)
    supervisor.wait_for_log("supervisor")
    supervisor.signal(signal.SIGTSTP)
    eventually(lambda: quiet_lines(supervisor) == 2, 30)
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.workers") == 2, 30)
    assert_not_stopped([supervisor.process.pid, *supervisor.children()])
    job_id = jobs_app.noop.enqueue("after quiet")
    registered: datetime = value(db, "SELECT clock_timestamp()")
    eventually(lambda: heartbeats_after(db, registered, 2), 15)

    assert value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id) == "available"
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0, supervisor.output()
