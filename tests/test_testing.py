"""pgjobs.testing: fake mode records and drains, inline mode runs only what committed, real
mode drains through the worker, the clock moves due times, and a crash run kills a real worker
at a job's checkpoint."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import pgjobs
from pgjobs.testing import (
    Clock,
    DrainLimitReached,
    FakeQueue,
    Inline,
    JobsFailed,
    drain,
    drain_async,
    fake,
    inline,
)
from tests import testing_app
from tests.helpers import rows
from tests.testing_app import (
    charge_naively,
    charge_once,
    debounced,
    exits,
    fan_out,
    flaky,
    forever,
    greet,
    hangs,
    hangs_async,
    note,
    once,
    raises_base_exception,
    report,
)


class Untouchable:
    """A connection that fails the test if pgjobs uses it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"fake mode used the connection ({name})")


@pytest.fixture
def pgjobs_app() -> pgjobs.App:
    testing_app.ran.clear()
    return testing_app.app


@pytest.fixture
def pgjobs_real(pgjobs_real: pgjobs.App, database_url: str) -> Iterator[pgjobs.App]:
    """The plugin's, with the jobs' ledger connections closed before the database goes back."""
    yield pgjobs_real
    testing_app.ledger.close()


@pytest.fixture
def jobs(pgjobs_fake: FakeQueue) -> FakeQueue:
    return pgjobs_fake


# -- fake mode -----------------------------------------------------------------------------


def test_fake_records_every_way_to_enqueue_and_writes_nothing(jobs: FakeQueue) -> None:
    first = greet.enqueue("ada")
    greet.using(Untouchable()).enqueue("grace", punctuation="?")
    asyncio.run(greet.enqueue_async("alan"))
    testing_app.app.enqueue_many([greet.call("edsger"), greet.call("barbara")])
    later = datetime.now(UTC) + timedelta(hours=1)
    greet.options(queue="vip", priority=-5).enqueue_at(later, "linus")

    assert [r.args for r in jobs.enqueued_jobs(greet)] == [
        ["ada"],
        ["grace"],
        ["alan"],
        ["edsger"],
        ["barbara"],
        ["linus"],
    ]
    assert jobs.assert_enqueued(greet, args=["ada"]).id == first
    jobs.assert_enqueued(greet, args=("grace",), kwargs={"punctuation": "?"})
    jobs.assert_enqueued("greet", queue="vip", priority=-5, at=later)
    jobs.assert_not_enqueued(greet, args=["nobody"])
    jobs.assert_not_enqueued(fan_out)
    assert testing_app.ran == []  # recorded, not run


def test_fake_checks_arguments_as_a_real_enqueue_does(jobs: FakeQueue) -> None:
    with pytest.raises(TypeError, match="greet"):
        greet.enqueue("ada", "!", "extra")  # type: ignore[call-arg]
    with pytest.raises(pgjobs.ValidationError):
        greet.enqueue(object())  # type: ignore[arg-type]
    assert jobs.enqueued_jobs() == []


def test_a_failed_assertion_lists_what_was_enqueued(jobs: FakeQueue) -> None:
    greet.enqueue("ada")
    with pytest.raises(AssertionError) as failure:
        jobs.assert_enqueued(greet, args=["grace"])
    message = str(failure.value)
    assert "expected greet(args=['grace']) to be enqueued" in message
    assert "greet('ada') id=1 queue='default' state=available" in message
    with pytest.raises(AssertionError, match=r"expected no greet\(\) to be enqueued, found <greet"):
        jobs.assert_not_enqueued(greet)
    jobs.clear()
    with pytest.raises(AssertionError, match="nothing was enqueued"):
        jobs.assert_enqueued(greet)


def test_asserting_on_a_job_the_app_does_not_have_names_it(jobs: FakeQueue) -> None:
    stranger = pgjobs.App().job(name="stranger")(lambda: None)
    with pytest.raises(pgjobs.UnknownJobError, match="stranger is not a job registered"):
        jobs.assert_enqueued(stranger)
    with pytest.raises(pgjobs.UnknownJobError, match="sent_mail is not a job registered"):
        jobs.assert_not_enqueued("sent_mail")
    with pytest.raises(pgjobs.UnknownJobError, match="print"):
        jobs.enqueued_jobs(print)  # type: ignore[arg-type]


