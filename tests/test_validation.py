"""Arguments are checked before any SQL: a bad one raises, names its path, and writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._validation import MAX_DEPTH, MAX_PAYLOAD_BYTES
from tests import jobs_app, limits_app


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


BAD_ARGUMENTS = [
    pytest.param((float("nan"),), {}, "args[0]", id="nan"),
    pytest.param(({"x": float("inf")},), {}, 'args[0]["x"]', id="infinity"),
    pytest.param((1, {"items": [0, 1, 2, float("-inf")]}), {}, 'args[1]["items"][3]', id="-inf"),
    pytest.param(("a\x00b",), {}, "args[0]", id="nul-in-string"),
    pytest.param(({"k\x00": 1},), {}, "args[0] key", id="nul-in-key"),
    pytest.param(("\ud800",), {}, "args[0]", id="lone-surrogate"),
    pytest.param(({1: "a"},), {}, "args[0]", id="int-key"),
    pytest.param(((1, 2),), {}, "args[0]", id="tuple"),
    pytest.param(({1, 2},), {}, "args[0]", id="set"),
    pytest.param((b"bytes",), {}, "args[0]", id="bytes"),
    pytest.param((object(),), {}, "args[0]", id="object"),
    pytest.param((nested(MAX_DEPTH + 1),), {}, "args[0]", id="too-deep"),
    pytest.param(("x" * (MAX_PAYLOAD_BYTES + 1),), {}, "args", id="too-large"),
    pytest.param((), {"label": {"deep": [b"x"]}}, 'kwargs["label"]["deep"][0]', id="kwargs-path"),
]


@pytest.mark.parametrize(("args", "kwargs", "path"), BAD_ARGUMENTS)
def test_bad_argument_is_refused_before_sql(
    app: pgjobs.App,
    database_url: str,
    db: psycopg.Connection[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    path: str,
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TEMP TABLE marker (n int)")
        with pytest.raises(pgjobs.ValidationError) as raised:
            jobs_app.anything.enqueue(*args, conn=conn, **kwargs)
        assert isinstance(raised.value, ValueError)
        assert str(raised.value).startswith(path), str(raised.value)
        # the caller's transaction is still usable and commits normally
        conn.execute("INSERT INTO marker VALUES (1)")
        assert conn.execute("SELECT count(*) FROM marker").fetchone() == (1,)
        conn.commit()
    assert db.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (0,)


def test_bulk_enqueue_with_one_bad_call_writes_nothing(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    good = [jobs_app.noop.call(str(i)) for i in range(10)]
    with pytest.raises(pgjobs.ValidationError):
        app.enqueue_many([*good, jobs_app.anything.call(float("nan"))])
    assert db.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (0,)


def test_edge_values_that_are_valid_round_trip(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    value = {"big": 10**30, "unicode": "żółw 🐢", "nested": nested(MAX_DEPTH - 2), "n": None}
    job_id = jobs_app.anything.enqueue(value)
    stored = db.execute("SELECT args FROM pgjobs.jobs WHERE id = %s", (job_id,)).fetchone()
    assert stored == ([value],)


def test_unregistered_name_is_refused(app: pgjobs.App) -> None:
    with pytest.raises(pgjobs.UnknownJobError, match="no job named 'missing'"):
        app.get("missing")


@pytest.mark.parametrize("max_attempts", [2**31, 99999999999, 0])
def test_max_attempts_outside_integer_is_refused_before_sql(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], max_attempts: int
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TEMP TABLE marker (n int)")
        with pytest.raises(pgjobs.ValidationError, match="max_attempts: must be from 1 to"):
            jobs_app.noop.options(max_attempts=max_attempts).enqueue("x", conn=conn)
        conn.execute("INSERT INTO marker VALUES (1)")  # the transaction is still usable
        largest = jobs_app.noop.options(max_attempts=2**31 - 1).enqueue("y", conn=conn)
        conn.commit()
    assert db.execute("SELECT id, max_attempts FROM pgjobs.jobs").fetchall() == [
        (largest, 2**31 - 1)
    ]


def test_registration_refuses_what_the_table_cannot_hold(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    registry = pgjobs.App(database_url=database_url)

    def work() -> None: ...

    with pytest.raises(pgjobs.ValidationError, match=r"name: .* 256 characters long"):
        registry.job(name="n" * 256)(work)
    with pytest.raises(pgjobs.ValidationError, match="name: contains a NUL"):
        registry.job(name="a\x00b")(work)
    with pytest.raises(pgjobs.ValidationError, match="max_attempts"):
        registry.job(name="too_many", max_attempts=2**31)(work)
    assert registry.jobs == {}

    longest = registry.job(name="n" * 255)(work)
    with psycopg.connect(database_url) as conn:
        job_id = longest.enqueue(conn=conn)
        conn.commit()
    registry.close()
    assert db.execute("SELECT name FROM pgjobs.jobs WHERE id = %s", (job_id,)).fetchone() == (
        "n" * 255,
    )


def test_the_size_limit_counts_arguments_as_the_database_prints_them(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    # compact JSON under 1 MiB, but over it with the space jsonb prints after each comma: the
    # database's check (migration 0006) would refuse it, so Python refuses it before any SQL
    items = MAX_PAYLOAD_BYTES // 5 - 10  # '"ab",' compact, '"ab", ' printed
    with pytest.raises(pgjobs.ValidationError, match="over the 1048576-byte limit"):
        jobs_app.anything.enqueue(["ab"] * items)
    assert db.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (0,)
    # the largest payload Python accepts is what the database measures, to the byte
    fitting = (MAX_PAYLOAD_BYTES - len('[[""]]') - len("{}")) // len('"ab", ')
    job_id = jobs_app.anything.enqueue(["ab"] * fitting)
    measured = db.execute(
        "SELECT octet_length(args::text) + octet_length(kwargs::text) FROM pgjobs.jobs"
        " WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert measured is not None and measured[0] <= MAX_PAYLOAD_BYTES
    assert measured[0] >= MAX_PAYLOAD_BYTES - len('"ab", ')


BAD_TEXTS = [
    pytest.param("a\x00b", "NUL", id="nul"),
    pytest.param("a\udc80", "lone surrogate", id="surrogate"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_TEXTS)
def test_a_bad_partition_key_is_refused_before_sql(text: str, problem: str) -> None:
    with pytest.raises(pgjobs.ValidationError, match=f"^partition_key: contains a {problem}"):
        limits_app.tenant_call.options(partition_key=text)
    with pytest.raises(pgjobs.ValidationError, match=f"^args\\[0\\]: contains a {problem}"):
        limits_app.tenant_call.call(text, 0)  # the key taken from its argument


@pytest.mark.parametrize(("text", "problem"), BAD_TEXTS)
def test_bad_names_given_to_admin_calls_are_refused_before_sql(
    app: pgjobs.App, database_url: str, text: str, problem: str
) -> None:
    calls: list[tuple[str, Callable[..., object]]] = [
        ("name", lambda conn: app.run_cron(text, conn=conn)),
        ("name", lambda conn: app.pause_cron(text, conn=conn)),
        ("name", lambda conn: app.resume_cron(text, conn=conn)),
        ("queues", lambda conn: app.list_jobs(queues=[text], conn=conn)),
        ("states", lambda conn: app.list_jobs(states=[text], conn=conn)),
        ("queues", lambda conn: app.retry_all(queues=["default", text], conn=conn)),
        ("names", lambda conn: app.retry_all(names=[text], conn=conn)),
    ]
    with psycopg.connect(database_url) as conn:
        for path, call in calls:
            with pytest.raises(pgjobs.ValidationError, match=f"^{path}: contains a {problem}"):
                call(conn)
        # the caller's transaction is still usable
        assert conn.execute("SELECT 1").fetchone() == (1,)
