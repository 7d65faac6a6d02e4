"""The admin operations (get_job, list_jobs, retry, retry_all, cancel, ...), each sync and async,
on pgjobs' own pool and on the caller's connection: there they join the caller's transaction, so
a rollback leaves nothing changed."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import psycopg
import pytest

import pgjobs
from tests import jobs_app
from tests.helpers import count, eventually, invoke, value

MODES = ["sync", "async"]

TRACEBACK = 'Traceback (most recent call last):\n  File "jobs.py", line 3\nRuntimeError: boom'


def on_pool(app: pgjobs.App, mode: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """``app.<method>(...)``, or its ``_async`` twin, on pgjobs' own pool."""
    if mode == "sync":
        return getattr(app, method)(*args, **kwargs)

    async def scenario() -> Any:
        try:
            return await getattr(app, f"{method}_async")(*args, **kwargs)
        finally:
            await app.aclose()

    return asyncio.run(scenario())


def rolled_back(
    app: pgjobs.App,
    database_url: str,
    mode: str,
    method: str,
    *args: Any,
    setup: str | None = None,
    probe: str,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """``app.<method>(..., conn=...)`` (or its ``_async`` twin) in a transaction of the caller's,
    after ``setup`` and before ``probe`` in the same transaction, which is then rolled back.
    Returns the call's result and the probe's first value."""
    if mode == "sync":
        with psycopg.connect(database_url) as conn:
            if setup:
                conn.execute(setup)
            result = getattr(app, method)(*args, conn=conn, **kwargs)
            row = conn.execute(probe).fetchone()
            conn.rollback()
        assert row is not None
        return result, row[0]

    async def scenario() -> tuple[Any, Any]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            if setup:
                await conn.execute(setup)
            result = await getattr(app, f"{method}_async")(*args, conn=conn, **kwargs)
            row = await (await conn.execute(probe)).fetchone()
            await conn.rollback()
        assert row is not None
        return result, row[0]

    return asyncio.run(scenario())


def state(db: psycopg.Connection[Any], job_id: int) -> str:
    return str(value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id))


def discard(db: psycopg.Connection[Any], job_id: int) -> None:
    """Make ``job_id`` discarded after three failed attempts, as a worker would have."""
    error = {"attempt": 3, "class": "RuntimeError", "message": "boom", "traceback": TRACEBACK}
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'discarded', attempt = 3, max_attempts = 3,"
        " finished_at = now(), errors = jsonb_build_array(%s::jsonb) WHERE id = %s",
        (json.dumps(error), job_id),
    )


def run(db: psycopg.Connection[Any], job_id: int) -> None:
    """Make ``job_id`` running, as a claim would."""
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'running', attempt = attempt + 1, attempted_at = now(),"
        " worker_id = gen_random_uuid() WHERE id = %s",
        (job_id,),
    )


@pytest.mark.parametrize("mode", MODES)
def test_get_job_returns_one_job_with_its_errors_or_none(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], mode: str
) -> None:
    job_id = jobs_app.noop.options(queue="mailers").enqueue("x")
    discard(db, job_id)

    row = on_pool(app, mode, "get_job", job_id)

    assert row is not None
    assert isinstance(row, pgjobs.JobRecord)
    assert (row.id, row.name, row.queue, row.state) == (
        job_id,
        "noop",
        "mailers",
        "discarded",
    )
    assert (row.args, row.kwargs, row.attempt, row.worker_id) == (["x"], {}, 3, None)
    assert [(e["class"], e["message"], e["traceback"]) for e in row.errors] == [
        ("RuntimeError", "boom", TRACEBACK)
    ]
    assert on_pool(app, mode, "get_job", job_id + 1000) is None

    moved = f"UPDATE pgjobs.jobs SET queue = 'moved' WHERE id = {job_id}"
    seen, _ = rolled_back(app, database_url, mode, "get_job", job_id, setup=moved, probe="SELECT 1")
    assert seen.queue == "moved"  # it read inside the caller's transaction


@pytest.mark.parametrize("mode", MODES)
def test_list_jobs_on_the_pool_and_inside_the_callers_transaction(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], mode: str
) -> None:
    ids = [jobs_app.noop.enqueue(str(i)) for i in range(3)]
    other = jobs_app.noop.options(queue="other").enqueue("other")

    listed = on_pool(app, mode, "list_jobs", queues=["default"], limit=2)
    assert [r.id for r in listed] == [ids[2], ids[1]]
    assert all(isinstance(r, pgjobs.JobRecord) for r in listed)

    moved = f"UPDATE pgjobs.jobs SET queue = 'moved' WHERE id = {ids[0]}"
    inside, _ = rolled_back(
        app, database_url, mode, "list_jobs", queues=["moved"], setup=moved, probe="SELECT 1"
    )
    assert [r.id for r in inside] == [ids[0]]
    assert on_pool(app, mode, "list_jobs", queues=["moved"]) == []
    assert [r.id for r in on_pool(app, mode, "list_jobs", queues=["other"])] == [other]


