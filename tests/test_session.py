"""The worker's session: a cancellation notification only wakes the worker to look at the table,
and the lease stays alive while a job blocks the event loop."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgjobs
from tests import jobs_app
from tests.helpers import WorkerProcess, eventually, rows, value

StartWorker = Callable[..., WorkerProcess]


def state(db: psycopg.Connection[Any], job_id: int) -> str:
    return str(value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id))


def ledger(db: psycopg.Connection[Any], job_id: int) -> list[tuple[int, int, str]]:
    return [
        (attempt, pid, event)
        for attempt, pid, event in db.execute(
            "SELECT attempt, pid, event FROM ledger WHERE job_id = %s ORDER BY at", (job_id,)
        )
    ]


def heartbeat_of(db: psycopg.Connection[Any], worker: WorkerProcess) -> Any:
    return value(db, "SELECT heartbeat_at FROM pgjobs.workers WHERE pid = %s", worker.process.pid)


@pytest.fixture
def stranger(database_url: str, db: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A connection of a role that may log in and nothing more."""
    role = f"stranger_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with psycopg.connect(database_url, user=role, autocommit=True) as conn:
            yield conn
    finally:
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_strangers_cancel_notification_cancels_nothing_and_a_real_cancel_is_prompt(
    app: pgjobs.App,
    db: psycopg.Connection[Any],
    stranger: psycopg.Connection[Any],
    worker_process: StartWorker,
) -> None:
    """A cancellation reaches a worker by its notification or by its heartbeat; with a beat
    only every 60 s, the heartbeat cannot be what brings it here. The notifications of the
    stranger, then of a real cancel, are handled in order: once the real one has cancelled its
    job, the worker had looked at the table for the stranger's too."""
    worker = worker_process("--heartbeat-interval", "60", "--lease-timeout", "300")
    worker.wait_for_log("listening on")
    key = int(uuid.uuid4().int % 2**31)
    value(db, "SELECT pg_advisory_lock(%s)", key)
    victim = jobs_app.waits_for_lock.enqueue(key)  # completes once the test lets the lock go
    target = jobs_app.until_cancelled.enqueue()  # ends only when it sees a cancellation
    sentinel = jobs_app.until_cancelled.enqueue()
    eventually(lambda: len(ledger(db, victim)) == len(ledger(db, target)) == 1)
    eventually(lambda: len(ledger(db, sentinel)) == 1)
    beat = heartbeat_of(db, worker)

    channel = app._queries.cancel_channel
    assert channel == "pgjobs.cancel"
    for job_id in (victim, target):
        stranger.execute(
            sql.SQL("NOTIFY {}, {}").format(sql.Identifier(channel), sql.Literal(str(job_id)))
        )
    assert value(db, "SELECT pgjobs.cancel_job(%s)", sentinel) == "cancelling"
    eventually(lambda: state(db, sentinel) == "cancelled")
    assert (state(db, victim), state(db, target)) == ("running", "running")
    assert ledger(db, target) == [(1, worker.process.pid, "start")]
    assert worker.output().count("cancellation requested") == 1

    value(db, "SELECT pg_advisory_unlock(%s)", key)
    eventually(lambda: state(db, victim) == "completed")

    assert value(db, "SELECT pgjobs.cancel_job(%s)", target) == "cancelling"
    eventually(lambda: state(db, target) == "cancelled")
    assert ledger(db, target) == [
        (1, worker.process.pid, "start"),
        (1, worker.process.pid, "saw-cancel"),
    ]
    assert worker.output().count("cancellation requested") == 2
    assert heartbeat_of(db, worker) == beat  # the notifications did it all


@pytest.mark.slow
def test_a_job_that_blocks_the_event_loop_past_the_lease_runs_once_and_is_logged(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    timing = ("--heartbeat-interval", "1s", "--lease-timeout", "6s")
    blocked = worker_process(*timing)
    blocked.wait_for_log("became the leader")
    job_id = jobs_app.blocks_the_loop.enqueue(18.0)  # three leases
    eventually(lambda: ledger(db, job_id) == [(1, blocked.process.pid, "start")])
    other = worker_process(*timing)
    other.wait_for_log("listening on")

    eventually(lambda: state(db, job_id) == "completed", timeout=60)
    assert ledger(db, job_id) == [
        (1, blocked.process.pid, "start"),
        (1, blocked.process.pid, "end"),
    ]
    assert value(db, "SELECT attempt FROM pgjobs.jobs WHERE id = %s", job_id) == 1
    assert rows(db, "SELECT pid FROM pgjobs.workers ORDER BY pid") == sorted(
        [(blocked.process.pid,), (other.process.pid,)]
    )
    assert "swept" not in other.output()
    assert "presumed lost" not in blocked.output()
    blocked.wait_for_log("the event loop answers again after")
    log = blocked.output()
    assert log.count(f"(a job is blocking it: job {job_id} at ") == 1, log  # once per stall
    assert "in blocks_the_loop" in log
    match = re.search(r"the event loop answers again after ([0-9.]+) s", log)
    assert match is not None
    assert 17.0 <= float(match[1]) < 25.0, log  # the stall, less at most one ping interval
