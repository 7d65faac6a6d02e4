"""Failed attempts are recorded, retried by policy, and end in the dead set when exhausted."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._outcome import failure_outcome, sidekiq_backoff
from tests import jobs_app
from tests.helpers import invoke, run_burst


def job_row(db: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM pgjobs.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def test_fails_twice_then_succeeds(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    job_id = jobs_app.flaky.enqueue(2)
    run_burst(app)
    row = job_row(db, job_id)
    assert (row["state"], row["attempt"]) == ("completed", 3)
    assert [e["attempt"] for e in row["errors"]] == [1, 2]
    first = row["errors"][0]
    assert first["class"] == "builtins.RuntimeError"
    assert first["message"] == "attempt 1 fails"
    assert "raise RuntimeError" in first["traceback"] and first["at"]
    runs = db.execute("SELECT attempt FROM ledger WHERE job_id = %s ORDER BY at", (job_id,))
    assert [r[0] for r in runs] == [1, 2, 3]


def frames(trace: str) -> list[str]:
    """The files of a formatted traceback's frames, in order."""
    return [line.split('"')[1] for line in trace.splitlines() if line.startswith('  File "')]


@pytest.mark.parametrize("job", [jobs_app.always_fails, jobs_app.async_raises_timeout_error])
def test_a_stored_traceback_starts_at_the_jobs_own_frame(
    job: pgjobs.Job[[], None], app: pgjobs.App, db: psycopg.Connection[Any], caplog: Any
) -> None:
    """The worker's frames that call the job (pgjobs' own, asyncio's, the thread pool's) are left
    out of the stored traceback; the debug log has the whole of it."""
    job_id = job.enqueue()
    with caplog.at_level("DEBUG", logger="pgjobs.worker"):
        run_burst(app)
    trace = job_row(db, job_id)["errors"][0]["traceback"]
    assert trace.startswith("Traceback (most recent call last):\n"), trace
    files = frames(trace)
    assert files and files[0].endswith("tests/jobs_app.py"), trace
    assert not any("/pgjobs/" in f or "/asyncio/" in f or "/concurrent/" in f for f in files)
    whole = [r.getMessage() for r in caplog.records if "whole traceback" in r.getMessage()]
    assert whole and "pgjobs/_execution.py" in whole[0]


def test_a_traceback_of_pgjobs_frames_alone_is_kept_whole() -> None:
    """An error raised before the job's code ran keeps the frames it has."""
    from pgjobs._outcome import error_record

    try:
        pgjobs.App().get("no.such.job")
    except Exception as exc:
        record = error_record(exc, 1)
    assert "pgjobs/_app.py" in record["traceback"]


def test_exhausted_job_is_discarded_then_retried_from_the_cli(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.always_fails.enqueue()
    run_burst(app)
    row = job_row(db, job_id)
    assert (row["state"], row["attempt"], len(row["errors"])) == ("discarded", 3, 3)
    assert row["finished_at"] is not None

    result = invoke(database_url, "retry", str(job_id))
    assert result.returncode == 0, result.stderr
    row = job_row(db, job_id)
    assert (row["state"], row["max_attempts"]) == ("available", 4)
    run_burst(app)
    assert (job_row(db, job_id)["state"], job_row(db, job_id)["attempt"]) == ("discarded", 4)


def test_custom_policy_sets_the_delay_then_discards(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.custom_policy.enqueue()
    run_burst(app)
    delay = db.execute(
        "SELECT state, extract(epoch FROM scheduled_at - attempted_at) FROM pgjobs.jobs"
        " WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert delay is not None and delay[0] == "retryable" and 3599 <= float(delay[1]) <= 3601
    db.execute("UPDATE pgjobs.jobs SET scheduled_at = now() WHERE id = %s", (job_id,))
    run_burst(app)
    row = job_row(db, job_id)
    assert (row["state"], row["attempt"]) == ("discarded", 2)


def test_discard_on_exception_skips_retries(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    job_id = jobs_app.permanent.enqueue()
    run_burst(app)
    row = job_row(db, job_id)
    assert (row["state"], row["attempt"], row["max_attempts"]) == ("discarded", 1, 25)
    assert row["errors"][0]["class"] == "tests.jobs_app.Permanent"


def test_exhausted_hook_is_called_once(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    job_id = jobs_app.exhausts.enqueue()
    run_burst(app)
    labels = db.execute("SELECT label FROM ledger WHERE job_id = %s ORDER BY at", (job_id,))
    assert [r[0] for r in labels] == ["exhausts", "exhausted:KeyError"]


def test_unknown_job_name_fails_without_running(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    db.execute("INSERT INTO pgjobs.jobs (name, max_attempts) VALUES ('os.system', 1)")
    run_burst(app)
    state, errors = db.execute("SELECT state, errors FROM pgjobs.jobs").fetchone()  # type: ignore[misc]
    assert state == "discarded"
    assert errors[0]["class"] == "pgjobs.UnknownJobError"
    assert "no job named 'os.system'" in errors[0]["message"]
    assert db.execute("SELECT count(*) FROM ledger").fetchone() == (0,)


def test_retrying_a_running_job_is_refused(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    job_id = jobs_app.noop.enqueue("x")
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'running', worker_id = gen_random_uuid() WHERE id = %s",
        (job_id,),
    )
    with pytest.raises(ValueError, match="running"):
        app.retry(job_id)
    assert app.retry(10**12) is False


@pytest.mark.parametrize("attempt", [1, 5, 24])
def test_sidekiq_backoff_bounds(attempt: int) -> None:
    delays = {sidekiq_backoff(attempt, RuntimeError()) for _ in range(200)}
    assert min(delays) >= attempt**4 + 15
    assert max(delays) <= attempt**4 + 15 + 10 * attempt


def test_default_schedule_spans_about_three_weeks() -> None:
    total = sum(sidekiq_backoff(a, RuntimeError()) for a in range(1, 25))
    assert 19 * 86400 < total < 23 * 86400


def test_error_record_is_sanitised_and_truncated() -> None:
    outcome = failure_outcome(
        RuntimeError("nul\x00 and \ud800" + "x" * 10_000),
        attempt=1,
        max_attempts=2,
        retry=lambda a, e: None,
        discard_on=(),
    )
    assert outcome.state == "discarded" and outcome.error is not None
    message = outcome.error["message"]
    assert "\x00" not in message and "\\x00" in message and "\\ud800" in message
    assert len(message) == 2000


def test_a_retried_job_wakes_the_workers_of_its_queue(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.always_fails.enqueue()
    run_burst(app)
    assert job_row(db, job_id)["state"] == "discarded"
    db.execute('LISTEN "pgjobs.jobs"')
    assert app.retry(job_id)
    heard = [(n.channel, n.payload) for n in db.notifies(timeout=5, stop_after=1)]
    assert heard == [("pgjobs.jobs", job_row(db, job_id)["queue"])]
