"""Job ids past 2^31 on every path (RELIABILITY.md M-03).

A queue that runs for years passes two billion ids; one ``integer`` parameter, cast or column on
the way (a claim, an acknowledgement, a cancel notification, a CLI argument) would break it
there. The ids here start just below 2^31 and cross it, on the suite's shared server (no restart
is needed, so no cluster of its own). One size only: ``PGJOBS_FAULTS`` changes nothing here.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import psycopg

import pgjobs
from tests import jobs_app
from tests.helpers import WorkerProcess, eventually, run_cli, value

StartWorker = Callable[..., WorkerProcess]

INT4_LIMIT = 2**31
START = INT4_LIMIT - 8
LOCK = 31
"""The advisory lock that the job lost in the rescue waits on while the test holds it."""


def states(db: psycopg.Connection[Any], ids: list[int]) -> dict[int, str]:
    rows = db.execute("SELECT id, state FROM pgjobs.jobs WHERE id = ANY(%s)", (ids,)).fetchall()
    return {job_id: state for job_id, state in rows}


def starts(db: psycopg.Connection[Any], job_id: int) -> list[tuple[int, int]]:
    """(attempt, pid) of each start of ``job_id`` in the ledger, in order."""
    rows = db.execute(
        "SELECT attempt, pid FROM ledger WHERE job_id = %s AND event = 'start' ORDER BY at",
        (job_id,),
    ).fetchall()
    return [(attempt, pid) for attempt, pid in rows]


def test_every_path_works_with_job_ids_crossing_2_to_the_31(
    app: pgjobs.App,
    database_url: str,
    db: psycopg.Connection[Any],
    worker_process: StartWorker,
) -> None:
    """Enqueue, bulk enqueue, claim and acknowledgement, failure and discard, retry, cancel of a
    waiting and of a running job, rescue, hand-back, prune and the CLI, all on ids past 2^31."""
    db.execute(f"ALTER TABLE pgjobs.jobs ALTER COLUMN id RESTART WITH {START}")

    # enqueue and enqueue_many, across the limit
    single = jobs_app.noop.enqueue("single")
    batch = app.enqueue_many(jobs_app.noop.call(f"batch-{i}") for i in range(20))
    assert single == START
    assert batch == list(range(START + 1, START + 21))
    assert min(batch) < INT4_LIMIT < max(batch)
    failing = jobs_app.always_fails.enqueue()
    scheduled = jobs_app.noop.options(delay=3600).enqueue("scheduled")
    available = jobs_app.noop.options(queue="nobody").enqueue("available")
    assert min(failing, scheduled, available) > INT4_LIMIT

    # cancel of waiting jobs: the API and the CLI
    assert app.cancel(scheduled) == "cancelled"
    cancelled = run_cli(database_url, "cancel", str(available))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {available} cancelled" in cancelled.stdout

    # claim, run and acknowledge (and fail three times, then discard)
    first = worker_process("--burst", "--concurrency", "4")
    assert first.wait(60) == 0, first.output()
    ran = [single, *batch]
    assert states(db, [*ran, failing, scheduled, available]) == {
        **dict.fromkeys(ran, "completed"),
        failing: "discarded",
        scheduled: "cancelled",
        available: "cancelled",
    }
    assert all(starts(db, job_id) == [(1, first.process.pid)] for job_id in ran)
    assert [attempt for attempt, _ in starts(db, failing)] == [1, 2, 3]

    # retry: a completed job by the API, the discarded one by the CLI
    assert app.retry(batch[-1])
    retried = run_cli(database_url, "retry", str(failing))
    assert retried.returncode == 0, retried.stderr
    assert f"job {failing} will run again" in retried.stdout
    second = worker_process("--burst")
    assert second.wait(60) == 0, second.output()
    assert [attempt for attempt, _ in starts(db, batch[-1])] == [1, 2]
    assert [attempt for attempt, _ in starts(db, failing)] == [1, 2, 3, 4]
    assert states(db, [batch[-1], failing]) == {batch[-1]: "completed", failing: "discarded"}

    # the CLI lists them by id
    listed = run_cli(database_url, "jobs", "--limit", "100", "--json")
    assert listed.returncode == 0, listed.stderr
    listed_ids = {json.loads(line)["id"] for line in listed.stdout.splitlines()}
    assert listed_ids == {*ran, failing, scheduled, available}
    table = run_cli(database_url, "jobs", "--state", "discarded")
    assert table.returncode == 0, table.stderr
    assert str(failing) in table.stdout

    # rescue: a worker dies running a job; another takes it over (and, as the new leader,
    # prunes everything finished more than a second ago)
    finished = [*ran, failing, scheduled, available]
    doomed = worker_process("--concurrency", "2")
    doomed.wait_for_log("listening on")
    value(db, "SELECT pg_advisory_lock(%s)", LOCK)  # the lost job runs until the kill, however late
    lost = jobs_app.waits_for_lock.enqueue(LOCK)
    eventually(lambda: starts(db, lost) == [(1, doomed.process.pid)])
    retain = {f"PGJOBS_RETAIN_{kind}": "1s" for kind in ("COMPLETED", "DISCARDED", "CANCELLED")}
    rescuer = worker_process(
        "--concurrency", "4", "--heartbeat-interval", "0.5", "--shutdown-timeout", "1", env=retain
    )
    rescuer.wait_for_log("listening on")
    eventually(
        lambda: value(db, "SELECT now() - max(finished_at) > interval '1.2 s' FROM pgjobs.jobs")
    )  # so the new leader's first prune takes every one of them
    doomed.signal(signal.SIGKILL)
    doomed.wait()
    eventually(lambda: starts(db, lost) == [(1, doomed.process.pid), (2, rescuer.process.pid)])
    value(db, "SELECT pg_advisory_unlock(%s)", LOCK)
    eventually(lambda: states(db, [lost]) == {lost: "completed"})
    reason = value(db, "SELECT errors -> 0 ->> 'message' FROM pgjobs.jobs WHERE id = %s", lost)
    assert "was lost while running this job" in reason
    eventually(lambda: states(db, finished) == {})  # pruned
    rescuer.wait_for_log("pruned")

    # cancel of running jobs: the API and the CLI
    by_api = jobs_app.until_cancelled.enqueue()
    by_cli = jobs_app.until_cancelled.enqueue()
    eventually(lambda: len(starts(db, by_api)) == len(starts(db, by_cli)) == 1)
    assert app.cancel(by_api) == "cancelling"
    cancelling = run_cli(database_url, "cancel", str(by_cli))
    assert cancelling.returncode == 0, cancelling.stderr
    assert f"job {by_cli} is running" in cancelling.stdout
    eventually(lambda: states(db, [by_api, by_cli]) == {by_api: "cancelled", by_cli: "cancelled"})
    saw = "SELECT count(*) FROM ledger WHERE job_id = ANY(%s) AND event = 'saw-cancel'"
    assert value(db, saw, [by_api, by_cli]) == 2

    # hand-back at shutdown
    held = jobs_app.sleepy.enqueue(60, "held")
    eventually(lambda: len(starts(db, held)) == 1)
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait(15) == 0, rescuer.output()
    assert db.execute(
        "SELECT state, attempt, worker_id FROM pgjobs.jobs WHERE id = %s", (held,)
    ).fetchone() == ("available", 0, None)

    print(f"ids {START}..{held} (2^31 = {INT4_LIMIT}): every path ran without error")
    for worker in (first, second, doomed, rescuer):
        assert "Traceback" not in worker.output()
