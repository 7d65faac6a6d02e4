"""Outcome writes: fenced on the claim's token, adopted by a re-claim of their job, and one
refused row never holds up the others.

The acker (and for a re-claim the worker's claim path) runs here in-process against the test
database, on jobs claimed by the claim statement itself; no worker process is involved.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._acker import Acker, Claim, fallback_outcome, finish_params
from pgjobs._execution import ClaimedJob
from pgjobs._link import Link
from pgjobs._outcome import COMPLETED, Outcome
from tests import jobs_app
from tests.helpers import count

WORKER = "00000000-0000-0000-0000-0000000000a1"
ACK_APPLICATION_NAME = "test-ack"


def claim_jobs(app: pgjobs.App, db: psycopg.Connection[Any], limit: int) -> list[ClaimedJob]:
    """Claim up to ``limit`` jobs under :data:`WORKER`, by id."""
    rows = db.execute(
        app._queries.claim_jobs, {"queues": ["default"], "limit": limit, "worker_id": WORKER}
    ).fetchall()
    return sorted(map(ClaimedJob._make, rows))


def claim_of(job: ClaimedJob) -> Claim:
    return Claim(job.id, job.attempt, job.max_attempts, job.claim_token)


def job_row(db: psycopg.Connection[Any], job_id: int) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT state, attempt, worker_id::text, claim_token FROM pgjobs.jobs WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return row


def new_acker(app: pgjobs.App) -> tuple[Acker, Link]:
    link = Link(app.settings, ACK_APPLICATION_NAME)
    acker = Acker(link, app._queries, WORKER, on_retry=lambda delay: None, on_written=lambda: None)
    return acker, link


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait, letting the acker run, until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{check} stayed false for {timeout} s"
        await asyncio.sleep(0.02)


def test_a_write_under_another_claims_token_changes_nothing(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """Id, attempt and worker right, token wrong (the claim a database crash undid): neither
    finishing nor handing back touches the job."""
    jobs_app.noop.enqueue("fenced")
    (job,) = claim_jobs(app, db, 1)
    undone = uuid.uuid4()

    def finish(token: uuid.UUID) -> list[tuple[Any, ...]]:
        rows = [(job.id, job.attempt, token, COMPLETED)]
        return db.execute(app._queries.finish_jobs, finish_params(WORKER, rows)).fetchall()

    released = db.execute(
        app._queries.release_jobs,
        {
            "ids": [job.id],
            "attempts": [job.attempt],
            "tokens": [undone],
            "worker_id": WORKER,
            "channel": app._queries.jobs_channel,
        },
    ).fetchall()
    assert released == []
    assert finish(undone) == []
    assert job_row(db, job.id) == ("running", 1, WORKER, job.claim_token)
    assert finish(job.claim_token) == [(job.id,)]
    assert job_row(db, job.id) == ("completed", 1, None, None)


def test_an_outcome_in_flight_when_its_job_is_claimed_again_is_written_under_the_new_claim(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    """The worker adopts a re-claim into the claim its unwritten outcome holds. A write already
    sent under the old token matches no row; it is written again under the new one, not dropped
    as stale (which would leave the job running with nobody to finish it)."""
    jobs_app.noop.enqueue("adopted")
    (job,) = claim_jobs(app, db, 1)
    claim = claim_of(job)

    async def scenario(blocker: psycopg.Connection[Any]) -> Acker:
        acker, link = new_acker(app)
        acker.start()
        acker.add(claim, COMPLETED)
        await until(
            lambda: (
                count(
                    db,
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = %s AND wait_event_type = 'Lock'",
                    ACK_APPLICATION_NAME,
                )
                == 1
            )
        )
        # the claim is undone and made again (same attempt, new token) while the write waits
        row = blocker.execute(
            "UPDATE pgjobs.jobs SET claim_token = gen_random_uuid() WHERE id = %s"
            " RETURNING claim_token",
            (job.id,),
        ).fetchone()
        assert row is not None
        claim.token = row[0]
        blocker.commit()
        async with asyncio.timeout(15):
            await acker.stop()
        await link.close()
        return acker

    with psycopg.connect(database_url) as blocker:
        blocker.execute("SELECT 1 FROM pgjobs.jobs WHERE id = %s FOR UPDATE", (job.id,))
        acker = asyncio.run(scenario(blocker))
    assert acker.stale_acks == 0
    assert job_row(db, job.id) == ("completed", 1, None, None)


def test_a_row_the_database_refuses_is_stored_as_a_fallback_and_its_batch_is_written(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """An infinite retry delay, and an error record jsonb cannot hold: each fails the whole
    batch's statement. The other rows are written; each bad one is stored as a fallback with an
    OutcomeNotStored error: retried after Sidekiq's delay, or discarded on its last attempt."""
    app.enqueue_many(jobs_app.noop.call(f"row-{i}") for i in range(3))
    jobs_app.noop.options(max_attempts=1).enqueue("last attempt")
    jobs = claim_jobs(app, db, 4)
    lone_surrogate = {"attempt": 1, "class": "builtins.ValueError", "message": "\ud800"}
    outcomes = [
        COMPLETED,
        Outcome("retryable", delay=float("inf")),
        COMPLETED,
        Outcome("discarded", error=lone_surrogate),
    ]

    async def scenario() -> Acker:
        acker, link = new_acker(app)
        for job, outcome in zip(jobs, outcomes, strict=True):
            acker.add(claim_of(job), outcome)
        acker.start()  # after the adds: the four rows go out in one batch
        async with asyncio.timeout(30):
            await acker.stop()
        await link.close()
        return acker

    acker = asyncio.run(scenario())
    rows = db.execute(
        "SELECT id, state, worker_id, claim_token,"
        "       extract(epoch FROM scheduled_at - now()) BETWEEN 15 AND 27,"
        "       errors -> -1 ->> 'class', errors -> -1 ->> 'message'"
        " FROM pgjobs.jobs ORDER BY id"
    ).fetchall()
    refused = "but the database refused to store that outcome: "
    assert [row[:5] for row in rows] == [
        (jobs[0].id, "completed", None, None, False),
        (jobs[1].id, "retryable", None, None, True),
        (jobs[2].id, "completed", None, None, False),
        (jobs[3].id, "discarded", None, None, False),
    ]
    assert rows[0][5:] == rows[2][5:] == (None, None)
    assert rows[1][5] == rows[3][5] == "pgjobs.OutcomeNotStored"
    assert rows[1][6].startswith(f"the attempt ended retryable, {refused}"), rows[1][6]
    assert rows[3][6].startswith(
        f"the attempt ended discarded after builtins.ValueError, {refused}"
    ), rows[3][6]
    assert acker.backlog == 0
    assert acker.stale_acks == 0


