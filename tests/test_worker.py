"""The real ``pgjobs worker`` process: exactly-once claims, wake-up, schedules and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

import pgjobs
from pgjobs._acker import Acker, Claim
from pgjobs._execution import ClaimedJob
from pgjobs._link import Link
from pgjobs._outcome import COMPLETED
from tests import jobs_app
from tests.helpers import WorkerProcess, count, eventually, value

StartWorker = Callable[..., WorkerProcess]


def test_two_workers_run_each_of_10000_jobs_exactly_once(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    ids = app.enqueue_many(jobs_app.noop.call(str(i)) for i in range(10_000))
    workers = [worker_process("--burst", "--concurrency", "8") for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=240) == 0, worker.output()
    runs = db.execute(
        "SELECT count(*), count(DISTINCT job_id), count(DISTINCT pid) FROM ledger"
    ).fetchone()
    assert runs == (10_000, 10_000, 2), workers[0].output()[-3000:]
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == len(ids)
    span = db.execute("SELECT extract(epoch FROM max(at) - min(at)) FROM ledger").fetchone()
    print(f"two workers: 10,000 jobs in {float(span[0]):.2f} s")  # type: ignore[index]


def test_an_idle_worker_is_woken_by_the_commit_not_by_its_poll(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    """Each job starts within 10 s of its commit, on a worker that polls every 30 s: the commit's
    notification woke it. (How soon: ``pgjobs bench latency``.)"""
    worker = worker_process("--poll-interval", "30")
    worker.wait_for_log("listening on")
    for i in range(5):
        with psycopg.connect(database_url) as conn:
            job_id = jobs_app.noop.enqueue(f"wake-{i}", conn=conn)
            # taken just before COMMIT, so the measured wait can only be longer than the truth
            committed = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        started = eventually(
            lambda job_id=job_id: db.execute(
                "SELECT at FROM ledger WHERE job_id = %s", (job_id,)
            ).fetchone()
        )[0]
        assert (started - committed).total_seconds() < 10.0


def test_scheduled_jobs_start_on_time_never_early(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    """Jobs due in 2 s start at their time, not before, and not at the next poll (every 30 s):
    the worker wakes for the earliest due job."""
    worker = worker_process("--poll-interval", "30", "--concurrency", "20")
    worker.wait_for_log("listening on")
    app.enqueue_many(
        jobs_app.noop.options(delay=timedelta(seconds=2)).call(f"s{i}") for i in range(100)
    )
    eventually(lambda: count(db, "SELECT count(*) FROM ledger") == 100, timeout=20)
    early, late = db.execute(
        "SELECT count(*) FILTER (WHERE l.at < j.scheduled_at),"
        "       max(extract(epoch FROM l.at - j.scheduled_at))"
        "  FROM ledger l JOIN pgjobs.jobs j ON j.id = l.job_id"
    ).fetchone()  # type: ignore[misc]
    assert early == 0
    assert float(late) < 10.0


def test_sigterm_lets_running_jobs_finish_and_exits_0(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--concurrency", "4")
    worker.wait_for_log("listening on")
    jobs_app.sleepy.enqueue(1.0)
    jobs_app.async_sleepy.enqueue(1.0)
    eventually(lambda: count(db, "SELECT count(*) FROM ledger") == 2)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0, worker.output()
    assert count(db, "SELECT count(*) FROM ledger WHERE event = 'end'") == 2
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == 2


def test_jobs_over_the_shutdown_timeout_are_handed_back(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--concurrency", "4", "--shutdown-timeout", "1")
    worker.wait_for_log("listening on")
    sync_id = jobs_app.sleepy.enqueue(60.0)
    async_id = jobs_app.async_sleepy.enqueue(60.0)
    eventually(lambda: count(db, "SELECT count(*) FROM ledger") == 2)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0, worker.output()
    rows = db.execute(
        "SELECT id, state, attempt, worker_id FROM pgjobs.jobs ORDER BY id"
    ).fetchall()
    assert rows == [(sync_id, "available", 0, None), (async_id, "available", 0, None)]


def test_job_sees_stopping_and_second_signal_exits_at_once(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--shutdown-timeout", "60")
    worker.wait_for_log("listening on")
    jobs_app.until_stopping.enqueue()
    stuck_id = jobs_app.sleepy.enqueue(60.0)
    eventually(lambda: count(db, "SELECT count(*) FROM ledger") == 2)
    worker.signal(signal.SIGTERM)
    eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE event = 'saw-stopping'") == 1)
    worker.signal(signal.SIGINT)
    assert worker.wait(timeout=5) == 0, worker.output()
    assert db.execute(
        "SELECT state, worker_id FROM pgjobs.jobs WHERE id = %s", (stuck_id,)
    ).fetchone() == ("available", None)
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == 0


def test_late_acknowledgement_changes_nothing(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    zombie, rescuer = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"

    def claim(worker_id: str) -> Any:
        return db.execute(
            app._queries.claim_jobs, {"queues": ["default"], "limit": 1, "worker_id": worker_id}
        ).fetchone()

    zombie_claim = ClaimedJob._make(claim(zombie))
    db.execute("UPDATE pgjobs.jobs SET state = 'available', worker_id = NULL")  # rescued
    claim(rescuer)

    async def late_ack() -> int:
        link = Link(app.settings, "test-ack")
        acker = Acker(
            link, app._queries, zombie, on_retry=lambda delay: None, on_written=lambda: None
        )
        acker.start()
        acker.add(Claim(job_id, 1, 25, zombie_claim.claim_token), COMPLETED)
        await acker.stop()
        await link.close()
        return acker.stale_acks

    assert asyncio.run(late_ack()) == 1
    assert db.execute(
        "SELECT state, attempt, worker_id::text FROM pgjobs.jobs WHERE id = %s", (job_id,)
    ).fetchone() == ("running", 2, rescuer)


def test_a_slot_stays_taken_until_its_outcome_is_written(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    """A worker whose acknowledgements are stuck claims nothing more: its running rows never
    outnumber its slots, and a backlog of outcomes cannot grow into one huge write."""
    first = [jobs_app.waits_for_lock.options(priority=0).enqueue(7) for _ in range(2)]
    later = [jobs_app.noop.options(priority=1).enqueue(str(i)) for i in range(4)]
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(7)")
        worker = worker_process("--concurrency", "2")
        eventually(lambda: count(db, "SELECT count(*) FROM ledger") == 2)
        with psycopg.connect(database_url) as blocker:  # a transaction holding both rows
            blocker.execute("SELECT id FROM pgjobs.jobs WHERE id = ANY(%s) FOR UPDATE", (first,))
            holder.execute("SELECT pg_advisory_unlock(7)")
            eventually(  # the two outcomes are written, and wait on the rows' lock
                lambda: (
                    count(
                        db,
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name LIKE '%%:ack' AND wait_event_type = 'Lock'",
                    )
                    == 1
                )
            )
            # a wrong worker claims as its jobs end; a heartbeat begun later ran on its event
            # loop after that moment: wait for one rather than for a time
            since = value(db, "SELECT clock_timestamp()")
            eventually(lambda: value(db, "SELECT max(heartbeat_at) FROM pgjobs.workers") > since)
            states = db.execute(
                "SELECT state FROM pgjobs.jobs WHERE id = ANY(%s)", (later,)
            ).fetchall()
            assert states == [("available",)] * 4, worker.output()
        eventually(
            lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == 6
        )
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()


def test_worker_links_plan_every_statement_for_the_table_as_it_is(app: pgjobs.App) -> None:
    """A generic plan made while the jobs table was small would be kept as it grows (a claim
    planned as a scan of ten rows went on scanning 100,000). Behind a transaction pooler, where
    statements are not prepared, the link sends no SET that would reach other clients."""

    async def plan_cache_mode(settings: pgjobs.Settings) -> str:
        link = Link(settings, "test-link")
        try:
            rows = await link.fetch("SELECT current_setting('plan_cache_mode')", {})
        finally:
            await link.close()
        return str(rows[0][0])

    assert asyncio.run(plan_cache_mode(app.settings)) == "force_custom_plan"
    pooled = dataclasses.replace(app.settings, prepared_statements=False)
    assert asyncio.run(plan_cache_mode(pooled)) == "auto"
