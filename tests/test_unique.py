"""Unique jobs: one job per key while in its unique states, enforced by the database's unique
index whatever the timing of the enqueuers; duplicates learn the existing job's id."""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._unique import canonical_json, key_value, plan_batch, unique_key
from tests import jobs_app
from tests.helpers import WorkerProcess, count, eventually, invoke, rows, run_burst, value


def f(x: int, y: str = "a", *, z: float = 1.0) -> None: ...


SIGNATURE = inspect.signature(f)


@pytest.mark.parametrize(
    ("by", "args", "kwargs", "expected"),
    [
        (None, (1,), {}, {"x": 1, "y": "a", "z": 1.0}),
        (None, (), {"x": 1}, {"x": 1, "y": "a", "z": 1.0}),
        (None, (1, "b"), {"z": 2}, {"x": 1, "y": "b", "z": 2}),
        (("x",), (1, "b"), {}, {"x": 1}),
        (("y", "x"), (), {"x": 3}, {"y": "a", "x": 3}),
    ],
)
def test_key_value_binds_arguments_with_defaults(
    by: tuple[str, ...] | None, args: tuple[Any, ...], kwargs: dict[str, Any], expected: Any
) -> None:
    assert key_value(SIGNATURE, by, args, kwargs) == expected


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"x": 1, "y": [1, 2]}, {"y": [1, 2], "x": 1}, True),  # key order does not matter
        ({"x": 1}, {"x": 2}, False),
        ([1, "a"], [1, "a"], True),
        ("1", 1, False),
        (None, "null", False),
    ],
)
def test_unique_key_is_canonical(a: Any, b: Any, same: bool) -> None:
    key_a, key_b = unique_key("job", canonical_json(a)), unique_key("job", canonical_json(b))
    assert (key_a == key_b) is same
    assert key_a.startswith("job:") and len(key_a) == len("job:") + 64
    assert unique_key("other", canonical_json(a)) != key_a  # one job's key never blocks another


@pytest.mark.parametrize("bad", [object(), {1, 2}, float("nan"), {"at": timedelta(1)}])
def test_a_unique_key_that_is_not_json_is_refused(bad: Any) -> None:
    with pytest.raises(pgjobs.ValidationError, match=r"unique_key: .* is not JSON"):
        jobs_app.noop.options(unique_key=bad)


@pytest.mark.parametrize("levels", [65, 10_000])
def test_a_unique_key_nested_too_deep_to_encode_is_refused(levels: int) -> None:
    """Refused by its depth, whatever the interpreter's recursion limit (a test runner or a
    library may raise it: then 10,000 levels encode, and the database chokes on them)."""
    deep: Any = "leaf"
    for _ in range(levels):
        deep = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 50_000))
    try:
        with pytest.raises(pgjobs.ValidationError, match=r"^unique_key: nested too deep"):
            jobs_app.noop.options(unique_key=deep)
    finally:
        sys.setrecursionlimit(limit)
    assert jobs_app.noop.options(unique_key=deep[0] if levels == 65 else [[1]]) is not None


@pytest.mark.parametrize(
    ("unique", "message"),
    [
        (pgjobs.Unique(states=()), r"needs at least one state"),
        (pgjobs.Unique(states=("waiting",)), r"'waiting' is not a state"),
        (pgjobs.Unique(states=("available",)), r"scheduled, running, retryable missing"),
        (
            pgjobs.Unique(states=("scheduled", "available", "running", "completed")),
            r"must include scheduled, available, running, retryable: .* retryable missing$",
        ),
        (pgjobs.Unique(by=("nope",)), r"'nope' is not a parameter of the function \(x, y\)"),
        (pgjobs.Unique(by="x"), r"is a tuple of names"),  # type: ignore[arg-type]
        (pgjobs.Unique(period=0), r"period=...\) must be a positive duration"),
        (pgjobs.Unique(period=timedelta(seconds=-1)), r"must be a positive duration"),
        (pgjobs.Unique(period=1e-9), r"at least 0.001 s"),
    ],
)
def test_bad_declarations_are_refused(unique: pgjobs.Unique, message: str) -> None:
    app = pgjobs.App()
    with pytest.raises(pgjobs.ConfigError, match=message):

        @app.job(name="bad", unique=unique)
        def bad(x: int, y: int) -> None: ...

    assert "bad" not in app.jobs


def test_plan_keeps_the_first_and_replaces_with_the_last() -> None:
    calls = [
        jobs_app.unique_noop.call("a"),  # 0
        jobs_app.noop.call("plain"),  # 1
        jobs_app.debounced.call(1, "first"),  # 2
        jobs_app.unique_noop.call(label="a"),  # 3: the same key as 0
        jobs_app.debounced.call(1, "second"),  # 4
        jobs_app.debounced.call(1, "third"),  # 5
        jobs_app.unique_noop.call("b"),  # 6
    ]
    plan = plan_batch(calls)
    assert plan.plain == [1]
    assert plan.keep == [0, 6]
    assert plan.replace == [5]
    assert plan.stands_for == {3: 0, 2: 5, 4: 5}