@pytest.mark.fresh_database
def test_a_row_that_cannot_be_stored_at_all_is_retried_while_the_others_are_written(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """A row the database refuses whatever its outcome (here a trigger) is held and tried again
    with back-off, its own outcome first; the rest of its batch, and later outcomes, are written
    meanwhile."""
    app.enqueue_many(jobs_app.noop.call(f"row-{i}") for i in range(3))
    first, refused, last = claim_jobs(app, db, 3)
    db.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'this row is refused for now'; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON pgjobs.jobs FOR EACH ROW"
        f" WHEN (OLD.id = {refused.id} AND OLD.state = 'running') EXECUTE FUNCTION refuse()"
    )

    async def scenario() -> Acker:
        acker, link = new_acker(app)
        acker.add(claim_of(first), COMPLETED)
        acker.add(claim_of(refused), COMPLETED)
        acker.start()
        async with asyncio.timeout(15):
            await acker.flush()  # written, or held after its fallback was refused too
        assert acker.unwritten() == {refused.id}
        acker.add(claim_of(last), COMPLETED)
        await until(lambda: acker.unwritten() == {refused.id})
        assert job_row(db, first.id)[0] == job_row(db, last.id)[0] == "completed"
        assert job_row(db, refused.id)[0] == "running"
        db.execute("DROP TRIGGER refuse ON pgjobs.jobs")
        await until(lambda: acker.backlog == 0)
        async with asyncio.timeout(15):
            await acker.stop()
        await link.close()
        return acker

    acker = asyncio.run(scenario())
    assert job_row(db, refused.id) == ("completed", 1, None, None)
    errors = db.execute("SELECT errors FROM pgjobs.jobs WHERE id = %s", (refused.id,)).fetchone()
    assert errors == ([],)  # stored as itself once the database took it: no fallback record
    assert acker.stale_acks == 0


TOKEN = uuid.uuid4()
ODD_ERROR = {"attempt": 2, "class": "jobs.Odd\ud800\x00", "message": "x"}


