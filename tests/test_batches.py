"""Batches: callbacks enqueued exactly once when a batch's jobs have all ended, whatever ends them
(concurrent workers, a SIGKILLed worker, discards and retries, jobs added while it runs)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._batches import added, callback_template
from tests import jobs_app
from tests.helpers import WorkerProcess, count, eventually, invoke, rows, run_burst

StartWorker = Callable[..., WorkerProcess]

ON_SUCCESS = jobs_app.batch_callback.call("on_success")
ON_COMPLETE = jobs_app.batch_callback.call("on_complete")

other_app = pgjobs.App()


@other_app.job(name="batch_callback")
def foreign_callback(kind: str) -> None:
    """Registered under the same name as the tests' callback, but in another app."""


def callbacks(db: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    """``(kind, batch id, runs)`` for each callback in the ledger."""
    return [
        (label.removeprefix("batch_callback:"), event, runs)
        for label, event, runs in rows(
            db,
            "SELECT label, event, count(*) FROM ledger WHERE label LIKE 'batch_callback:%%'"
            " GROUP BY label, event ORDER BY event::bigint, label",
        )
    ]


def status(db: psycopg.Connection[Any], batch_id: int) -> tuple[Any, ...]:
    """``(total, pending, failed, sealed, success fired, complete fired)`` by plain SQL."""
    found = rows(
        db,
        "SELECT total, pending, failed, sealed_at IS NOT NULL, success_job_id IS NOT NULL,"
        " complete_job_id IS NOT NULL FROM pgjobs.batches WHERE id = %s",
        batch_id,
    )
    return found[0]


# Pure: callback templates and the answer of an add, by table.

CALLBACK_CASES = [
    (ON_SUCCESS, None),
    (jobs_app.batch_callback.options(queue="reports", priority=3).call("x"), None),
    (foreign_callback.call("on_success"), "not registered in this app"),
    (jobs_app.batch_callback.options(delay=5).call("x"), "drop at= / delay="),
]


@pytest.mark.parametrize(("call", "problem"), CALLBACK_CASES)
def test_callback_templates_are_registered_jobs_taking_batch_id(
    call: pgjobs.JobCall, problem: str | None
) -> None:
    if problem is not None:
        with pytest.raises(pgjobs.ValidationError, match="on_success: ") as raised:
            callback_template(jobs_app.app.jobs, "on_success", call)
        assert problem in str(raised.value)
        return
    template = json.loads(callback_template(jobs_app.app.jobs, "on_success", call))
    assert template["name"] == "batch_callback"
    assert (template["args"], template["kwargs"]) == (json.loads(call.args_json), {})
    assert template["queue"] == call.options.queue or "default"
    assert template["max_attempts"] == jobs_app.batch_callback.max_attempts


def test_no_callback_is_no_template() -> None:
    assert callback_template(jobs_app.app.jobs, "on_complete", None) is None


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"found": True, "finished_at": None, "ids": [4, 5]}, [4, 5]),
        ({"found": False, "finished_at": None, "ids": []}, "there is no batch 7"),
        ({"found": True, "finished_at": datetime(2026, 1, 2), "ids": []}, "batch 7 finished at"),
    ],
)
def test_an_add_returns_the_ids_or_says_why_none(row: dict[str, Any], expected: Any) -> None:
    if isinstance(expected, list):
        assert added(7, row) == expected
        return
    with pytest.raises(pgjobs.ValidationError, match=expected):
        added(7, row)


# The database: counting and callbacks.


