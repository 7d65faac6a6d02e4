"""``job.using(conn)``: the typed way to enqueue inside the caller's transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import pgjobs
from tests import jobs_app


def labels(db: psycopg.Connection[Any]) -> list[str]:
    rows = db.execute(
        "SELECT coalesce(args ->> 0, kwargs ->> 'label') FROM pgjobs.jobs ORDER BY id"
    ).fetchall()
    return [row[0] for row in rows]


def sqlalchemy_url(database_url: str, driver: str = "psycopg") -> str:
    return database_url.replace("postgresql://", f"postgresql+{driver}://", 1)


def test_using_joins_the_callers_transaction_on_psycopg_and_sqlalchemy(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url) as conn:
        bound = jobs_app.noop.using(conn)
        bound.enqueue("psycopg-rolled-back")
        bound.enqueue_in(60, "in-rolled-back")
        conn.rollback()
        bound.enqueue("psycopg-committed")
        assert labels(db) == []  # not committed yet
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with Session(engine) as session, session.begin():
            jobs_app.noop.using(session).enqueue(label="session-committed")
        with Session(engine) as session:
            jobs_app.noop.using(session).enqueue("session-rolled-back")
            session.rollback()
    finally:
        engine.dispose()
    assert labels(db) == ["psycopg-committed", "session-committed"]


def test_using_enqueue_in_and_at_and_options(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    with psycopg.connect(database_url) as conn:
        at_id = jobs_app.noop.using(conn).enqueue_at(later, "at")
        in_id = jobs_app.noop.using(conn).enqueue_in(timedelta(minutes=5), "in")
        opt_id = jobs_app.noop.options(queue="critical", priority=-5).using(conn).enqueue("o")
    rows = {
        row[0]: row[1:]
        for row in db.execute(
            "SELECT id, queue, priority, state, scheduled_at, scheduled_at - inserted_at"
            " FROM pgjobs.jobs"
        )
    }
    assert rows[at_id][:4] == ("default", 0, "scheduled", later)
    assert rows[in_id][2] == "scheduled"
    assert rows[in_id][4] == timedelta(minutes=5)
    assert rows[opt_id][:3] == ("critical", -5, "available")


def test_using_async_on_psycopg_and_sqlalchemy(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    async def scenario() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url))
        try:
            async with AsyncSession(engine) as session, session.begin():
                await jobs_app.noop.using(session).enqueue_async("async-session")
            async with AsyncSession(engine) as session:
                await jobs_app.noop.using(session).enqueue_async("async-rolled-back")
                await session.rollback()
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                await jobs_app.async_noop.using(conn).enqueue_async("async-psycopg")
            await jobs_app.noop.using(None).enqueue_async("own-pool")
        finally:
            await engine.dispose()
            await app.aclose()

    asyncio.run(scenario())
    assert labels(db) == ["async-session", "async-psycopg", "own-pool"]


def test_using_checks_arguments_before_any_sql_and_conn_stays_reserved(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(TypeError, match="noop"):
            jobs_app.noop.using(conn).enqueue("a", "b", "c")  # type: ignore[call-arg]
        with pytest.raises(pgjobs.ValidationError, match=r"args\[0\]"):
            jobs_app.anything.using(conn).enqueue(float("nan"))
        jobs_app.noop.using(conn).enqueue("still usable")  # the transaction was not aborted
    assert labels(db) == ["still usable"]
    with pytest.raises(pgjobs.ConfigError, match="'conn' is reserved"):

        @app.job(name="takes_conn")
        def takes_conn(conn: int) -> None: ...
