"""The seam: enqueue and run middleware, error and death handlers (``App.enqueue_middleware``,
``run_middleware``, ``on_error``, ``on_death``), and ``jobs.meta`` from enqueue to run."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import pgjobs
from pgjobs._middleware import Hook, run_chain, run_chain_async
from tests.helpers import count, rows, run_burst, run_cli, value

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")
WORKER = ["--app", "tests.middleware_app:app", "worker", "--burst"]


@pytest.fixture
def seamed(database_url: str) -> Iterator[pgjobs.App]:
    """A fresh app on this test's database with a ``noop`` job and a request-id middleware."""
    app = pgjobs.App(database_url=database_url)

    @app.enqueue_middleware
    def request_id(job: pgjobs.Enqueuing) -> Iterator[None]:
        job.meta["request_id"] = REQUEST_ID.get()
        yield

    yield app
    app.close()


def noop_of(app: pgjobs.App, **declared: Any) -> pgjobs.Job[..., None]:
    @app.job(name=declared.pop("name", "noop"), **declared)
    def noop(label: str = "") -> None:
        pass

    return noop


def metas(db: psycopg.Connection[Any]) -> list[Any]:
    return [meta for (meta,) in rows(db, "SELECT meta FROM pgjobs.jobs ORDER BY id")]


# --- enqueue -----------------------------------------------------------------------------------