def test_drain_runs_jobs_and_the_jobs_they_enqueue(jobs: FakeQueue) -> None:
    fan_out.enqueue(2)
    summary = jobs.drain()
    assert summary.completed == 3 and summary.runs == 3
    assert testing_app.ran == [
        ("fan_out", 2),
        ("greet", ("guest 0", "!", 2, 1)),  # current_job() works inside
        ("greet", ("guest 1", "!", 3, 1)),
    ]
    assert {r.state for r in jobs.enqueued_jobs()} == {"completed"}
    assert jobs.drain().runs == 0


def test_drain_retries_without_waiting_for_the_back_off(jobs: FakeQueue) -> None:
    flaky.enqueue(2)
    summary = jobs.drain()
    assert (summary.failed, summary.completed) == (2, 1)
    assert testing_app.ran == [("flaky", 1), ("flaky", 2), ("flaky", 3)]
    (record,) = jobs.enqueued_jobs(flaky)
    assert [e["message"] for e in record.errors] == ["attempt 1 fails", "attempt 2 fails"]


def test_a_job_that_always_fails_ends_the_drain_and_is_reported(jobs: FakeQueue) -> None:
    flaky.enqueue(99)
    with pytest.raises(JobsFailed) as failure:
        jobs.drain()
    assert "1 job(s) discarded" in str(failure.value)
    assert "after 3 attempt(s): builtins.RuntimeError: attempt 3 fails" in str(failure.value)
    assert testing_app.ran == [("flaky", 1), ("flaky", 2), ("flaky", 3)]  # max_attempts

    flaky.enqueue(99)
    summary = jobs.drain(raise_on_discard=False)
    assert (summary.failed, summary.discarded) == (2, 1)


def test_a_job_calling_sys_exit_is_contained(jobs: FakeQueue) -> None:
    exits.enqueue()
    summary = jobs.drain(raise_on_discard=False)
    assert (summary.failed, summary.discarded) == (1, 1)
    assert testing_app.ran == [("exits", 1), ("exits", 2)]
    assert jobs.enqueued_jobs(exits)[0].errors[-1]["class"] == "builtins.SystemExit"


def test_jobs_that_hang_past_their_timeout_do_not_hold_up_the_drain(jobs: FakeQueue) -> None:
    testing_app.released.clear()
    try:
        hangs.enqueue()
        hangs_async.enqueue()
        raises_base_exception.enqueue()
        greet.enqueue("after them")
        summary = jobs.drain(raise_on_discard=False)
    finally:
        testing_app.released.set()  # the threads left running end
    assert (summary.failed, summary.discarded, summary.completed) == (2, 3, 1)
    errors = {r.name: r.errors[-1]["class"] for r in jobs.enqueued_jobs() if r.errors}
    assert errors == {
        "hangs": "pgjobs.JobTimeout",
        "hangs_async": "pgjobs.JobTimeout",
        "raises_base_exception": "builtins.KeyboardInterrupt",
    }
    assert ("greet", ("after them", "!", 4, 1)) in testing_app.ran  # on a thread of its own


def test_a_job_that_enqueues_itself_forever_stops_at_the_limit(jobs: FakeQueue) -> None:
    forever.enqueue()
    limit = r"after 50 runs \(max_runs\) with 1 job\(s\) still waiting"
    with pytest.raises(DrainLimitReached, match=limit):
        jobs.drain(max_runs=50)


def test_scheduled_jobs_run_early_only_when_asked(jobs: FakeQueue) -> None:
    greet.enqueue_in(timedelta(hours=1), "later")
    greet.enqueue("now")
    assert jobs.drain().completed == 1
    assert [r[1][0] for r in testing_app.ran] == ["now"]
    assert jobs.drain(run_scheduled=True).completed == 1
    assert [r[1][0] for r in testing_app.ran] == ["now", "later"]


def test_the_clock_makes_fake_jobs_due(jobs: FakeQueue, pgjobs_clock: Clock) -> None:
    greet.enqueue_in(timedelta(minutes=10), "soon")
    pgjobs_clock.advance(timedelta(minutes=9))
    assert jobs.drain().runs == 0
    pgjobs_clock.advance(timedelta(minutes=1))
    assert jobs.drain().completed == 1
    with pytest.raises(ValueError, match="negative"):
        pgjobs_clock.advance(timedelta(seconds=-1))


