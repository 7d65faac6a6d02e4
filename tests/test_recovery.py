"""Lost workers: rescue by session lock and by lease, the supervisor, poison pills, fencing."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg

import pgjobs
from tests import jobs_app
from tests.helpers import WorkerProcess, eventually, invoke, rows, value

StartWorker = Callable[..., WorkerProcess]


def overlapping_runs(db: psycopg.Connection[Any]) -> int:
    """Pairs of attempts of one job whose runs overlapped in time, by the ledger.

    A run with no ``end`` row was killed; it counts as ending when it started, so tests check
    separately that its next attempt came after the kill.
    """
    return int(
        value(
            db,
            """
            WITH runs AS (
                SELECT s.job_id, s.attempt, s.at AS started,
                       coalesce(e.at, s.at) AS ended
                FROM ledger s
                LEFT JOIN ledger e ON e.job_id = s.job_id AND e.attempt = s.attempt
                                  AND e.event = 'end'
                WHERE s.event = 'start'
            )
            SELECT count(*) FROM runs a JOIN runs b
              ON a.job_id = b.job_id AND a.attempt < b.attempt AND b.started < a.ended
            """,
        )
    )


def test_a_sigkilled_workers_jobs_run_again_within_5_seconds(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    doomed = worker_process("--concurrency", "10")
    doomed.wait_for_log("listening on")
    ids = app.enqueue_many(jobs_app.sleepy.call(30, "long") for _ in range(10))
    eventually(lambda: value(db, "SELECT count(*) FROM ledger") == 10)
    survivor = worker_process("--concurrency", "10", "--poll-interval", "5")
    survivor.wait_for_log("listening on")

    killed_at = value(db, "SELECT clock_timestamp()")
    doomed.process.send_signal(signal.SIGKILL)
    doomed.wait()

    eventually(lambda: value(db, "SELECT count(*) FROM ledger WHERE attempt = 2") == 10)
    restarted = rows(db, "SELECT job_id, at FROM ledger WHERE attempt = 2 ORDER BY at")
    delays = [(at - killed_at).total_seconds() for _, at in restarted]
    print(f"SIGKILL -> running again: {min(delays):.2f}-{max(delays):.2f} s")
    assert min(delays) > 0 and max(delays) <= 5.0, delays
    assert sorted(job_id for job_id, _ in restarted) == sorted(ids)
    errors = value(
        db, "SELECT array_agg(errors -> 0 ->> 'message') FROM pgjobs.jobs WHERE id = %s", ids[0]
    )
    assert "was lost while running this job: its database session ended" in errors[0]
    assert value(db, "SELECT count(*) FROM pgjobs.workers") == 1  # the dead one is forgotten
    assert overlapping_runs(db) == 0


def test_a_stalled_worker_is_rescued_when_its_lease_expires_and_its_late_writes_change_nothing(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    timing = ("--heartbeat-interval", "0.5", "--lease-timeout", "3")
    zombie = worker_process("--concurrency", "5", *timing)
    zombie.wait_for_log("listening on")
    ids = app.enqueue_many(jobs_app.sleepy.call(4, "z") for _ in range(5))
    eventually(lambda: value(db, "SELECT count(*) FROM ledger") == 5)
    zombie.process.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        rescuer = worker_process("--concurrency", "5", *timing)
        eventually(lambda: value(db, "SELECT count(*) FROM ledger WHERE attempt = 2") == 5, 15)
        print(f"SIGSTOP -> running again: {time.monotonic() - stopped_at:.1f} s (lease 3 s)")
        # never before the lease expired: 3 s from its last beat, at most a beat before the stop
        assert time.monotonic() - stopped_at >= 3.0 - 0.5
    finally:
        zombie.process.send_signal(signal.SIGCONT)

    zombie.wait_for_log("acknowledgement changed nothing", timeout=20)
    eventually(
        lambda: value(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == 5, 15
    )
    final = rows(db, "SELECT attempt FROM pgjobs.jobs WHERE id = ANY(%s)", ids)
    assert final == [(2,)] * 5
    eventually(lambda: zombie.output().count("acknowledgement changed nothing") == 5, 10)
    zombie.wait_for_log("presumed lost", timeout=10)
    assert rescuer.process.poll() is None


def test_supervisor_restarts_a_dead_child_and_a_job_that_kills_its_worker_ends_discarded(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    supervisor = worker_process("--processes", "2", "--concurrency", "2")
    eventually(lambda: value(db, "SELECT count(*) FROM pgjobs.workers") == 2, 20)
    poison = jobs_app.kills_its_worker.enqueue()
    normal = app.enqueue_many(jobs_app.noop.call("n") for _ in range(50))

    def ended() -> bool:
        return bool(value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", poison) == "discarded")

    eventually(ended, timeout=30)
    starts = rows(db, "SELECT attempt FROM ledger WHERE job_id = %s ORDER BY attempt", poison)
    assert starts == [(1,), (2,), (3,)]  # max_attempts, never more
    last_error = value(
        db, "SELECT errors -> -1 ->> 'message' FROM pgjobs.jobs WHERE id = %s", poison
    )
    # the supervisor's account, or the sweep's when the leader found the dead session first
    assert last_error.endswith(("its process was killed by SIGKILL", "its database session ended"))
    eventually(
        lambda: (
            value(
                db,
                "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND state = 'completed'",
                normal,
            )
            == 50
        )
    )
    # the supervisor itself never died, and it keeps two workers
    assert supervisor.process.poll() is None
    eventually(lambda: value(db, "SELECT count(*) FROM pgjobs.workers") == 2, 20)
    assert supervisor.output().count("was killed by SIGKILL") == 3

    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0, supervisor.output()
    assert value(db, "SELECT count(*) FROM pgjobs.workers") == 0


def test_when_the_leader_dies_another_worker_leads_and_sweeps_within_seconds(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    leader = worker_process("--concurrency", "4")
    leader.wait_for_log("became the leader")
    job_id = jobs_app.sleepy.enqueue(30, "l")
    eventually(lambda: rows(db, "SELECT pid FROM ledger") == [(leader.process.pid,)])
    follower = worker_process("--concurrency", "4")
    follower.wait_for_log("listening on")
    listed = invoke(database_url, "workers", "--json")
    assert listed.returncode == 0, listed.stderr
    workers = {w["pid"]: w for w in map(json.loads, listed.stdout.splitlines())}
    assert workers.keys() == {leader.process.pid, follower.process.pid}
    assert workers[leader.process.pid]["leader"] and not workers[follower.process.pid]["leader"]
    assert workers[leader.process.pid]["running"] == 1

    leader.process.send_signal(signal.SIGKILL)
    leader.wait()
    follower.wait_for_log("became the leader", timeout=5)
    eventually(lambda: rows(db, "SELECT attempt, pid FROM ledger WHERE attempt = 2"), timeout=5)
    assert rows(db, "SELECT attempt, pid FROM ledger WHERE job_id = %s ORDER BY at", job_id) == [
        (1, leader.process.pid),
        (2, follower.process.pid),
    ]
    follower_id = value(db, "SELECT id::text FROM pgjobs.workers")
    assert (
        value(db, "SELECT worker_id::text FROM pgjobs.leases WHERE name = 'leader'") == follower_id
    )


def test_the_leader_prunes_finished_jobs_past_their_retention_and_keeps_the_rest(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    done = app.enqueue_many(jobs_app.noop.call("old") for _ in range(2500))
    dead = jobs_app.always_fails.enqueue()
    cancelled = jobs_app.noop.enqueue_in(3600, "never")
    waiting = jobs_app.noop.enqueue_in(3600, "later")
    app.cancel(cancelled)
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'completed', finished_at = now() - interval '2 hours'"
        " WHERE id = ANY(%s)",
        (done[:2400],),
    )
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'discarded', finished_at = now() - interval '2 hours'"
        " WHERE id = %s",
        (dead,),
    )
    db.execute(
        "UPDATE pgjobs.jobs SET finished_at = now() - interval '30 minutes' WHERE id = %s",
        (cancelled,),
    )
    env = {
        "PGJOBS_RETAIN_COMPLETED": "1h",
        "PGJOBS_RETAIN_DISCARDED": "3h",
        "PGJOBS_RETAIN_CANCELLED": "10m",
        "PGJOBS_QUEUES": "nothing-here",
    }
    worker = worker_process(env=env)
    worker.wait_for_log("pruned 2401 finished job(s)")
    remaining = {row[0] for row in db.execute("SELECT id FROM pgjobs.jobs")}
    assert remaining == {*done[2400:], dead, waiting}


def test_claims_whose_answer_was_lost_are_handed_back(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """A claim can commit while its connection dies before the answer arrives; the worker then
    holds rows it never heard of. After a claim retried on a new connection it hands them back."""

    async def scenario() -> list[int]:
        worker = pgjobs.Worker(app)
        # what a lost answer leaves behind: rows claimed under this worker, unknown to it
        await worker._claim.fetch(
            app._queries.claim_jobs, {"queues": ["default"], "limit": 3, "worker_id": worker.id}
        )
        # and the claim connection breaks, so the next claim runs on a new one
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (worker._application_name("claim"),),
        )
        try:
            claimed = await worker._producer.claim(0)
        finally:
            await worker._claim.close()
        return [job.id for job in claimed]

    ids = app.enqueue_many(jobs_app.noop.call("lost") for _ in range(3))
    assert asyncio.run(scenario()) == []
    assert (
        db.execute(
            "SELECT state, attempt, worker_id FROM pgjobs.jobs WHERE id = ANY(%s)", (ids,)
        ).fetchall()
        == [("available", 0, None)] * 3
    )
