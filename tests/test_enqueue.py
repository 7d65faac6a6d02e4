"""Transactional enqueue: a job exists if and only if the caller's transaction commits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import pgjobs
from tests import jobs_app
from tests.helpers import count, run_burst


def ledger_labels(db: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in db.execute("SELECT label FROM ledger ORDER BY at").fetchall()]


def job_count(db: psycopg.Connection[Any]) -> int:
    return db.execute("SELECT count(*) FROM pgjobs.jobs").fetchone()[0]  # type: ignore[index]


def sqlalchemy_url(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg://", 1)


def test_committed_job_runs(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url) as conn:
        job_id = jobs_app.noop.enqueue("committed", conn=conn)
    assert isinstance(job_id, int)
    run_burst(app)
    assert ledger_labels(db) == ["committed"]
    assert db.execute("SELECT state FROM pgjobs.jobs WHERE id = %s", (job_id,)).fetchone() == (
        "completed",
    )


def test_thousand_rolled_back_enqueues_never_run(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url) as conn:
        for i in range(1000):
            jobs_app.noop.enqueue(f"rolled-back-{i}", conn=conn)
        conn.rollback()
    assert job_count(db) == 0
    jobs_app.noop.enqueue("sentinel")
    run_burst(app)
    assert ledger_labels(db) == ["sentinel"]


def test_savepoint_rollback_removes_only_its_jobs(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url) as conn:
        jobs_app.noop.enqueue("outer", conn=conn)
        with pytest.raises(ZeroDivisionError), conn.transaction():
            jobs_app.noop.enqueue("inner", conn=conn)
            raise ZeroDivisionError
        jobs_app.noop.enqueue("after", conn=conn)
    run_burst(app)
    assert sorted(ledger_labels(db)) == ["after", "outer"]


def test_autocommit_connection_commits_at_once(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        job_id = jobs_app.noop.enqueue("autocommit", conn=conn)
        assert db.execute("SELECT name FROM pgjobs.jobs WHERE id = %s", (job_id,)).fetchone() == (
            "noop",
        )


def test_sqlalchemy_session_commit_and_rollback(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("SELECT 1"))
            jobs_app.noop.enqueue("session-committed", conn=session)
        with Session(engine) as session:
            jobs_app.noop.enqueue("session-rolled-back", conn=session)
            session.rollback()
        with engine.begin() as connection:
            jobs_app.noop.enqueue("connection-committed", conn=connection)
        with Session(engine) as session, session.begin():
            nested = session.begin_nested()
            jobs_app.noop.enqueue("nested-rolled-back", conn=session)
            nested.rollback()
            jobs_app.noop.enqueue("nested-kept", conn=session)
    finally:
        engine.dispose()
    run_burst(app)
    assert sorted(ledger_labels(db)) == ["connection-committed", "nested-kept", "session-committed"]


def test_sqlalchemy_async_session_and_connection(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    async def scenario() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url))
        try:
            async with AsyncSession(engine) as session, session.begin():
                await jobs_app.noop.enqueue_async("async-session", conn=session)
            async with AsyncSession(engine) as session:
                await jobs_app.noop.enqueue_async("async-rolled-back", conn=session)
                await session.rollback()
            async with engine.begin() as connection:
                await jobs_app.noop.enqueue_async("async-connection", conn=connection)
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                await jobs_app.noop.enqueue_async("async-psycopg", conn=conn)
            await jobs_app.noop.enqueue_async("async-own-pool")
        finally:
            await engine.dispose()
            await app.aclose()

    asyncio.run(scenario())
    run_burst(app)
    assert sorted(ledger_labels(db)) == [
        "async-connection",
        "async-own-pool",
        "async-psycopg",
        "async-session",
    ]


def test_enqueue_many_is_one_transactional_statement(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    calls = [jobs_app.noop.call(f"bulk-{i}") for i in range(500)]
    with psycopg.connect(database_url) as conn:
        ids = app.enqueue_many(calls, conn=conn)
        conn.rollback()
    assert len(ids) == 500 and job_count(db) == 0
    ids = app.enqueue_many([*calls, jobs_app.async_noop.options(queue="other").call("x")])
    assert ids == sorted(ids)
    rows = db.execute("SELECT id, queue, args FROM pgjobs.jobs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ids
    assert rows[0][2] == ["bulk-0"] and rows[-1][1:] == ("other", ["x"])


def test_options_delay_at_and_defaults(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    at_id = jobs_app.noop.enqueue_at(later, "at")
    in_id = jobs_app.noop.enqueue_in(timedelta(minutes=5), "in")
    opt_id = jobs_app.noop.options(queue="critical", priority=-5, max_attempts=3).enqueue("o")
    rows = {
        r[0]: r[1:]
        for r in db.execute(
            "SELECT id, state, queue, priority, max_attempts, "
            "round(extract(epoch FROM scheduled_at - now())) FROM pgjobs.jobs"
        ).fetchall()
    }
    assert rows[at_id][:4] == ("scheduled", "default", 0, 25)
    assert abs(float(rows[at_id][4]) - 3600) <= 2
    assert rows[in_id][0] == "scheduled" and abs(float(rows[in_id][4]) - 300) <= 2
    assert rows[opt_id][:4] == ("available", "critical", -5, 3)


def test_naive_datetime_and_bad_options_are_refused(app: pgjobs.App) -> None:
    with pytest.raises(pgjobs.ValidationError, match="naive"):
        jobs_app.noop.enqueue_at(datetime.now(), "naive")
    with pytest.raises(pgjobs.ValidationError, match="queue"):
        jobs_app.noop.options(queue="no spaces")
    with pytest.raises(pgjobs.ValidationError, match="priority"):
        jobs_app.noop.options(priority=10**6)


def test_arguments_must_fit_the_signature(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    with pytest.raises(TypeError, match="noop"):
        jobs_app.noop.enqueue("a", "b", "c")
    assert job_count(db) == 0


def test_enqueue_before_migrating_says_to_migrate(empty_database_url: str) -> None:
    app = pgjobs.App(database_url=empty_database_url)
    job = app.job(name="unmigrated")(lambda: None)
    try:
        with pytest.raises(pgjobs.SchemaError, match="pgjobs migrate"):
            job.enqueue()
    finally:
        app.close()


def test_enqueue_after_the_server_ended_pooled_connections_gets_a_fresh_one(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    async def enqueue_twice_async() -> None:
        await jobs_app.noop.enqueue_async("async before")
        terminate()
        await jobs_app.noop.enqueue_async("async after")
        await app.aclose()

    def terminate() -> None:
        ended = db.execute(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pgjobs-client'"
        ).fetchone()
        assert ended is not None and ended[0] >= 1

    jobs_app.noop.enqueue("before")
    terminate()  # as a database restart does
    jobs_app.noop.enqueue("after")
    asyncio.run(enqueue_twice_async())
    labels = db.execute("SELECT args ->> 0 FROM pgjobs.jobs ORDER BY id").fetchall()
    assert labels == [("before",), ("after",), ("async before",), ("async after",)]


def test_large_batches_go_through_copy_with_the_same_results(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """From COPY_THRESHOLD jobs on, enqueue_many uses COPY: ids in order, delays and times by the
    database clock, defaults and options, notifications, and the caller's transaction."""
    from pgjobs._encoding import COPY_THRESHOLD

    later = datetime.now(UTC) + timedelta(hours=1)
    calls = [
        jobs_app.noop.call(f"now-{i}") if i % 3 else jobs_app.noop.options(delay=60).call(f"d{i}")
        for i in range(COPY_THRESHOLD)
    ]
    calls.append(jobs_app.noop.options(at=later, queue="other", priority=-5).call("at"))
    db.execute('LISTEN "pgjobs.jobs"')
    with psycopg.connect(str(app.settings.database_url)) as conn:
        ids = app.enqueue_many(calls, conn=conn)
        conn.rollback()
    assert job_count(db) == 0
    ids = app.enqueue_many(calls)
    assert ids == sorted(ids) and len(ids) == COPY_THRESHOLD + 1
    rows = db.execute(
        "SELECT id, state, queue, priority, max_attempts, args ->> 0,"
        " extract(epoch FROM scheduled_at - inserted_at)::int FROM pgjobs.jobs ORDER BY id"
    ).fetchall()
    assert [row[0] for row in rows] == ids
    assert rows[0][1:] == ("scheduled", "default", 0, 25, "d0", 60)
    assert rows[1][1:] == ("available", "default", 0, 25, "now-1", 0)
    assert rows[-1][1:4] == ("scheduled", "other", -5)
    assert [n.payload for n in db.notifies(timeout=2, stop_after=1)] == ["default"]
    run_burst(app)
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == sum(
        1 for i in range(COPY_THRESHOLD) if i % 3
    )


def test_copy_stores_awkward_names_and_arguments_exactly_as_insert_does(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """COPY's text format gives backslashes, tabs and newlines a meaning: they must arrive as
    written, in the name and in the JSON, whichever way the batch went."""
    from pgjobs._encoding import COPY_THRESHOLD

    @app.job(name="odd\tname \\N with\nlines")
    def odd(*args: Any, **kwargs: Any) -> None:
        pass

    awkward = ["back\\slash", "tab\there", "new\nline", "\\N", "ünï 𝄞", {"k\\": ["\r\n"]}]
    single = app.enqueue_many([odd.call(*awkward, key="\\t")])
    batch = app.enqueue_many([odd.call(*awkward, key="\\t")] * COPY_THRESHOLD)
    stored = db.execute(
        "SELECT DISTINCT name, args, kwargs FROM pgjobs.jobs WHERE id = ANY(%s)", (single + batch,)
    ).fetchall()
    assert stored == [("odd\tname \\N with\nlines", awkward, {"key": "\\t"})]