def test_a_unique_duplicate_returns_the_first_id(jobs: FakeQueue) -> None:
    first = once.enqueue("k")
    again = once.enqueue("k")
    other = once.enqueue("j")
    assert (again, again.duplicate, first.duplicate) == (first, True, False)
    assert other != first
    jobs.drain()
    assert not once.enqueue("k").duplicate  # the holder completed: the key is free


def test_a_replacing_unique_duplicate_debounces_the_waiting_job(jobs: FakeQueue) -> None:
    first = debounced.enqueue_in(timedelta(minutes=5), "k", "draft")
    again = debounced.enqueue_in(timedelta(minutes=10), "k", "final")
    assert (again, again.duplicate) == (first, True)
    (record,) = jobs.enqueued_jobs(debounced)
    assert record.args == ["k", "final"]
    assert jobs.drain(run_scheduled=True).completed == 1
    assert testing_app.ran == [("debounced", ("k", "final"))]


def test_batch_callbacks_run_once_the_batch_ends(jobs: FakeQueue) -> None:
    app = testing_app.app
    with app.batch(on_success=report.call("ok"), on_complete=report.call("done")) as batch:
        batch.enqueue_many([greet.call("a"), greet.call("b")])
    jobs.assert_enqueued(greet, args=["a"], batch_id=batch.id)
    jobs.assert_not_enqueued(report)  # not before its jobs end
    jobs.drain()
    assert testing_app.ran[-2:] == [("report", ("ok", batch.id)), ("report", ("done", batch.id))]

    testing_app.ran.clear()
    with app.batch(on_success=report.call("ok"), on_complete=report.call("done")) as failing:
        failing.add(flaky.call(99))
    jobs.drain(raise_on_discard=False)
    assert testing_app.ran[-1] == ("report", ("done", failing.id))  # no on_success
    with pytest.raises(pgjobs.ValidationError, match="finished"):
        app.add_to_batch(failing.id, [greet.call("late")])
    with pytest.raises(pgjobs.ValidationError, match="not registered"):
        app.batch(on_success=pgjobs.App().job(name="x")(lambda: None).call())


def test_fake_mode_in_async_code() -> None:
    async def scenario() -> None:
        with fake(testing_app.app) as queue:
            await greet.enqueue_async("ada")
            async with await testing_app.app.batch_async(on_complete=report.call("b")) as batch:
                await batch.add(greet.call("grace"))
            summary = await queue.drain_async()
            assert summary.completed == 3
            with pytest.raises(RuntimeError, match="drain_async"):
                queue.drain()

    testing_app.ran.clear()
    asyncio.run(scenario())
    assert [name for name, _ in testing_app.ran] == ["greet", "greet", "report"]


def test_an_app_leaves_fake_mode_at_the_end_of_the_block(database_url: str) -> None:
    app = testing_app.app
    app.configure(database_url=database_url)
    try:
        with fake(app):
            greet.enqueue("ada")
            with pytest.raises(RuntimeError, match="already"), fake(app):
                pass
        greet.enqueue("grace")  # written this time
        assert [j.args for j in app.list_jobs()] == [["grace"]]
    finally:
        app.close()
        app.configure()


# -- inline mode ---------------------------------------------------------------------------


def labels(db: psycopg.Connection[Any], event: str = "start") -> list[str]:
    query = "SELECT label FROM ledger WHERE event = %s ORDER BY at"
    return [label for (label,) in rows(db, query, event)]


def test_inline_runs_a_job_once_its_transaction_commits(
    pgjobs_inline: Inline, database_url: str, db: psycopg.Connection[Any]
) -> None:
    note.enqueue("own pool")  # commits at once: runs before enqueue returns
    assert labels(db) == ["own pool"]

    with psycopg.connect(database_url) as conn:
        note.using(conn).enqueue("committed")
        assert labels(db) == ["own pool"]
        conn.commit()
        pgjobs_inline.wait()
    assert labels(db) == ["own pool", "committed"]