@pytest.mark.parametrize("mode", MODES)
def test_retry_on_a_rolled_back_connection_changes_nothing_and_on_the_pool_commits(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], mode: str
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    discard(db, job_id)
    probe = f"SELECT state FROM pgjobs.jobs WHERE id = {job_id}"

    assert rolled_back(app, database_url, mode, "retry", job_id, probe=probe) == (True, "available")
    assert state(db, job_id) == "discarded"

    assert on_pool(app, mode, "retry", job_id) is True
    assert state(db, job_id) == "available"
    assert value(db, "SELECT max_attempts FROM pgjobs.jobs WHERE id = %s", job_id) == 4
    assert on_pool(app, mode, "retry", job_id + 1000) is False

    run(db, job_id)
    with pytest.raises(ValueError, match=f"job {job_id} is running"):
        on_pool(app, mode, "retry", job_id)
    assert state(db, job_id) == "running"


@pytest.mark.parametrize("mode", MODES)
def test_cancel_on_a_rolled_back_connection_changes_nothing_and_on_the_pool_commits(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], mode: str
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    probe = f"SELECT state FROM pgjobs.jobs WHERE id = {job_id}"

    assert rolled_back(app, database_url, mode, "cancel", job_id, probe=probe) == (
        "cancelled",
        "cancelled",
    )
    assert state(db, job_id) == "available"

    assert on_pool(app, mode, "cancel", job_id) == "cancelled"
    assert on_pool(app, mode, "cancel", job_id) == "already cancelled"
    assert on_pool(app, mode, "cancel", job_id + 1000) is None
    assert state(db, job_id) == "cancelled"


@pytest.mark.parametrize("mode", MODES)
def test_delete_job_and_run_job_now_refuse_what_they_must_and_join_the_callers_transaction(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], mode: str
) -> None:
    """The operations the dashboard's buttons use, in Python: guarded on the job's state."""
    later = jobs_app.noop.options(delay=3600).enqueue("later")
    probe = f"SELECT count(*) FROM pgjobs.jobs WHERE id = {later}"
    assert rolled_back(app, database_url, mode, "delete_job", later, probe=probe) == (True, 0)
    assert state(db, later) == "scheduled"

    assert on_pool(app, mode, "run_job_now", later) is True
    assert state(db, later) == "available"
    with pytest.raises(ValueError, match=f"job {later} is available: only a scheduled or retry"):
        on_pool(app, mode, "run_job_now", later)
    run(db, later)
    with pytest.raises(ValueError, match=f"job {later} is running: cancel it instead"):
        on_pool(app, mode, "delete_job", later)
    assert state(db, later) == "running"

    with app.batch() as batch:
        member = batch.add(jobs_app.noop.call("member"))
    with pytest.raises(ValueError, match="available in a batch that waits for it"):
        on_pool(app, mode, "delete_job", member)
    discard(db, member)
    assert on_pool(app, mode, "delete_job", member) is True
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = %s", member) == 0
    assert on_pool(app, mode, "delete_job", member) is False
    assert on_pool(app, mode, "run_job_now", member) is False


def test_cli_run_now_and_delete(
    database_url: str, db: psycopg.Connection[Any], app: pgjobs.App
) -> None:
    later = jobs_app.noop.options(delay=3600).enqueue("later")
    ran = invoke(database_url, "run-now", str(later))
    assert (ran.returncode, ran.stdout) == (0, f"job {later} is available now\n"), ran.stderr
    again = invoke(database_url, "run-now", str(later))
    assert again.returncode == 2 and "only a scheduled or retryable job" in again.stderr
    run(db, later)
    refused = invoke(database_url, "delete", str(later))
    assert refused.returncode == 2 and "is running: cancel it instead" in refused.stderr
    assert "Traceback" not in refused.stderr
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'completed', finished_at = now(), worker_id = NULL "
        "WHERE id = %s",
        (later,),
    )
    deleted = invoke(database_url, "delete", str(later))
    assert (deleted.returncode, deleted.stdout) == (0, f"job {later} deleted\n"), deleted.stderr
    missing = invoke(database_url, "delete", str(later))
    assert missing.returncode == 2 and f"no job {later}" in missing.stderr