def test_many_batches_on_three_workers_fire_each_callback_exactly_once(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    sizes = 40, 10
    batches = [app.batch(on_success=ON_SUCCESS, on_complete=ON_COMPLETE) for _ in range(sizes[0])]
    for _ in range(sizes[1]):  # round-robin: each claim takes jobs of many batches
        for batch in batches:
            batch.add(jobs_app.batch_member.call(0.01))
    for batch in batches:
        batch.seal()
    for _ in range(3):
        worker_process("--concurrency", "16")

    expected = [(kind, str(b.id), 1) for b in batches for kind in ("on_complete", "on_success")]
    eventually(lambda: callbacks(db) == expected, timeout=60)
    eventually(
        lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state <> 'completed'") == 0
    )
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE name = 'batch_callback'") == 80
    assert rows(
        db,
        "SELECT DISTINCT total, pending, failed, success_job_id IS NOT NULL,"
        " complete_job_id IS NOT NULL, finished_at IS NOT NULL FROM pgjobs.batches",
    ) == [(10, 0, 0, True, True, True)]
    # The ids the batches hold are the callback jobs that ran for them, with their batch's id.
    assert (
        count(
            db,
            "SELECT count(*) FROM pgjobs.batches AS b JOIN pgjobs.jobs AS j"
            " ON j.id IN (b.success_job_id, b.complete_job_id)"
            " WHERE j.batch_id = b.id AND j.state = 'completed'",
        )
        == 80
    )
    # Every job knew its batch (current_job().batch_id), and ran on one of the three workers.
    assert (
        count(
            db,
            "SELECT count(*) FROM ledger AS l JOIN pgjobs.jobs AS j ON j.id = l.job_id"
            " WHERE l.label = 'batch_member' AND l.event = j.batch_id::text",
        )
        == 400
    )
    spread = count(
        db,
        "SELECT count(*) FROM (SELECT 1 FROM ledger WHERE label = 'batch_member'"
        " GROUP BY event HAVING count(DISTINCT pid) > 1) AS b",
    )
    assert spread >= 20  # most batches ended on several workers at once


def test_a_sigkilled_worker_mid_batch_still_ends_with_one_callback_each(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    doomed = worker_process("--concurrency", "20")
    doomed.wait_for_log("listening on")
    ids = []
    for _ in range(4):
        with app.batch(on_success=ON_SUCCESS, on_complete=ON_COMPLETE) as batch:
            # the first attempts outlast any start-up of the survivor: the kill finds them all
            batch.enqueue_many(
                jobs_app.batch_member.call(first_attempt_seconds=300) for _ in range(5)
            )
        ids.append(batch.id)
    eventually(lambda: count(db, "SELECT count(*) FROM ledger") == 20)
    survivor = worker_process("--concurrency", "20")
    survivor.wait_for_log("listening on")
    doomed.signal(signal.SIGKILL)
    doomed.wait()

    expected = [(kind, str(i), 1) for i in ids for kind in ("on_complete", "on_success")]
    eventually(lambda: callbacks(db) == expected, timeout=30)
    assert count(db, "SELECT count(*) FROM ledger WHERE attempt = 2") == 20  # all were rescued
    assert [status(db, i) for i in ids] == [(5, 0, 0, True, True, True)] * 4
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE name = 'batch_callback'") == 8


def test_a_discarded_job_fires_on_complete_and_its_successful_retry_on_success(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    with app.batch(on_success=ON_SUCCESS, on_complete=ON_COMPLETE, description="import") as batch:
        batch.add(jobs_app.batch_member.call())
        failing = batch.add(jobs_app.batch_member_fails_once.call())
        batch.add(jobs_app.batch_member.call())
    run_burst(app)
    assert callbacks(db) == [("on_complete", str(batch.id), 1)]
    before = app.batch_status(batch.id)
    assert before is not None
    assert (before.total, before.pending, before.succeeded, before.failed) == (
        3,
        0,
        2,
        1,
    )
    assert before.description == "import" and before.success_job_id is None
    member = app.get_job(failing)
    assert member is not None and member.batch_id == batch.id  # as `pgjobs job ID` shows it

    assert app.retry(failing)
    assert status(db, batch.id)[:3] == (3, 1, 0)  # back from the dead set: pending again
    run_burst(app)
    assert callbacks(db) == [("on_complete", str(batch.id), 1), ("on_success", str(batch.id), 1)]
    assert status(db, batch.id) == (3, 0, 0, True, True, True)


def test_a_cancelled_job_counts_as_failed_and_pruning_changes_no_counter(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    with app.batch(on_success=ON_SUCCESS, on_complete=ON_COMPLETE) as batch:
        done = batch.add(jobs_app.batch_member.call())
        cancelled = batch.add(jobs_app.batch_member.options(delay=3600).call())
    run_burst(app)
    assert status(db, batch.id)[:3] == (2, 1, 0)
    assert app.cancel(cancelled) == "cancelled"
    assert status(db, batch.id)[:3] == (2, 0, 1)
    db.execute("DELETE FROM pgjobs.jobs WHERE id IN (%s, %s)", (done, cancelled))
    assert status(db, batch.id) == (2, 0, 1, True, False, True)


def test_a_job_that_adds_to_its_own_batch_holds_the_callbacks_back(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    with app.batch(on_success=ON_SUCCESS, on_complete=ON_COMPLETE) as batch:
        batch.add(jobs_app.batch_grows.call(3, 0.3))
    worker_process("--concurrency", "5")
    eventually(lambda: len(callbacks(db)) == 2, timeout=20)
    assert status(db, batch.id) == (4, 0, 0, True, True, True)
    members_finished, callbacks_started = rows(
        db,
        "SELECT (SELECT max(finished_at) FROM pgjobs.jobs"
        "         WHERE batch_id = %s AND name <> 'batch_callback'),"
        " (SELECT min(attempted_at) FROM pgjobs.jobs WHERE name = 'batch_callback')",
        batch.id,
    )[0]
    assert members_finished <= callbacks_started
    assert count(db, "SELECT count(*) FROM ledger WHERE label = 'batch_member'") == 3


def test_a_batch_whose_jobs_ended_before_it_was_sealed_fires_at_the_seal(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    batch = app.batch(on_success=ON_SUCCESS, on_complete=ON_COMPLETE)
    batch.enqueue_many([jobs_app.batch_member.call(), jobs_app.batch_member.call()])
    run_burst(app)
    assert status(db, batch.id) == (2, 0, 0, False, False, False)
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE name = 'batch_callback'") == 0
    batch.seal()
    assert status(db, batch.id) == (2, 0, 0, True, True, True)
    batch.seal()  # sealing again changes nothing
    app.seal_batch(batch.id)
    run_burst(app)
    assert callbacks(db) == [("on_complete", str(batch.id), 1), ("on_success", str(batch.id), 1)]


def test_an_empty_sealed_batch_fires_at_once_and_an_exception_leaves_it_unsealed(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    with app.batch(on_complete=ON_COMPLETE) as empty:
        pass
    assert status(db, empty.id) == (0, 0, 0, True, False, True)
    with pytest.raises(RuntimeError), app.batch(on_complete=ON_COMPLETE) as broken:
        broken.add(jobs_app.batch_member.call())
        raise RuntimeError("the creating code failed")
    assert status(db, broken.id) == (1, 1, 0, False, False, False)


def test_a_rolled_back_batch_leaves_no_batch_and_no_jobs(
    app: pgjobs.App, db: psycopg.Connection[Any], database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        with app.batch(on_success=ON_SUCCESS, on_complete=ON_COMPLETE, conn=conn) as batch:
            batch.enqueue_many([jobs_app.batch_member.call()] * 3)
        inside = app.batch_status(batch.id, conn=conn)
        assert inside is not None and (inside.total, inside.sealed) == (3, True)
        conn.rollback()
    assert count(db, "SELECT count(*) FROM pgjobs.batches") == 0
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_async_batches_commit_with_the_callers_transaction(
    app: pgjobs.App, db: psycopg.Connection[Any], database_url: str
) -> None:
    async def build() -> int:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            batch = await app.batch_async(on_complete=ON_COMPLETE, conn=conn)
            async with batch:
                await batch.add(jobs_app.batch_member.call())
                await app.add_to_batch_async(batch.id, [jobs_app.batch_member.call()], conn=conn)
            await conn.commit()
        found = await app.batch_status_async(batch.id)
        assert found is not None and found.total == 2
        assert [b.id for b in await app.list_batches_async(limit=1)] == [batch.id]
        await app.aclose()
        return batch.id

    batch_id = asyncio.run(build())
    run_burst(app)
    assert callbacks(db) == [("on_complete", str(batch_id), 1)]


# Bad input: refused before any row is written, the caller's transaction usable.


def test_an_unregistered_callback_is_refused_and_nothing_is_written(
    app: pgjobs.App, db: psycopg.Connection[Any], database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(
            pgjobs.ValidationError, match="on_complete: job 'batch_callback' is not"
        ):
            app.batch(on_complete=foreign_callback.call("x"), conn=conn)
        with pytest.raises(pgjobs.ValidationError, match="on_success: a callback runs when"):
            app.batch(on_success=jobs_app.noop.options(delay=1).call(), conn=conn)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.commit()
    assert count(db, "SELECT count(*) FROM pgjobs.batches") == 0


def test_adding_to_a_finished_or_missing_batch_is_refused_and_nothing_is_written(
    app: pgjobs.App, db: psycopg.Connection[Any], database_url: str
) -> None:
    with app.batch(on_complete=ON_COMPLETE) as batch:
        batch.add(jobs_app.batch_member.call())
    run_burst(app)
    with psycopg.connect(database_url) as conn:
        with pytest.raises(pgjobs.ValidationError, match=f"batch {batch.id} finished at"):
            app.add_to_batch(batch.id, [jobs_app.batch_member.call()], conn=conn)
        with pytest.raises(pgjobs.ValidationError, match="there is no batch 999"):
            app.add_to_batch(999, [jobs_app.batch_member.call()], conn=conn)
        with pytest.raises(pgjobs.ValidationError, match="there is no batch 999"):
            app.seal_batch(999, conn=conn)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.commit()
    assert status(db, batch.id)[:3] == (1, 0, 0)
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 2  # the member and its callback


def test_plain_sql_cannot_add_a_job_to_a_batch_that_does_not_exist(
    db: psycopg.Connection[Any],
) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="there is no batch 5"):
        db.execute("INSERT INTO pgjobs.jobs (name, batch_id) VALUES ('batch_member', 5)")


# The CLI.


def test_the_cli_shows_a_batch_and_lists_batches(app: pgjobs.App, database_url: str) -> None:
    with app.batch(on_complete=ON_COMPLETE, description="nightly import") as batch:
        batch.add(jobs_app.batch_member.call())
    shown = invoke(database_url, "batch", str(batch.id), "--json")
    assert shown.returncode == 0, shown.stderr
    assert {k: v for k, v in json.loads(shown.stdout).items() if k in ("total", "pending")} == {
        "total": 1,
        "pending": 1,
    }
    table = invoke(database_url, "batches")
    assert table.returncode == 0, table.stderr
    assert "nightly import" in table.stdout and "pending" in table.stdout.splitlines()[0]
    missing = invoke(database_url, "batch", "999")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == "Error: no batch 999"
    assert "Traceback" not in missing.stderr


def batch_updates(conn: psycopg.Connection[Any]) -> int:
    """How many rows of ``batches`` this connection's transaction has updated so far."""
    return count(
        conn,
        "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = 'pgjobs.batches'::regclass",
    )


def test_jobs_added_in_one_statement_are_counted_once_and_plain_inserts_still_count(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """A large addition is counted by one update of the batch (row by row, 30,000 jobs took 12 s),
    and an insert of the caller's own into the batch, in the same transaction, is still counted
    by the row trigger: the addition's setting does not outlive its statement. The previous
    release's count_added_jobs() changes nothing, whoever calls it (the owner, here)."""
    with psycopg.connect(app.settings.database_url) as conn:
        with app.batch(on_complete=ON_COMPLETE, conn=conn) as batch:
            before = batch_updates(conn)
            ids = batch.enqueue_many(jobs_app.batch_member.call() for _ in range(3000))
            assert batch_updates(conn) == before + 1
            conn.execute(
                "INSERT INTO pgjobs.jobs (name, batch_id) VALUES ('batch_member', %s)", (batch.id,)
            )
        conn.commit()
    assert len(ids) == 3000
    assert rows(db, "SELECT total, pending, failed FROM pgjobs.batches") == [(3001, 3001, 0)]
    db.execute("SELECT set_config('pgjobs.counting_batch', %s, false)", (str(batch.id),))
    db.execute("SELECT pgjobs.count_added_jobs(%s, 5)", (batch.id,))
    assert rows(db, "SELECT total, pending FROM pgjobs.batches") == [(3001, 3001)]


def test_a_unique_job_cannot_join_a_batch(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    with app.batch() as batch, pytest.raises(pgjobs.ValidationError, match="unique job"):
        batch.add(jobs_app.unique_noop.call("x"))
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_the_leader_prunes_finished_batches_once_their_jobs_are_pruned(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    """Only the batch that finished past the retention, and whose jobs (its callback included)
    the same prune run deleted, goes. One with a dead job (kept 30 days), one finished recently
    and one whose job still waits stay."""
    made = []
    for _ in range(3):
        with app.batch(on_complete=ON_COMPLETE) as batch:
            batch.add(jobs_app.batch_member.call())
        made.append(batch.id)
    pruned, dead_kept, recent = made
    run_burst(app)
    with app.batch(on_complete=ON_COMPLETE) as waiting:
        waiting.add(jobs_app.batch_member.call())
    db.execute(
        "UPDATE pgjobs.batches SET finished_at = now() - interval '2 hours',"
        " created_at = now() - interval '3 hours' WHERE id = ANY(%s)",
        ([pruned, dead_kept],),
    )
    db.execute(
        "UPDATE pgjobs.batches SET created_at = now() - interval '3 hours' WHERE id = %s",
        (waiting.id,),
    )
    db.execute(
        "UPDATE pgjobs.jobs SET finished_at = now() - interval '2 hours' WHERE batch_id = ANY(%s)",
        ([pruned, dead_kept],),
    )
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'discarded' WHERE id = (SELECT min(id) FROM pgjobs.jobs"
        " WHERE batch_id = %s)",
        (dead_kept,),
    )
    db.execute("DELETE FROM pgjobs.jobs WHERE batch_id = %s", (recent,))
    env = {"PGJOBS_RETAIN_COMPLETED": "1h", "PGJOBS_QUEUES": "nothing-here"}
    worker_process(env=env).wait_for_log("pruned 1 finished batch(es)")
    assert [r[0] for r in rows(db, "SELECT id FROM pgjobs.batches ORDER BY id")] == [
        dead_kept,
        recent,
        waiting.id,
    ]
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE batch_id = %s", pruned) == 0