@pytest.mark.parametrize(
    ("claim", "outcome", "state"),
    [
        (Claim(1, 2, 5, TOKEN), COMPLETED, "retryable"),
        (Claim(1, 2, 5, TOKEN), Outcome("scheduled", delay=float("inf")), "retryable"),
        (Claim(1, 2, 5, TOKEN), Outcome("retryable", delay=1e300, error=ODD_ERROR), "retryable"),
        (Claim(1, 5, 5, TOKEN), Outcome("retryable", delay=float("inf")), "discarded"),
        (Claim(1, 2, 5, TOKEN), Outcome("discarded", error=ODD_ERROR), "discarded"),
        (Claim(1, 2, 5, TOKEN), Outcome("cancelled"), "cancelled"),
    ],
)
def test_fallback_outcome(claim: Claim, outcome: Outcome, state: str) -> None:
    """Final stays final, the last attempt is discarded, anything else is retried after
    Sidekiq's delay; the record says why and never carries what jsonb cannot hold."""
    problem = psycopg.errors.DatetimeFieldOverflow("interval out of range")
    fallback = fallback_outcome(claim, outcome, problem)
    assert fallback.state == state
    assert fallback.error is not None
    assert fallback.error["attempt"] == claim.attempt
    assert fallback.error["class"] == "pgjobs.OutcomeNotStored"
    message = fallback.error["message"]
    assert message.startswith(f"the attempt ended {outcome.state}")
    assert message.endswith("refused to store that outcome: interval out of range")
    assert "\x00" not in message
    message.encode("utf-8")  # no lone surrogate: jsonb takes it
    if state == "retryable":
        assert 2**4 + 15 <= fallback.delay <= 2**4 + 15 + 20  # Sidekiq's for attempt 2
    else:
        assert fallback.delay == 0.0


def test_a_job_claimed_again_before_its_outcome_is_written_does_not_run_again(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """A database crash undid the claim of a job that has run, whose outcome is still on its way:
    the worker claims it again. Its pending outcome adopts the new claim; no second run."""
    job_id = jobs_app.noop.enqueue("once")

    async def scenario() -> tuple[list[ClaimedJob], list[ClaimedJob], int]:
        worker = pgjobs.Worker(app)
        try:
            first = await worker._producer.claim(1)
            await worker._running[job_id].task  # its outcome waits in the acker, not started yet
            db.execute(  # what the crash leaves: the claim undone
                "UPDATE pgjobs.jobs SET state = 'available', attempt = 0, worker_id = NULL,"
                " claim_token = NULL WHERE id = %s",
                (job_id,),
            )
            again = await worker._producer.claim(1)
            running = len(worker._running)
            worker._acker.start()
            async with asyncio.timeout(15):
                await worker._acker.stop()
        finally:
            await worker._claim.close()
            await worker._ack.close()
            worker._threads.shutdown()
        return first, again, running

    first, again, running = asyncio.run(scenario())
    assert running == 0
    assert count(db, "SELECT count(*) FROM ledger WHERE job_id = %s", job_id) == 1
    assert [job.attempt for job in first + again] == [1, 1]
    assert first[0].claim_token != again[0].claim_token
    assert job_row(db, job_id) == ("completed", 1, None, None)


def test_outcomes_written_as_array_literals_keep_every_character(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """The finish statement's arrays go as literal texts: quotes, backslashes, braces, commas,
    the word NULL and any script in an error come back as they were, each row its own."""
    for n in range(3):
        jobs_app.noop.enqueue(f"literal {n}")
    jobs = claim_jobs(app, db, 3)
    nasty = 'a "quote", a \\ backslash, {braces}, NULL, \\" both, \u00e9\u4e2d\U0001f600\n\t'
    errors = [
        {"attempt": 1, "class": "x.Error", "message": nasty, "traceback": "NULL"},
        {"attempt": 1, "class": "y", "message": "", "traceback": '\\"}{,'},
    ]
    outcomes = [
        Outcome("retryable", delay=2.5e-05, error=errors[0]),
        COMPLETED,
        Outcome("discarded", error=errors[1]),
    ]
    rows = [(j.id, j.attempt, j.claim_token, o) for j, o in zip(jobs, outcomes, strict=True)]
    written = db.execute(app._queries.finish_jobs, finish_params(WORKER, rows)).fetchall()
    assert sorted(written) == sorted((j.id,) for j in jobs)
    stored = dict(
        db.execute(
            "SELECT id, errors FROM pgjobs.jobs WHERE id = ANY(%s)",
            [[j.id for j in jobs]],
        ).fetchall()
    )
    for job, error in ((jobs[0], errors[0]), (jobs[2], errors[1])):
        (entry,) = stored[job.id]
        assert {k: v for k, v in entry.items() if k != "at"} == error
    assert stored[jobs[1].id] == []