def test_inline_never_runs_a_job_whose_transaction_rolled_back(
    pgjobs_inline: Inline, database_url: str, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url) as conn:
        note.using(conn).enqueue("rolled back")
        conn.rollback()
        with conn.transaction():
            note.using(conn).enqueue("kept")
            with pytest.raises(ZeroDivisionError), conn.transaction():  # a savepoint
                note.using(conn).enqueue("savepoint rolled back")
                raise ZeroDivisionError
    pgjobs_inline.wait()
    assert labels(db) == ["kept"]
    assert rows(db, "SELECT args FROM pgjobs.jobs") == [(["kept"],)]


def test_inline_runs_on_a_sqlalchemy_commit_only(
    pgjobs_inline: Inline, database_url: str, db: psycopg.Connection[Any]
) -> None:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session, session.begin():
            note.using(session).enqueue("session")
            session.execute(text("SELECT 1"))
            assert labels(db) == []
        assert labels(db) == ["session"]  # ran at the commit

        with Session(engine) as session:
            note.using(session).enqueue("session rolled back")
            with session.begin_nested():
                note.using(session).enqueue("nested")
            nested = session.begin_nested()
            note.using(session).enqueue("savepoint rolled back")
            nested.rollback()
            session.rollback()
        pgjobs_inline.wait()
        assert labels(db) == ["session"]
    finally:
        engine.dispose()