@pytest.mark.parametrize("mode", MODES)
def test_retry_all_retries_exactly_the_matching_jobs_and_never_a_running_one(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], mode: str
) -> None:
    dead_a = [jobs_app.noop.options(queue="a").enqueue(str(i)) for i in range(2)]
    dead_flaky_a = jobs_app.flaky.options(queue="a").enqueue(1)
    dead_b = jobs_app.noop.options(queue="b").enqueue("b")
    cancelled_a = jobs_app.noop.options(queue="a").enqueue("cancelled")
    running_a = jobs_app.noop.options(queue="a").enqueue("running")
    waiting_a = jobs_app.noop.options(queue="a").enqueue("waiting")
    for job_id in (*dead_a, dead_flaky_a, dead_b):
        discard(db, job_id)
    app.cancel(cancelled_a)
    run(db, running_a)
    before = {job_id: state(db, job_id) for job_id in (cancelled_a, running_a, waiting_a, dead_b)}
    available_in_a = "SELECT count(*) FROM pgjobs.jobs WHERE queue = 'a' AND state = 'available'"

    assert rolled_back(
        app, database_url, mode, "retry_all", queues=["a"], probe=available_in_a
    ) == (3, 4)
    assert count(db, available_in_a) == 1  # rolled back: only the waiting one

    assert on_pool(app, mode, "retry_all", queues=["a"], names=["noop"]) == 2
    assert [state(db, i) for i in dead_a] == ["available", "available"]
    assert state(db, dead_flaky_a) == "discarded"
    assert {job_id: state(db, job_id) for job_id in before} == before

    assert on_pool(app, mode, "retry_all", states=["cancelled", "discarded"]) == 3
    assert [state(db, i) for i in (dead_flaky_a, dead_b, cancelled_a)] == ["available"] * 3
    assert state(db, running_a) == "running"
    assert on_pool(app, mode, "retry_all") == 0


@pytest.mark.parametrize(
    ("states", "problem"),
    [
        (["running"], "running jobs cannot be retried"),
        (["discarded", "running"], "running jobs cannot be retried"),
        ([], "name at least one state"),
        (["dead"], "'dead' is not a state"),
    ],
)
def test_retry_all_refuses_running_and_unknown_states_before_any_sql(
    app: pgjobs.App, db: psycopg.Connection[Any], states: list[str], problem: str
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    run(db, job_id)
    with pytest.raises(pgjobs.ValidationError, match=problem):
        app.retry_all(states=states, conn=object())  # not a connection: no SQL is attempted
    assert state(db, job_id) == "running"


def test_retry_all_leaves_a_job_claimed_while_it_waits_to_its_worker(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    """The claim holds the row when retry_all reaches it; once the claim commits, the row is
    re-checked and, now running, left alone."""
    job_id = jobs_app.noop.enqueue("claimed meanwhile")
    results: list[int] = []
    with psycopg.connect(database_url) as claimer:
        run(claimer, job_id)  # not committed yet: the row stays locked
        retrying = threading.Thread(
            target=lambda: results.append(app.retry_all(states=["available"]))
        )
        retrying.start()

        def retry_all_waits_for_the_row() -> bool:
            waiting = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return count(db, waiting) == 1

        eventually(retry_all_waits_for_the_row, timeout=30)
        claimer.commit()
        retrying.join(timeout=30)
    assert results == [0]
    assert state(db, job_id) == "running"


@pytest.mark.parametrize("mode", MODES)
def test_queue_counts_and_list_workers_have_async_twins(
    app: pgjobs.App, db: psycopg.Connection[Any], mode: str
) -> None:
    jobs_app.noop.enqueue("x")
    jobs_app.noop.options(queue="other").enqueue_in(3600, "later")
    assert on_pool(app, mode, "queue_counts") == {
        "default": {"available": 1},
        "other": {"scheduled": 1},
    }
    assert on_pool(app, mode, "list_workers") == []


def test_cli_retry_all_and_job(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    dead = [jobs_app.noop.options(queue="a").enqueue(str(i)) for i in range(2)]
    kept = jobs_app.noop.options(queue="b").enqueue("b")
    for job_id in (*dead, kept):
        discard(db, job_id)

    shown = invoke(database_url, "job", str(dead[0]))
    assert shown.returncode == 0, shown.stderr
    assert f"id:                  {dead[0]}" in shown.stdout.splitlines()
    assert "state:               discarded" in shown.stdout.splitlines()
    assert 'args:                ["0"]' in shown.stdout.splitlines()
    assert "attempt 3 at None: RuntimeError\n  boom\n  Traceback (most recent call last)" in (
        shown.stdout
    )
    assert shown.stdout.rstrip().endswith("  RuntimeError: boom")
    as_json = invoke(database_url, "job", str(dead[0]), "--json")
    assert json.loads(as_json.stdout)["errors"][0]["message"] == "boom"

    retried = invoke(database_url, "retry", "--all", "--state", "discarded", "--queue", "a")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == "2 jobs will run again"
    assert [state(db, i) for i in (*dead, kept)] == ["available", "available", "discarded"]

    for args, message in [
        (["job", "987654"], "no job 987654"),
        (["retry"], "give either JOB_ID or --all"),
        (["retry", "1", "--all"], "give either JOB_ID or --all"),
        (["retry", str(kept), "--queue", "b"], "--state, --queue and --name go with --all"),
    ]:
        refused = invoke(database_url, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert message in refused.stderr
        assert "Traceback" not in refused.stderr
    assert state(db, kept) == "discarded"
