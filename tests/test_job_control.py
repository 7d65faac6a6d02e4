"""Cancellation, timeouts and snoozing, through a real ``pgjobs worker``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgjobs
from tests import jobs_app
from tests.helpers import WorkerProcess, eventually, invoke, value

StartWorker = Callable[..., WorkerProcess]


def state(db: psycopg.Connection[Any], job_id: int) -> str:
    return str(value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id))


def errors_of(db: psycopg.Connection[Any], job_id: int) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = value(db, "SELECT errors FROM pgjobs.jobs WHERE id = %s", job_id)
    return errors


def ledger(db: psycopg.Connection[Any], job_id: int) -> list[tuple[int, str]]:
    return [
        (attempt, event)
        for attempt, event in db.execute(
            "SELECT attempt, event FROM ledger WHERE job_id = %s ORDER BY at", (job_id,)
        )
    ]


def test_cancelling_waiting_jobs_from_python_cli_and_sql_means_they_never_run(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    by_python = jobs_app.noop.enqueue("python")
    by_cli = jobs_app.noop.enqueue_in(3600, "cli")
    by_sql = jobs_app.noop.enqueue("sql")
    kept = jobs_app.noop.enqueue("kept")

    assert app.cancel(by_python) == "cancelled"
    result = invoke(database_url, "cancel", str(by_cli))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"job {by_cli} cancelled"
    assert value(db, "SELECT pgjobs.cancel_job(%s)", by_sql) == "cancelled"

    worker = worker_process("--burst")
    assert worker.wait() == 0, worker.output()
    assert [state(db, i) for i in (by_python, by_cli, by_sql, kept)] == [
        "cancelled",
        "cancelled",
        "cancelled",
        "completed",
    ]
    ran = {row[0] for row in db.execute("SELECT job_id FROM ledger")}
    assert ran == {kept}
    assert value(db, "SELECT count(*) FROM pgjobs.jobs WHERE finished_at IS NULL") == 0


def test_cancel_of_an_ended_or_missing_job_changes_nothing_and_says_so(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    assert app.cancel(job_id) == "cancelled"
    assert app.cancel(job_id) == "already cancelled"
    assert app.cancel(10**12) is None
    ended = invoke(database_url, "cancel", str(job_id))
    assert ended.returncode == 1
    assert ended.stderr.strip() == f"job {job_id}: already cancelled; nothing to cancel"
    completed = jobs_app.noop.enqueue("done")
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'completed', finished_at = now() WHERE id = %s",
        (completed,),
    )
    assert app.cancel(completed) == "already completed"
    assert state(db, completed) == "completed"
    missing = invoke(database_url, "cancel", str(10**12))
    assert missing.returncode == 2
    assert "no job" in missing.stderr


@pytest.mark.parametrize("job", [jobs_app.until_cancelled, jobs_app.async_until_cancelled])
def test_cancelling_a_running_job_stops_it_and_it_ends_cancelled(
    job: pgjobs.Job[[], None],
    app: pgjobs.App,
    db: psycopg.Connection[Any],
    worker_process: StartWorker,
) -> None:
    worker = worker_process()
    worker.wait_for_log("listening on")
    job_id = job.enqueue()
    eventually(lambda: ledger(db, job_id) == [(1, "start")])

    assert app.cancel(job_id) == "cancelling"
    eventually(lambda: state(db, job_id) == "cancelled", timeout=5)
    seen = "saw-cancel" if job is jobs_app.until_cancelled else "cancelled"
    assert ledger(db, job_id) == [(1, "start"), (1, seen)]
    assert value(
        db, "SELECT cancel_requested_at IS NOT NULL FROM pgjobs.jobs WHERE id = %s", job_id
    )
    # a cancelled job can be retried, and then it runs
    assert app.retry(job_id)
    eventually(lambda: ledger(db, job_id)[2:3] == [(2, "start")])
    assert app.cancel(job_id) == "cancelling"
    eventually(lambda: state(db, job_id) == "cancelled", timeout=5)
    assert worker.process.poll() is None


def test_a_poll_only_worker_learns_of_a_cancellation_from_its_heartbeat(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--poll-only", "--poll-interval", "0.2", "--heartbeat-interval", "0.5")
    worker.wait_for_log("poll-only")
    job_id = jobs_app.until_cancelled.enqueue()
    eventually(lambda: ledger(db, job_id) == [(1, "start")])
    assert app.cancel(job_id) == "cancelling"
    eventually(lambda: state(db, job_id) == "cancelled", timeout=5)
    assert ledger(db, job_id) == [(1, "start"), (1, "saw-cancel")]


def test_retrying_a_running_job_is_refused(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker_process().wait_for_log("listening on")
    job_id = jobs_app.until_cancelled.enqueue()
    eventually(lambda: ledger(db, job_id) == [(1, "start")])
    with pytest.raises(ValueError, match="is running"):
        app.retry(job_id)
    refused = invoke(database_url, "retry", str(job_id))
    assert refused.returncode == 2
    assert "is running" in refused.stderr
    assert state(db, job_id) == "running"
    app.cancel(job_id)
    eventually(lambda: state(db, job_id) == "cancelled")
    assert [event for _, event in ledger(db, job_id)] == ["start", "saw-cancel"]


def test_an_async_job_past_its_timeout_is_cancelled_and_retried_per_its_policy(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process()
    worker.wait_for_log("listening on")
    job_id = jobs_app.async_overruns.enqueue()
    eventually(lambda: state(db, job_id) == "discarded", timeout=10)
    assert ledger(db, job_id) == [(1, "start"), (2, "start")]
    errors = errors_of(db, job_id)
    assert [e["class"] for e in errors] == ["pgjobs.JobTimeout"] * 2
    assert "cancelled after its 0.5 s timeout" in errors[0]["message"]
    assert worker.process.poll() is None  # an async timeout needs no retirement


def test_a_timeout_error_from_an_async_job_without_a_timeout_is_recorded_as_itself(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process()
    worker.wait_for_log("listening on")
    job_id = jobs_app.async_raises_timeout_error.enqueue()
    eventually(lambda: state(db, job_id) == "discarded")
    assert [(e["class"], e["message"]) for e in errors_of(db, job_id)] == [
        ("builtins.TimeoutError", "the upstream service did not answer")
    ]


def test_a_sync_job_past_its_timeout_fails_at_once_and_its_worker_retires(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--concurrency", "4")
    worker.wait_for_log("listening on")
    neighbour = jobs_app.sleepy.enqueue(1.5, "neighbour")
    eventually(lambda: ledger(db, neighbour) == [(1, "start")])
    stuck = jobs_app.sync_overruns.enqueue(3.0)
    eventually(lambda: state(db, stuck) == "discarded", timeout=5)
    error = errors_of(db, stuck)[0]
    assert error["class"] == "pgjobs.JobTimeout"
    assert "its thread cannot be stopped" in error["message"]
    # the worker takes no new job, lets its neighbour finish, and exits with status 3
    late = jobs_app.noop.enqueue("late")
    assert worker.wait(timeout=15) == 3, worker.output()
    assert state(db, neighbour) == "completed"
    assert state(db, late) == "available"
    assert "retiring" in worker.output()
    assert value(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == 0


def test_a_supervised_worker_that_retires_is_replaced_at_once(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    supervisor = worker_process("--processes", "2", "--concurrency", "2")
    eventually(lambda: value(db, "SELECT count(*) FROM pgjobs.workers") == 2, 20)
    stuck = jobs_app.sync_overruns.enqueue(2.0)
    eventually(lambda: state(db, stuck) == "discarded", timeout=5)
    supervisor.wait_for_log("exited with status 3", timeout=15)
    after = jobs_app.noop.enqueue("after")
    eventually(lambda: state(db, after) == "completed", timeout=10)
    eventually(lambda: value(db, "SELECT count(*) FROM pgjobs.workers") == 2, 10)
    assert "restarting worker process" not in supervisor.output()  # no back-off for a retiree


def test_a_snoozed_job_comes_back_later_without_using_an_attempt(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker_process("--poll-interval", "5").wait_for_log("listening on")
    job_id = jobs_app.snoozer.enqueue(3)  # max_attempts=1: a counted attempt would discard it
    eventually(lambda: state(db, job_id) == "completed", timeout=10)
    assert ledger(db, job_id) == [(1, "start")] * 4
    attempt, errors = db.execute(
        "SELECT attempt, errors FROM pgjobs.jobs WHERE id = %s", (job_id,)
    ).fetchone()  # type: ignore[misc]
    assert (attempt, errors) == (1, [])
    gaps = db.execute(
        "SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY at)) FROM ledger WHERE job_id = %s",
        (job_id,),
    ).fetchall()[1:]
    assert all(float(gap) >= 0.1 for (gap,) in gaps), gaps


def test_snooze_and_timeout_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="delay"):
        pgjobs.Snooze(-1)
    with pytest.raises(pgjobs.ConfigError, match="timeout"):
        pgjobs.App().job(name="bad", timeout=0)(lambda: None)