def test_inline_in_async_code(
    pgjobs_real: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    async def scenario() -> None:
        async with inline(pgjobs_real) as runner:
            await note.enqueue_async("own pool")  # committed: ran before enqueue returned
            assert labels(db) == ["own pool"]
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                await note.using(conn).enqueue_async("rolled back")
                await conn.rollback()
                await note.using(conn).enqueue_async("committed")
                await conn.commit()
            await runner.wait_async()
            assert labels(db) == ["own pool", "committed"]
            async with await pgjobs_real.batch_async(on_complete=note.call("batch done")) as b:
                await b.add(note.call("in batch"))
        await pgjobs_real.aclose()

    asyncio.run(scenario())
    assert labels(db) == ["own pool", "committed", "in batch", "batch done"]


# -- real mode -----------------------------------------------------------------------------


def test_drain_runs_due_jobs_through_the_worker_and_the_clock_moves_time(
    pgjobs_real: pgjobs.App, pgjobs_clock: Clock, db: psycopg.Connection[Any]
) -> None:
    note.enqueue("now")
    note.enqueue_in(timedelta(hours=2), "in two hours")
    drain(pgjobs_real)
    assert labels(db) == ["now"]
    pgjobs_clock.advance(timedelta(hours=1))
    drain(pgjobs_real)
    assert labels(db) == ["now"]
    pgjobs_clock.advance(timedelta(hours=1))
    drain(pgjobs_real)
    assert labels(db) == ["now", "in two hours"]
    states = rows(db, "SELECT state FROM pgjobs.jobs WHERE name = 'note'")
    assert states == [("completed",), ("completed",)]


def test_the_clock_enqueues_each_cron_tick_within_the_time_it_moves(
    pgjobs_real: pgjobs.App, pgjobs_clock: Clock, db: psycopg.Connection[Any]
) -> None:
    start = pgjobs_clock.now()
    pgjobs_clock.advance(timedelta(minutes=30))
    drain(pgjobs_real)
    ticks = sorted(datetime.fromisoformat(label) for label in labels(db, "tick"))
    assert len(ticks) == 6
    assert start < ticks[0] <= start + timedelta(minutes=5)
    assert all(b - a == timedelta(minutes=5) for a, b in itertools.pairwise(ticks))

    pgjobs_clock.advance(timedelta(minutes=10))
    drain(pgjobs_real)
    later = sorted(datetime.fromisoformat(label) for label in labels(db, "tick"))[6:]
    assert later == [ticks[-1] + timedelta(minutes=5), ticks[-1] + timedelta(minutes=10)]
    (last_tick,) = rows(db, "SELECT last_tick_at FROM pgjobs.cron_entries")[0]
    assert last_tick == later[-1]


def test_drain_async_runs_jobs_on_the_tests_loop(
    pgjobs_real: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    async def scenario() -> None:
        await note.enqueue_async("async")
        with pytest.raises(RuntimeError, match="drain_async"):
            drain(pgjobs_real)
        await drain_async(pgjobs_real)
        await pgjobs_real.aclose()

    asyncio.run(scenario())
    assert labels(db) == ["async"]


# -- crash runs ----------------------------------------------------------------------------


def charges(db: psycopg.Connection[Any], job_id: int) -> list[tuple[Any, ...]]:
    return rows(db, "SELECT attempt, event FROM ledger WHERE job_id = %s ORDER BY at", job_id)


def test_a_crash_at_the_checkpoint_leaves_an_idempotent_job_charging_once(
    pgjobs_crash: Any, db: psycopg.Connection[Any]
) -> None:
    job_id = charge_once.enqueue("order 1")
    crash = pgjobs_crash(job_id, at="charged")
    assert "receipt" not in crash.output
    assert charges(db, job_id) == [(1, "charged"), (2, "receipt")]
    (errors,) = rows(db, "SELECT errors FROM pgjobs.jobs WHERE id = %s", job_id)[0]
    assert "killed by pgjobs.testing" in errors[0]["message"]


def test_a_crash_at_the_checkpoint_catches_a_job_that_charges_twice(
    pgjobs_crash: Any, db: psycopg.Connection[Any]
) -> None:
    job_id = charge_naively.enqueue("order 2")
    pgjobs_crash(job_id, at="charged")
    assert charges(db, job_id) == [(1, "charged"), (2, "charged"), (2, "receipt")]


def test_cut_sessions_at_the_checkpoint_run_the_job_again_after_its_end(
    pgjobs_crash: Any, db: psycopg.Connection[Any]
) -> None:
    once_id = charge_once.enqueue("order 3")
    crash = pgjobs_crash(once_id, at="charged", how="disconnect")
    assert charges(db, once_id) == [(1, "charged"), (1, "receipt"), (2, "receipt")]
    assert rows(db, "SELECT state, attempt FROM pgjobs.jobs WHERE id = %s", once_id) == [
        ("completed", 2)
    ]
    assert "reconnecting" in crash.output

    twice_id = charge_naively.enqueue("order 4")
    pgjobs_crash(twice_id, at="charged", how="disconnect")
    assert charges(db, twice_id) == [(1, "charged"), (1, "receipt"), (2, "charged"), (2, "receipt")]


def test_a_crash_run_whose_job_never_reaches_the_checkpoint_says_so(
    pgjobs_crash: Any,
) -> None:
    job_id = note.enqueue("no checkpoint")
    with pytest.raises(AssertionError, match="before a job reached checkpoint\\('charged'\\)"):
        pgjobs_crash(job_id, at="charged")


def test_fake_mode_runs_the_enqueue_and_run_middleware_and_keeps_the_meta() -> None:
    """A fake enqueue passes the app's enqueue middleware (the meta it adds is recorded), and
    drain() runs the job inside the run middleware, which sees that meta."""
    app = pgjobs.App()
    seen: list[Any] = []

    @app.enqueue_middleware
    def tag(job: pgjobs.Enqueuing) -> Iterator[None]:
        job.meta["request_id"] = "r-1"
        yield

    @app.run_middleware
    def look(job: pgjobs.JobContext) -> Iterator[None]:
        seen.append(dict(job.meta))
        yield

    @app.job
    def hello(name: str) -> None:
        seen.append(pgjobs.current_job().meta["request_id"])

    with fake(app) as queue:
        hello.options(meta={"tenant": "acme"}).enqueue("ada")
        assert queue.assert_enqueued(hello, args=["ada"]).meta == {
            "tenant": "acme",
            "request_id": "r-1",
        }
        assert queue.drain().completed == 1
    assert seen == [{"tenant": "acme", "request_id": "r-1"}, "r-1"]


def test_drain_keeps_what_each_job_returned() -> None:
    app = pgjobs.App()

    @app.job
    def area(width: int, height: int) -> dict[str, int]:
        return {"area": width * height}

    with fake(app) as queue:
        area.enqueue(3, 4)
        queue.drain()
        assert queue.assert_enqueued(area, args=[3, 4]).result == {"area": 12}