def test_a_duplicate_gets_the_existing_jobs_id(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    first = jobs_app.unique_noop.enqueue("a")
    again = jobs_app.unique_noop.enqueue(label="a", extra=0)  # the same arguments, bound
    other = jobs_app.unique_noop.enqueue("a", 1)
    assert (first.duplicate, again.duplicate, other.duplicate) == (False, True, False)
    assert again == first and other != first
    assert isinstance(again, int) and repr(again) == f"JobId({first}, duplicate=True)"
    assert rows(db, "SELECT id, unique_states FROM pgjobs.jobs ORDER BY id") == [
        (first, ["scheduled", "available", "running", "retryable"]),
        (other, ["scheduled", "available", "running", "retryable"]),
    ]
    # an explicit key on a job not declared unique: Unique's defaults
    keyed = jobs_app.noop.options(unique_key={"user": 7}).enqueue("x")
    assert jobs_app.noop.options(unique_key={"user": 7}).enqueue("y") == keyed
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE name = 'noop'") == 1


def test_async_enqueue_reports_duplicates(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    async def enqueue_twice() -> list[pgjobs.JobId]:
        async with await psycopg.AsyncConnection.connect(db.info.dsn) as conn:
            first = await jobs_app.unique_noop.using(conn).enqueue_async("async")
        second = await jobs_app.unique_noop.enqueue_async("async")
        many = await app.enqueue_many_async([jobs_app.unique_noop.call("async")] * 2)
        copied = [jobs_app.unique_noop.call("async", i) for i in range(600)]  # 0: the same
        await app.enqueue_many_async(copied)
        await app.aclose()
        return [first, second, *many]

    ids = asyncio.run(enqueue_twice())
    assert len(set(ids)) == 1
    assert [job_id.duplicate for job_id in ids] == [False, True, True, True]
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 600


def run_threads(count_: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count_)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def test_twenty_concurrent_enqueuers_leave_one_row(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    barrier = threading.Barrier(20)
    results: dict[int, pgjobs.JobId] = {}

    def enqueue(i: int) -> None:
        with psycopg.connect(database_url) as conn:  # its own transaction, committed on exit
            conn.execute("SELECT 1")
            barrier.wait()
            results[i] = jobs_app.unique_noop.using(conn).enqueue("race")

    run_threads(20, enqueue)
    (row_id,) = [r[0] for r in rows(db, "SELECT id FROM pgjobs.jobs")]
    assert sorted(results.values()) == [row_id] * 20
    assert sorted(r.duplicate for r in results.values()) == [False] + [True] * 19


def test_a_rolled_back_holder_passes_the_key_on(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    """The holder keeps its insert uncommitted while nine others wait on it, then rolls back; the
    next one to insert rolls back too; the key ends with one committed row, which every other
    enqueuer that committed was told of."""
    rollbacks_left = [1]
    lock = threading.Lock()
    committed: list[pgjobs.JobId] = []
    rolled_back: list[pgjobs.JobId] = []
    with psycopg.connect(database_url) as holder:
        held = jobs_app.unique_noop.using(holder).enqueue("handed on")
        assert not held.duplicate

        def enqueue(i: int) -> None:
            with psycopg.connect(database_url) as conn:
                job_id = jobs_app.unique_noop.using(conn).enqueue("handed on")
                with lock:
                    roll_back = not job_id.duplicate and rollbacks_left[0] > 0
                    if roll_back:
                        rollbacks_left[0] -= 1
                if roll_back:
                    conn.rollback()
                    rolled_back.append(job_id)
                else:
                    conn.commit()
                    committed.append(job_id)

        waiters = threading.Thread(target=run_threads, args=(9, enqueue))
        waiters.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        eventually(lambda: count(db, waiting) == 9)
        holder.rollback()
        waiters.join(timeout=60)
    assert len(rolled_back) == 1 and not rolled_back[0].duplicate
    (row_id,) = [r[0] for r in rows(db, "SELECT id FROM pgjobs.jobs")]
    assert sorted(committed) == [row_id] * 8
    assert sorted(c.duplicate for c in committed) == [False] + [True] * 7
    assert row_id not in (held, rolled_back[0])


def test_a_job_frees_its_key_on_leaving_its_states(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    first = jobs_app.unique_noop.enqueue("once")
    kept = jobs_app.unique_kept.enqueue("kept")
    run_burst(app)
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == 2
    second = jobs_app.unique_noop.enqueue("once")
    assert not second.duplicate and second != first
    again = jobs_app.unique_kept.enqueue("kept")  # its states include completed
    assert again.duplicate and again == kept
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 3


def test_a_period_ends_uniqueness_by_the_database_clock(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url) as conn:  # one transaction: one now(), one bucket
        first = jobs_app.unique_for.using(conn).enqueue("tick")
        second = jobs_app.unique_for.using(conn).enqueue("tick", extra=1)  # keyed by label only
        bucket = value(conn, "SELECT floor(extract(epoch FROM now()) / 0.5)::bigint")
    assert second.duplicate and second == first
    assert value(db, "SELECT unique_key FROM pgjobs.jobs").endswith(f":{bucket}")
    eventually(lambda: value(db, "SELECT floor(extract(epoch FROM now()) / 0.5)") > bucket)
    third = jobs_app.unique_for.enqueue("tick")
    assert not third.duplicate
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'available'") == 2


def test_replace_changes_a_waiting_job_and_keeps_a_running_one(
    app: pgjobs.App,
    database_url: str,
    db: psycopg.Connection[Any],
    worker_process: Callable[..., WorkerProcess],
) -> None:
    later = jobs_app.debounced.enqueue_in(timedelta(hours=1), 1, "first")
    replaced = jobs_app.debounced.options(priority=3).enqueue(1, "second")
    assert replaced.duplicate and replaced == later
    assert rows(db, "SELECT args, state, priority, scheduled_at <= now() FROM pgjobs.jobs") == [
        ([1, "second"], "available", 3, True)
    ]
    # back to later: a waiting job is replaced in either direction
    jobs_app.debounced.enqueue_in(timedelta(hours=2), 1, "third")
    assert rows(db, "SELECT args, state FROM pgjobs.jobs") == [([1, "third"], "scheduled")]
    jobs_app.debounced.enqueue(1, "lock 1")
    with psycopg.connect(database_url, autocommit=True) as locker:
        locker.execute("SELECT pg_advisory_lock(1)")
        worker_process()
        eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE label = 'lock 1'") == 1)
        kept = jobs_app.debounced.enqueue(1, "too late")
        assert kept.duplicate and kept == later
        assert rows(db, "SELECT args, state FROM pgjobs.jobs") == [([1, "lock 1"], "running")]
        locker.execute("SELECT pg_advisory_unlock(1)")
    eventually(lambda: value(db, "SELECT state FROM pgjobs.jobs") == "completed")
    fresh = jobs_app.debounced.enqueue(1, "after")
    assert not fresh.duplicate
    eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE label = 'after'") == 1)


def test_enqueue_many_resolves_duplicates_in_the_batch_and_against_rows(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    existing = jobs_app.unique_noop.enqueue("old")
    waiting = jobs_app.debounced.enqueue_in(timedelta(hours=1), 9, "old")
    ids = app.enqueue_many(
        [
            jobs_app.unique_noop.call("new"),
            jobs_app.noop.call("plain"),
            jobs_app.unique_noop.call("old"),
            jobs_app.unique_noop.call("new"),
            jobs_app.debounced.call(9, "newer"),
            jobs_app.debounced.call(2, "a"),
            jobs_app.debounced.call(9, "newest"),
            jobs_app.debounced.call(2, "b"),
        ]
    )
    # replace: the last call of a key stands for the earlier ones
    assert [i.duplicate for i in ids] == [False, False, True, True, True, True, True, False]
    assert ids[2] == existing and ids[3] == ids[0]
    assert ids[4] == ids[6] == waiting and ids[5] == ids[7]
    assert rows(db, "SELECT args FROM pgjobs.jobs WHERE name = 'debounced' ORDER BY id") == [
        ([9, "newest"],),
        ([2, "b"],),
    ]
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 5


def test_large_batches_are_copied(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    existing = jobs_app.unique_noop.enqueue("key 7")
    calls = [jobs_app.unique_noop.call(f"key {i % 600}") for i in range(1200)]  # by COPY
    calls += [jobs_app.noop.call(f"plain {i}") for i in range(600)]  # by COPY too
    with psycopg.connect(database_url) as conn:
        conn.execute("SET LOCAL jit = on")
        app.enqueue_many(calls, conn=conn)
        assert value(conn, "SHOW jit") == "on"  # turned off for the insert alone
        again = app.enqueue_many(calls[:600], conn=conn)  # a second copy in one transaction
        assert all(i.duplicate for i in again)
        conn.rollback()  # all of them, plain and unique
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 1
    ids = app.enqueue_many(calls)
    assert sum(not i.duplicate for i in ids) == 599 + 600
    assert ids[7] == ids[607] == existing and ids[8] == ids[608] != existing
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 1 + 599 + 600
    with psycopg.connect(database_url, autocommit=True) as conn:  # each statement commits
        fresh = app.enqueue_many([jobs_app.unique_noop.call(f"auto {i}") for i in range(500)])
        held = app.enqueue_many(calls[:600], conn=conn)
    assert not any(i.duplicate for i in fresh) and all(i.duplicate for i in held)
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 1 + 599 + 600 + 500
    # a raw COPY of a duplicate key is refused by the index too
    key = value(db, "SELECT unique_key FROM pgjobs.jobs WHERE id = %s", existing)
    with (
        pytest.raises(psycopg.errors.UniqueViolation, match="jobs_unique_key_idx"),
        db.cursor().copy("COPY pgjobs.jobs (name, unique_key, unique_states) FROM STDIN") as copy,
    ):
        copy.write_row(("unique_noop", key, ["scheduled", "available", "running", "retryable"]))


def test_a_worker_runs_unique_jobs_and_a_refused_key_leaves_the_transaction_usable(
    app: pgjobs.App,
    database_url: str,
    db: psycopg.Connection[Any],
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    with psycopg.connect(database_url) as conn:
        jobs_app.unique_noop.using(conn).enqueue("ran")
        with pytest.raises(pgjobs.ValidationError, match="unique_key"):
            jobs_app.unique_noop.options(unique_key=object()).using(conn).enqueue("never")
        jobs_app.debounced.using(conn).enqueue(5, "ran too")
    worker_process()
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == 2)
    assert rows(db, "SELECT label FROM ledger ORDER BY label") == [("ran",), ("ran too",)]
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE unique_key IS NULL") == 0


def test_cli_enqueue_with_a_unique_key(database_url: str, db: psycopg.Connection[Any]) -> None:
    args = ("--app", "tests.jobs_app:app", "enqueue", "noop", "--args", '["cli"]')
    first = invoke(database_url, *args, "--unique-key", '{"b": 1, "a": [2]}')
    assert first.returncode == 0, first.stderr
    job_id = int(first.stdout)
    again = invoke(database_url, *args, "--unique-key", '{"a": [2], "b": 1}')
    assert (again.returncode, again.stdout.strip()) == (0, f"duplicate of job {job_id}")
    bad = invoke(database_url, *args, "--unique-key", "{nope")
    assert bad.returncode == 2 and "--unique-key: not valid JSON" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 1


def test_a_unique_job_holds_its_key_until_it_ends_in_sql_too(db: psycopg.Connection[Any]) -> None:
    """A row whose key would be held only while available is refused by the table: two copies
    scheduled for later could otherwise both be promoted, and the promotion of every due job
    would fail on the index."""
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_unique_states_check"):
        db.execute(
            "INSERT INTO pgjobs.jobs (queue, name, unique_key, unique_states)"
            " VALUES ('default', 'x', 'k', '{available}')"
        )
    db.rollback()
    db.execute(
        "INSERT INTO pgjobs.jobs (queue, name, unique_key, unique_states)"
        " VALUES ('default', 'x', 'k', '{scheduled,available,running,retryable,completed}')"
    )


def test_retrying_a_unique_job_whose_key_is_held(
    app: pgjobs.App, db: psycopg.Connection[Any], database_url: str
) -> None:
    """A dead unique job whose key a new copy holds: retry refuses it, naming the holder (exit 2
    from the CLI, nothing changed), and retry --all leaves it. Once the holder ends too, retry
    --all brings back one of the two, the newest."""

    def discard(job_id: int) -> None:
        db.execute(
            "UPDATE pgjobs.jobs SET state = 'discarded', finished_at = now() WHERE id = %s",
            (job_id,),
        )

    def states() -> list[tuple[int, str]]:
        return rows(db, "SELECT id, state FROM pgjobs.jobs ORDER BY id")

    first = jobs_app.unique_noop.enqueue("dead")
    discard(first)
    second = jobs_app.unique_noop.enqueue("dead")
    assert not second.duplicate
    shown = [app.get_job(i) for i in (first, second)]  # as `pgjobs job ID` shows them
    assert shown[0] is not None and shown[1] is not None
    assert (
        shown[0].unique_key
        == shown[1].unique_key
        == unique_key("unique_noop", canonical_json({"label": "dead", "extra": 0}))
    )
    with psycopg.connect(database_url) as conn:
        with pytest.raises(ValueError, match=f"job {first} is unique and job {second} holds"):
            app.retry(first, conn=conn)
        assert conn.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (2,)  # usable
    refused = invoke(database_url, "retry", str(first))
    assert refused.returncode == 2
    assert f"job {second} holds its key" in refused.stderr and "Traceback" not in refused.stderr
    assert app.retry_all() == 0
    assert states() == [(first, "discarded"), (second, "available")]

    discard(second)
    assert app.retry_all() == 1
    assert states() == [(first, "discarded"), (second, "available")]
    run_burst(app)
    assert states() == [(first, "discarded"), (second, "completed")]
    assert app.retry(first)  # the key is free again
    assert states() == [(first, "available"), (second, "completed")]
