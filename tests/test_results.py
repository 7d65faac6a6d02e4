"""Job results and progress: stored by real workers, read, waited for, pruned."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._acker import Claim, finish_params
from pgjobs._link import Link
from pgjobs._outcome import Outcome
from pgjobs._progress import ProgressWriter
from pgjobs._settings import load_settings
from tests import jobs_app
from tests.helpers import WorkerProcess, eventually, invoke, rows, run_burst, value

StartWorker = Callable[..., WorkerProcess]

SLOW_POLL = "30"
"""A poll interval (seconds) far longer than any wait these tests allow: what arrives sooner
came by notification."""


def column(db: psycopg.Connection[Any], name: str, job_id: int) -> Any:
    return value(db, f"SELECT {name} FROM pgjobs.jobs WHERE id = %s", job_id)


@pytest.fixture
def slow_polling(app: pgjobs.App, database_url: str) -> Iterator[pgjobs.App]:
    """The tests' app polling every 30 s: a wait that ends sooner was woken by a notification."""
    app.configure(database_url=database_url, poll_interval=float(SLOW_POLL))
    yield app
    app.configure(database_url=database_url)


@pytest.fixture
def held_lock(db: psycopg.Connection[Any]) -> Iterator[Callable[[], int]]:
    """``hold()``: an advisory lock key held by the test until the end (or ``release``)."""
    held: list[int] = []

    def hold() -> int:
        key = 424242 + len(held)
        db.execute("SELECT pg_advisory_lock(%s)", (key,))
        held.append(key)
        return key

    yield hold
    db.execute("SELECT pg_advisory_unlock_all()")


@pytest.mark.parametrize(
    "job", [jobs_app.returns, jobs_app.async_returns], ids=["def", "async def"]
)
@pytest.mark.parametrize(
    "returned", [{"sizes": [1, 2.5], "name": "é\u2028"}, [None, True], "text", 0, 10**30, False]
)
def test_a_completed_jobs_return_value_is_its_result(
    app: pgjobs.App, job: pgjobs.Job[..., Any], returned: Any
) -> None:
    job_id = job.enqueue(returned)
    run_burst(app)
    record = app.get_job(job_id)
    assert record is not None
    assert (record.state, record.result) == ("completed", returned)
    assert app.get_result(job_id) == returned
    assert asyncio.run(_get_result_async(app, job_id)) == returned


async def _get_result_async(app: pgjobs.App, job_id: int) -> Any:
    try:
        return await app.get_result_async(job_id)
    finally:
        await app.aclose()


def test_none_stores_no_result(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    job_id = jobs_app.returns.enqueue(None)
    run_burst(app)
    assert column(db, "state", job_id) == "completed"
    assert column(db, "result IS NULL", job_id) is True
    assert app.get_result(job_id) is None


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("set", r"^result: job returns_unstorable returned a value that is not JSON: set is"),
        ("nan", r'^result\["ratio"\]: job returns_unstorable .* nan is not valid JSON'),
        ("big", r"^result: job returns_unstorable returned 1048579 bytes of JSON, over the"),
    ],
)
def test_a_result_that_cannot_be_stored_fails_the_attempt_and_is_retried(
    app: pgjobs.App, db: psycopg.Connection[Any], kind: str, problem: str
) -> None:
    job_id = jobs_app.returns_unstorable.enqueue(kind)
    run_burst(app)
    assert column(db, "state", job_id) == "discarded"  # max_attempts=2: retried once
    assert value(db, "SELECT count(*) FROM ledger WHERE job_id = %s", job_id) == 2
    errors = column(db, "errors", job_id)
    assert [e["class"] for e in errors] == ["pgjobs.ValidationError"] * 2
    assert re.search(problem, errors[0]["message"]), errors[0]["message"]
    assert column(db, "result IS NULL AND worker_id IS NULL", job_id) is True


def test_get_result_refuses_an_unknown_job_and_one_not_completed(app: pgjobs.App) -> None:
    with pytest.raises(ValueError, match=r"^job 987654 does not exist"):
        app.get_result(987654)
    waiting = jobs_app.noop.enqueue()
    with pytest.raises(ValueError, match=rf"^job {waiting} is available: only a completed job"):
        app.get_result(waiting)