def test_meta_is_stored_on_every_enqueue_path(
    seamed: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    noop = noop_of(seamed)
    unique = noop_of(seamed, name="unique", unique=True)
    REQUEST_ID.set("r1")
    one = noop.enqueue("single")
    assert (found := seamed.get_job(one)) is not None and found.meta == {"request_id": "r1"}
    seamed.enqueue_many([noop.call(str(i)) for i in range(3)])  # one INSERT
    seamed.enqueue_many([noop.call(str(i)) for i in range(600)])  # COPY
    unique.enqueue("u")
    unique.enqueue("u")  # a duplicate: nothing written
    seamed.enqueue_many([unique.call(str(i)) for i in range(600)])  # unique rows copied
    with seamed.batch() as batch:
        batch.add(noop.call("in a batch"))
    asyncio.run(noop.enqueue_async("async"))
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session, session.begin():
            noop.using(session).enqueue("session")
    finally:
        engine.dispose()
    REQUEST_ID.set("none")
    noop.options(meta={"tenant": "acme"}).enqueue("options")
    stored = metas(db)
    assert len(stored) == 1 + 3 + 600 + 1 + 600 + 1 + 1 + 1 + 1
    assert stored[:-1] == [{"request_id": "r1"}] * (len(stored) - 1)
    assert stored[-1] == {"tenant": "acme", "request_id": "none"}


def test_a_job_without_meta_stores_an_empty_object(database_url: str) -> None:
    app = pgjobs.App(database_url=database_url)
    noop = noop_of(app)
    try:
        ids = [noop.enqueue(), *app.enqueue_many([noop.call() for _ in range(600)])]
        assert {str(getattr(app.get_job(i), "meta", None)) for i in ids} == {"{}"}
    finally:
        app.close()


def test_middleware_change_options_and_see_the_arguments(
    seamed: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    seen = []

    @seamed.enqueue_middleware
    def reroute(job: pgjobs.Enqueuing) -> Iterator[None]:
        seen.append((job.name, job.args, dict(job.kwargs), job.queue, job.priority))
        if job.args == ("later",):
            job.queue, job.priority, job.max_attempts, job.delay = "slow", 7, 3, 3600
        yield

    noop = noop_of(seamed)
    noop.enqueue("now")
    noop.enqueue("later")
    assert seen == [("noop", ("now",), {}, "default", 0), ("noop", ("later",), {}, "default", 0)]
    assert rows(db, "SELECT queue, priority, max_attempts, state FROM pgjobs.jobs ORDER BY id") == [
        ("default", 0, 25, "available"),
        ("slow", 7, 3, "scheduled"),
    ]
    job = pgjobs.Enqueuing(noop.call("x"))
    with pytest.raises(AttributeError):
        job.args = ()  # type: ignore[misc]


def test_a_bad_option_or_meta_names_the_middleware_and_writes_nothing(
    seamed: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    @seamed.enqueue_middleware
    def hostile(job: pgjobs.Enqueuing) -> Iterator[None]:
        if job.args == ("priority",):
            job.priority = 10**6
        if job.args == ("queue",):
            job.queue = "no spaces allowed"
        if job.args == ("meta",):
            job.meta["when"] = object()
        if job.args == ("nul",):
            job.meta["text"] = "a\x00b"
        yield

    noop = noop_of(seamed)
    for bad, path in [("priority", "priority"), ("queue", "queue"), ("meta", "meta")]:
        with pytest.raises(pgjobs.ValidationError, match=r"test_middleware.*hostile") as caught:
            seamed.enqueue_many([noop.call("fine"), noop.call(bad)])
        assert caught.value.path.startswith(path)
    with pytest.raises(pgjobs.ValidationError, match="NUL"):
        noop.enqueue("nul")
    with pytest.raises(pgjobs.ValidationError, match=r'meta\["x"\]: object is not JSON'):
        noop.options(meta={"x": object()})
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_a_refusal_writes_nothing_and_leaves_the_callers_transaction_usable(
    seamed: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    class Refused(Exception):
        pass

    @seamed.enqueue_middleware
    def guard(job: pgjobs.Enqueuing) -> Iterator[None]:
        if job.args == ("refused",):
            raise Refused("no")
        yield

    noop = noop_of(seamed)
    with psycopg.connect(database_url) as conn:
        noop.using(conn).enqueue("kept")
        with pytest.raises(Refused):
            seamed.enqueue_many([noop.call("fine"), noop.call("refused")], conn=conn)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # still usable
        conn.commit()
    assert rows(db, "SELECT args FROM pgjobs.jobs") == [(["kept"],)]


def test_an_async_refusal_writes_nothing_and_leaves_the_callers_transaction_usable(
    seamed: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    left: list[str] = []

    @seamed.enqueue_middleware
    async def guard(job: pgjobs.Enqueuing) -> AsyncIterator[None]:
        if job.args == ("refused",):
            raise PermissionError("no")
        try:
            yield
        except PermissionError:
            left.append("told")
            raise

    noop = noop_of(seamed)

    async def enqueue() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await noop.using(conn).enqueue_async("kept")
            with pytest.raises(PermissionError):
                await seamed.enqueue_many_async(
                    [noop.call("fine"), noop.call("refused")], conn=conn
                )
            await conn.execute("SELECT 1")  # still usable
            await conn.commit()

    asyncio.run(enqueue())
    assert left == ["told"]  # the job that entered was told of the refusal
    assert rows(db, "SELECT args FROM pgjobs.jobs") == [(["kept"],)]


def test_middleware_run_in_registration_order_first_outermost(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    app = pgjobs.App(database_url=database_url)
    events: list[str] = []

    def recording(name: str) -> Any:
        def middleware(job: pgjobs.Enqueuing) -> Iterator[None]:
            events.append(f"{name} enters")
            job_id = yield
            events.append(f"{name} gets {job_id}")

        middleware.__qualname__ = name
        return middleware

    app.enqueue_middleware(recording("outer"))
    app.enqueue_middleware(recording("inner"))
    noop = noop_of(app)
    try:
        job_id = noop.enqueue()
    finally:
        app.close()
    assert events == [
        "outer enters",
        "inner enters",
        f"inner gets {job_id}",
        f"outer gets {job_id}",
    ]


def test_an_async_enqueue_middleware_needs_an_async_enqueue(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    app = pgjobs.App(database_url=database_url)

    @app.enqueue_middleware
    async def stamp(job: pgjobs.Enqueuing) -> AsyncIterator[None]:
        await asyncio.sleep(0)
        job.meta["stamped"] = True
        yield

    noop = noop_of(app)
    try:
        with pytest.raises(pgjobs.ConfigError, match=r"stamp is async: enqueue with enqueue_async"):
            noop.enqueue()
        job_id = asyncio.run(noop.enqueue_async())
        assert getattr(app.get_job(job_id), "meta", None) == {"stamped": True}
    finally:
        app.close()
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 1


def test_registration_checks_the_signature() -> None:
    app = pgjobs.App()

    def plain(job: Any) -> None:
        pass

    def two(job: Any, other: Any) -> Iterator[None]:
        yield

    def none() -> Iterator[None]:
        yield

    def handler_of_one(exc: BaseException) -> None:
        pass

    for register in (app.enqueue_middleware, app.run_middleware):
        with pytest.raises(pgjobs.ConfigError, match="plain: not a generator function"):
            register(plain)
        for wrong in (two, none):
            with pytest.raises(pgjobs.ConfigError, match="exactly one positional parameter"):
                register(wrong)
    for register_handler in (app.on_error, app.on_death):
        with pytest.raises(pgjobs.ConfigError, match="handler_of_one: must take exactly two"):
            register_handler(handler_of_one)
    assert not app.seam.enqueue and not app.seam.run and not app.seam.on_error


# --- run: the chain as pure code ---------------------------------------------------------------


def test_run_chain_skip_swallow_replace_and_name_the_failing_middleware() -> None:
    context: Any = None
    ran: list[str] = []

    def hook(func: Any) -> Hook:
        return Hook(func, func.__name__, False)

    def skip(job: Any) -> Iterator[None]:
        return
        yield

    def swallow(job: Any) -> Iterator[None]:
        try:
            yield
        except ValueError:
            ran.append("swallowed")

    def replace(job: Any) -> Iterator[None]:
        try:
            yield
        except ValueError as exc:
            raise KeyError("replaced") from exc

    def twice(job: Any) -> Iterator[None]:
        yield
        yield

    def job() -> None:
        ran.append("job")
        raise ValueError("the job")

    failed_in: list[str] = []
    run_chain((hook(skip),), context, job, failed_in)
    assert ran == [] and failed_in == []
    run_chain((hook(swallow),), context, job, failed_in)
    assert ran == ["job", "swallowed"] and failed_in == []
    with pytest.raises(KeyError):
        run_chain((hook(swallow), hook(replace)), context, job, failed_in)
    assert failed_in == ["replace"]
    with pytest.raises(ValueError):
        run_chain((hook(twice),), context, job, failed_in := [])
    assert failed_in == []
    with pytest.raises(RuntimeError, match="twice yielded more than once"):
        run_chain((hook(twice),), context, lambda: None, failed_in)
    assert failed_in == ["twice"]


def test_run_middleware_nest_in_registration_order_sync_and_async() -> None:
    events: list[str] = []

    def sync(name: str) -> Hook:
        def middleware(job: Any) -> Iterator[None]:
            events.append(f"{name} enters")
            yield
            events.append(f"{name} leaves")

        return Hook(middleware, name, False)

    def asynchronous(name: str) -> Hook:
        async def middleware(job: Any) -> AsyncIterator[None]:
            events.append(f"{name} enters")
            yield
            events.append(f"{name} leaves")

        return Hook(middleware, name, True)

    async def job() -> None:
        events.append("job")

    chain = (sync("outer"), asynchronous("middle"), sync("inner"))
    asyncio.run(run_chain_async(chain, None, job, []))  # type: ignore[arg-type]
    assert events == [
        "outer enters",
        "middle enters",
        "inner enters",
        "job",
        "inner leaves",
        "middle leaves",
        "outer leaves",
    ]


# --- run: real workers -------------------------------------------------------------------------


def ledger(db: psycopg.Connection[Any], label: str) -> list[str]:
    return [e for (e,) in rows(db, "SELECT event FROM ledger WHERE label = %s ORDER BY at", label)]


@pytest.fixture
def mw_app(database_url: str) -> Iterator[Any]:
    from tests import middleware_app

    middleware_app.app.configure(database_url=database_url)
    yield middleware_app
    middleware_app.app.close()
    middleware_app.ledger.close()


def run_worker(database_url: str, status: int = 0) -> str:
    """A burst worker's output; ``status`` 3 when a thread overran its timeout (it retires)."""
    done = run_cli(database_url, *WORKER)
    assert done.returncode == status, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_run_middleware_set_context_in_the_jobs_thread_and_meta_reaches_the_job(
    mw_app: Any, database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = mw_app.sees.options(meta={"tenant": "acme"}).enqueue(7)
    mw_app.async_sees.options(meta={"tenant": "globex"}).enqueue()
    run_worker(database_url)
    assert ledger(db, "tenant") == ["acme"]
    assert ledger(db, "async_tenant") == ["globex"]
    assert ledger(db, "meta") == [repr({"tenant": "acme"})]
    assert ledger(db, "arguments") == [repr(((7,), {}))]
    job_thread = value(db, "SELECT event FROM ledger WHERE label = 'job_thread'")
    middleware_thread = value(
        db, "SELECT event FROM ledger WHERE label = 'tenant_thread' AND job_id = %s", job_id
    )
    assert job_thread == middleware_thread  # the def middleware ran in the job's thread
    assert getattr(mw_app.app.get_job(job_id), "meta", None) == {"tenant": "acme"}


def state_of(db: psycopg.Connection[Any], job_id: int) -> tuple[str, Any]:
    found = rows(db, "SELECT state, errors -> -1 FROM pgjobs.jobs WHERE id = %s", job_id)
    return found[0]


def test_run_middleware_decide_the_outcome_and_hostile_ones_lose_no_job(
    mw_app: Any, database_url: str, db: psycopg.Connection[Any]
) -> None:
    one = {"max_attempts": 1}
    ids = {
        what: mw_app.runs.options(meta={"mw": what}, **one).enqueue()
        for what in ("skip", "raise", "raise_after", "snooze", "exit", "interrupt", "async_raise")
    }
    ids["swallow"] = mw_app.fails.options(meta={"mw": "swallow"}).enqueue()
    out = run_worker(database_url)
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == 0
    assert state_of(db, ids["skip"]) == ("completed", None)
    assert ledger(db, "skipped") == [""]
    assert state_of(db, ids["swallow"])[0] == "completed"
    assert ledger(db, "swallowed") == [""]
    assert state_of(db, ids["snooze"])[0] == "scheduled"
    middleware = "tests.middleware_app.behaviour"
    for what, kind in [
        ("raise", "builtins.RuntimeError"),
        ("raise_after", "builtins.RuntimeError"),
        ("exit", "builtins.SystemExit"),
        ("interrupt", "builtins.KeyboardInterrupt"),
    ]:
        state, error = state_of(db, ids[what])
        assert (state, error["class"], error["middleware"]) == ("discarded", kind, middleware), what
    state, error = state_of(db, ids["async_raise"])
    assert (state, error["middleware"]) == ("discarded", "tests.middleware_app.on_the_loop")
    assert f"failed in run middleware {middleware}: builtins.RuntimeError" in out
    ran = count(db, "SELECT count(*) FROM ledger WHERE label = 'ran'")
    assert ran == 1  # raise_after ran the job; the others never reached it


def test_a_middleware_that_hangs_past_the_timeout_fails_the_attempt(
    mw_app: Any, database_url: str, db: psycopg.Connection[Any]
) -> None:
    job_id = mw_app.hung_by_middleware.options(meta={"mw": "hang"}).enqueue()
    out = run_worker(database_url, status=3)  # its thread overran: the worker retires
    state, error = state_of(db, job_id)
    assert (state, error["class"]) == ("discarded", "pgjobs.JobTimeout")
    assert "failed in run middleware tests.middleware_app.behaviour" in out
    assert ledger(db, "ran") == []


def test_on_error_per_attempt_on_death_once_and_on_exhausted_with_the_job(
    mw_app: Any, database_url: str, db: psycopg.Connection[Any]
) -> None:
    failing = mw_app.fails.enqueue()
    old = mw_app.fails_once_exhausted.enqueue()
    snoozed = mw_app.runs.options(meta={"mw": "snooze"}).enqueue()
    run_worker(database_url)
    assert ledger(db, "fails") == ["", ""]
    assert sorted(ledger(db, "on_error")) == ["1:ValueError", "1:ValueError", "2:ValueError"]
    assert ledger(db, "on_death") == ["ValueError", "ValueError"]
    assert ledger(db, "on_exhausted") == ["fails:ValueError"]
    assert ledger(db, "old") == ["one attempt"]  # a one-parameter hook still gets exc alone
    assert state_of(db, failing)[0] == state_of(db, old)[0] == "discarded"
    assert state_of(db, snoozed)[0] == "scheduled"  # a snooze calls no handler


@pytest.mark.parametrize("what", ["raise", "exit", "hang"])
def test_hostile_handlers_are_contained_and_named(
    mw_app: Any, database_url: str, db: psycopg.Connection[Any], what: str
) -> None:
    job_id = mw_app.slow_to_fail.options(meta={"handler": what}).enqueue()
    out = run_worker(database_url)
    state, error = state_of(db, job_id)
    assert (state, error["class"]) == ("discarded", "builtins.ValueError")
    assert "middleware" not in error
    assert f"job {job_id}: handler tests.middleware_app.errors failed" in out
    assert f"job {job_id}: handler tests.middleware_app.deaths failed" in out
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == 0


def test_run_middleware_get_the_jobs_result_and_it_is_stored(database_url: str) -> None:
    """``result = yield`` gives each middleware what the job returned (sync middleware in a def
    job's thread, async ones on the loop), and the result is stored as without middleware; a
    skipped job stores none."""
    app = pgjobs.App(database_url=database_url)
    seen: list[tuple[str, Any]] = []

    @app.run_middleware
    async def outer(job: pgjobs.JobContext) -> AsyncIterator[None]:
        result = yield
        seen.append(("outer", result))

    @app.run_middleware
    def inner(job: pgjobs.JobContext) -> Iterator[None]:
        if job.meta.get("skip"):
            return
        result = yield
        seen.append(("inner", result))

    @app.job
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @app.job
    async def shout(word: str) -> str:
        return word.upper()

    first = add.enqueue(2, 3)
    skipped = add.options(meta={"skip": True}).enqueue(1, 1)
    loud = shout.enqueue("hi")
    try:
        run_burst(app)
        assert app.get_result(first) == {"sum": 5}
        assert app.get_result(loud) == "HI"
        assert app.get_result(skipped) is None
    finally:
        app.close()
    assert sorted(seen, key=repr) == sorted(
        [
            ("inner", {"sum": 5}),
            ("outer", {"sum": 5}),
            ("outer", None),
            ("inner", "HI"),
            ("outer", "HI"),
        ],
        key=repr,
    )