def test_wait_for_is_woken_by_a_notification_as_the_job_ends(
    slow_polling: pgjobs.App,
    db: psycopg.Connection[Any],
    worker_process: StartWorker,
    held_lock: Callable[[], int],
) -> None:
    app = slow_polling
    key = held_lock()
    job_id = jobs_app.reports_progress.enqueue(key)
    worker_process("--poll-interval", SLOW_POLL)
    eventually(lambda: column(db, "progress", job_id) == pytest.approx(0.4))
    ended: list[Any] = []
    waiter = threading.Thread(target=lambda: ended.append(app.wait_for(job_id, timeout=25)))
    waiter.start()
    eventually(lambda: column(db, "awaited", job_id) is True)
    released = time.monotonic()
    db.execute("SELECT pg_advisory_unlock_all()")
    waiter.join(timeout=25)
    assert time.monotonic() - released < 10  # a poll would take 30 s
    [record] = ended
    assert (record.id, record.state, record.result) == (job_id, "completed", 10)


def test_wait_for_async_is_woken_when_a_waiting_job_is_cancelled(
    slow_polling: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """No worker is involved: any statement that ends the job wakes its waiters."""
    app = slow_polling
    job_id = jobs_app.noop.enqueue()

    async def wait_and_cancel() -> tuple[dict[str, Any], float]:
        waiting = asyncio.create_task(app.wait_for_async(job_id, timeout=25))
        while not column(db, "awaited", job_id):
            await asyncio.sleep(0.02)
        cancelled = time.monotonic()
        assert await app.cancel_async(job_id) == "cancelled"
        record = await waiting
        await app.aclose()
        return record, time.monotonic() - cancelled

    record, took = asyncio.run(wait_and_cancel())
    assert record.state == "cancelled"
    assert took < 10


def test_wait_for_times_out_naming_the_job_and_its_state(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue()
    with pytest.raises(TimeoutError, match=rf"^job {job_id} is still available after 1 s"):
        app.wait_for(job_id, timeout=1)


def test_wait_for_an_unknown_job_or_with_a_bad_timeout_raises_at_once(app: pgjobs.App) -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"^job 987654 does not exist"):
        app.wait_for(987654, timeout=25)
    with pytest.raises(ValueError, match=r"^job 987654 does not exist"):
        asyncio.run(app.wait_for_async(987654, timeout=25))
    assert time.monotonic() - started < 10
    for timeout in (0, -1, float("nan"), float("inf"), "5"):
        with pytest.raises(pgjobs.ValidationError, match=r"^timeout: "):
            app.wait_for(1, timeout=timeout)  # type: ignore[arg-type]


def test_wait_for_a_job_that_ended_already_returns_its_record(app: pgjobs.App) -> None:
    job_id = jobs_app.returns.enqueue({"done": True})
    run_burst(app)
    assert app.wait_for(job_id, timeout=5).result == {"done": True}
    record = asyncio.run(app.wait_for_async(job_id, timeout=5))
    assert (record.state, record.result) == ("completed", {"done": True})


def test_wait_for_a_job_deleted_meanwhile_says_so(
    slow_polling: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    app = slow_polling
    job_id = jobs_app.noop.enqueue_in(3600)
    failed: list[BaseException] = []

    def wait() -> None:
        try:
            app.wait_for(job_id, timeout=25)
        except ValueError as exc:
            failed.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    eventually(lambda: column(db, "awaited", job_id) is True)
    assert app.delete_job(job_id)
    waiter.join(timeout=10)
    assert [str(e) for e in failed] == [f"job {job_id} was deleted while waited for"]


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (jobs_app.reports_progress, (0.4, "resized 4 of 10")),
        (jobs_app.async_reports_progress, (0.25, None)),
    ],
    ids=["def", "async def"],
)
def test_progress_is_visible_while_the_job_runs(
    app: pgjobs.App,
    database_url: str,
    worker_process: StartWorker,
    held_lock: Callable[[], int],
    db: psycopg.Connection[Any],
    job: pgjobs.Job[..., Any],
    expected: tuple[float, str | None],
) -> None:
    job_id = job.enqueue(held_lock())
    worker_process()

    def reported() -> dict[str, Any]:
        record = app.get_job(job_id)
        assert record is not None and record.progress is not None
        return record

    record = eventually(reported)
    assert record.state == "running"
    assert (record.progress, record.progress_message) == (
        pytest.approx(expected[0]),
        expected[1],
    )
    assert record.progress_at is not None
    shown = invoke(database_url, "job", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert f"progress:            {expected[0]:.0%}" in shown.stdout
    db.execute("SELECT pg_advisory_unlock_all()")
    final = app.wait_for(job_id, timeout=25)
    assert final.state == "completed"
    assert final.progress == pytest.approx(expected[0])  # an ended job keeps its last report


@pytest.mark.parametrize(
    ("fraction", "message", "problem"),
    [
        (1.5, None, "fraction: 1.5 is not from 0 to 1"),
        (-0.1, None, "fraction: -0.1 is not from 0 to 1"),
        (float("nan"), None, "fraction: nan is not from 0 to 1"),
        ("0.5", None, "fraction: str is not a number"),
        (True, None, "fraction: bool is not a number"),
        (0.5, 42, "message: int is not text"),
        (0.5, "a\x00b", "message: contains a NUL character"),
        (0.5, "x" * 1001, "message: 1001 characters, over 1000"),
    ],
)
def test_bad_progress_is_refused_naming_what_to_fix(
    fraction: Any, message: Any, problem: str
) -> None:
    with pytest.raises(pgjobs.ValidationError) as refused:
        _context().progress(fraction, message)
    assert str(refused.value).startswith(problem)


def test_bad_progress_raises_in_the_job_and_stores_nothing(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.bad_progress.enqueue(1.5, "too far")
    run_burst(app)
    assert app.get_result(job_id) == "fraction: 1.5 is not from 0 to 1 (0.4 means 40%)"
    assert column(db, "progress IS NULL", job_id) is True


def _context() -> pgjobs.JobContext:
    return pgjobs.JobContext(
        id=1,
        name="x",
        queue="default",
        attempt=1,
        max_attempts=1,
        worker_id="w",
        _stopping=threading.Event(),
    )


def test_progress_outside_a_worker_is_checked_and_dropped() -> None:
    _context().progress(0.5, "fine")  # no writer: nothing to do, nothing raised


def test_a_tight_progress_loop_makes_few_writes_and_the_last_one_wins(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    db.execute("CREATE TABLE progress_writes (progress real, at timestamptz DEFAULT now())")
    db.execute("""
CREATE FUNCTION count_progress_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO progress_writes (progress) VALUES (NEW.progress);
    RETURN NULL;
END $$""")
    db.execute("""
CREATE TRIGGER counts_progress_writes AFTER UPDATE ON pgjobs.jobs FOR EACH ROW
    WHEN (NEW.progress_at IS DISTINCT FROM OLD.progress_at AND NEW.state = 'running')
    EXECUTE FUNCTION count_progress_write()""")
    job_id = jobs_app.progress_loop.enqueue(100_000)
    worker = worker_process("--burst")
    assert worker.wait(timeout=60) == 0, worker.output()
    assert column(db, "state", job_id) == "completed"
    assert (column(db, "progress", job_id), column(db, "progress_message", job_id)) == (1.0, "done")
    writes = rows(db, "SELECT progress FROM progress_writes ORDER BY at")
    seconds = value(
        db, "SELECT extract(epoch FROM finished_at - attempted_at)::float8 FROM pgjobs.jobs"
    )
    assert 1 <= len(writes) <= seconds / 0.5 + 2, (len(writes), seconds)
    assert writes[-1] == (1.0,)


def test_a_late_progress_report_from_a_rescued_run_changes_nothing(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue()
    worker_id = str(uuid.uuid4())
    claim = app._queries.claim_jobs
    params = {"queues": ["default"], "limit": 1, "worker_id": worker_id}
    first = db.execute(claim, params).fetchone()
    assert first is not None
    # the rescue gives it back, and the same worker claims it again under a new token
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'available', worker_id = NULL, claim_token = NULL"
        " WHERE id = %s",
        (job_id,),
    )
    second = db.execute(claim, params).fetchone()
    assert second is not None and second[8] != first[8]

    async def report(token: uuid.UUID, fraction: float) -> None:
        writer = ProgressWriter(Link(app.settings, "test-progress"), app._queries, worker_id)
        writer.start()
        writer.report(Claim(job_id, 1, 25, token), fraction, "late")
        await asyncio.sleep(0.3)  # the write goes out at once; the writer then rests
        await writer.stop()

    asyncio.run(report(first[8], 0.9))
    assert column(db, "progress", job_id) is None  # the first run's report: fenced out
    asyncio.run(report(second[8], 0.3))
    assert column(db, "progress", job_id) == pytest.approx(0.3)


def test_a_new_attempt_shows_no_progress_of_the_one_before(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue()
    worker_id = str(uuid.uuid4())
    claim = {"queues": ["default"], "limit": 1, "worker_id": worker_id}
    row = db.execute(app._queries.claim_jobs, claim).fetchone()
    assert row is not None
    db.execute(
        "UPDATE pgjobs.jobs SET progress = 0.7, progress_message = 'm', progress_at = now()"
        " WHERE id = %s",
        (job_id,),
    )
    outcome = Outcome("retryable", delay=0, error={"attempt": 1, "class": "E", "message": ""})
    db.execute(app._queries.finish_jobs, finish_params(worker_id, [(job_id, 1, row[8], outcome)]))
    retrying = app.get_job(job_id)
    assert retrying is not None  # between attempts, the last one's report still shows
    assert (retrying.state, retrying.progress) == ("retryable", pytest.approx(0.7))
    db.execute("UPDATE pgjobs.jobs SET state = 'available' WHERE id = %s", (job_id,))
    assert db.execute(app._queries.claim_jobs, claim).fetchone() is not None
    second = app.get_job(job_id)
    assert second is not None and second.attempt == 2
    assert (second.progress, second.progress_message, second.progress_at) == (None, None, None)
    assert [r.progress for r in app.list_jobs()] == [None]


def test_a_batch_callback_reads_its_jobs_results(app: pgjobs.App) -> None:
    with app.batch(on_success=jobs_app.gathers_results.call("on_success")) as batch:
        ids = batch.enqueue_many(jobs_app.returns.call({"n": n}) for n in range(3))
    run_burst(app)
    status = app.batch_status(batch.id)
    assert status is not None
    expected = {job_id: {"n": n} for n, job_id in enumerate(ids)}
    assert app.get_result(status.success_job_id) == {str(k): v for k, v in expected.items()}
    assert app.batch_results(batch.id) == expected
    assert asyncio.run(_batch_results_async(app, batch.id)) == expected
    assert app.batch_results(987654) == {}


async def _batch_results_async(app: pgjobs.App, batch_id: int) -> dict[int, Any]:
    try:
        return await app.batch_results_async(batch_id)
    finally:
        await app.aclose()


def test_the_leader_clears_results_past_result_retention(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    old, recent = (jobs_app.returns.enqueue({"n": n}) for n in range(2))
    run_burst(app)
    db.execute(
        "UPDATE pgjobs.jobs SET finished_at = now() - interval '2 minutes' WHERE id = %s", (old,)
    )
    worker_process(env={"PGJOBS_RESULT_RETENTION": "1m"})
    eventually(lambda: column(db, "result", old) is None)
    assert column(db, "state", old) == "completed"  # the job itself is kept
    assert column(db, "result", recent) == {"n": 1}


def test_result_retention_is_a_duration_or_unset() -> None:
    assert load_settings(environ={}).result_retention is None
    assert load_settings(environ={"PGJOBS_RESULT_RETENTION": "2h"}).result_retention == 7200
    with pytest.raises(pgjobs.ConfigError, match="result_retention: must be a positive"):
        load_settings({"result_retention": 0}, environ={})
    with pytest.raises(pgjobs.ConfigError, match="result_retention: 'soon' is not a valid"):
        load_settings(environ={"PGJOBS_RESULT_RETENTION": "soon"})


def test_pgjobs_job_shows_the_result_as_json(app: pgjobs.App, database_url: str) -> None:
    text, nothing = jobs_app.returns.enqueue("42"), jobs_app.returns.enqueue(None)
    run_burst(app)
    shown = invoke(database_url, "job", str(text))
    assert shown.returncode == 0, shown.stderr
    assert 'result:              "42"' in shown.stdout  # the text "42", not the number
    assert "progress:            \n" in shown.stdout
    assert "result:              \n" in invoke(database_url, "job", str(nothing)).stdout
    as_json = invoke(database_url, "job", str(text), "--json")
    assert json.loads(as_json.stdout)["result"] == "42"


def test_a_refused_progress_write_is_logged_and_the_writer_goes_on(
    app: pgjobs.App, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    job_id = jobs_app.noop.enqueue()
    worker_id = str(uuid.uuid4())
    row = db.execute(
        app._queries.claim_jobs, {"queues": ["default"], "limit": 1, "worker_id": worker_id}
    ).fetchone()
    assert row is not None
    claim = Claim(job_id, 1, 25, row[8])

    async def report() -> None:
        writer = ProgressWriter(Link(app.settings, "test-progress"), app._queries, worker_id)
        writer.start()
        writer.report(claim, 2.0, "past the check")  # what the job's own check would refuse
        while "could not store the progress" not in caplog.text:
            await asyncio.sleep(0.02)
        writer.report(claim, 0.5, "fine")
        while column(db, "progress", job_id) is None:
            await asyncio.sleep(0.02)
        await writer.stop()

    asyncio.run(asyncio.wait_for(report(), 20))
    assert f"could not store the progress of job(s) {job_id}: new row" in caplog.text
    assert "jobs_progress_range_check" in caplog.text
    assert (column(db, "progress", job_id), column(db, "progress_message", job_id)) == (0.5, "fine")
