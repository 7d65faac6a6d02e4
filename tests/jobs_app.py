"""Jobs used by the tests. Each one records its runs in the ``ledger`` table through its own
autocommit connection, so tests assert on what really ran, not on pgjobs' bookkeeping."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

import psycopg

import pgjobs
from tests.ledger import Ledger

app = pgjobs.App()

ledger = Ledger(app)
_ledger = ledger.connection
"""This thread's connection to the ledger, in the database the app is configured for."""
close_ledger_connections = ledger.close


def record(label: str, event: str = "start") -> None:
    ledger.record(label, event, os.getpid())


def retry_now(attempt: int, exc: BaseException) -> float:
    return 0.0


@app.job(name="noop")
def noop(label: str = "") -> None:
    record(label)


@app.job(name="waits_for_lock")
def waits_for_lock(key: int) -> None:
    """Runs until the test that holds advisory lock ``key`` lets it go."""
    record("waits_for_lock")
    _ledger().execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", (key, key))


@app.job(name="async_noop")
async def async_noop(label: str = "") -> None:
    await asyncio.to_thread(record, label)


@app.job(name="flaky", retry=retry_now)
def flaky(failures: int) -> None:
    record("flaky")
    if pgjobs.current_job().attempt <= failures:
        raise RuntimeError(f"attempt {pgjobs.current_job().attempt} fails")


@app.job(name="always_fails", max_attempts=3, retry=retry_now)
def always_fails() -> None:
    record("always_fails")
    raise RuntimeError("boom")


class Permanent(Exception):
    pass


@app.job(name="permanent", discard_on=(Permanent,))
def permanent() -> None:
    record("permanent")
    raise Permanent("no point retrying")


@app.job(name="custom_policy", retry=lambda attempt, exc: 3600.0 if attempt == 1 else None)
def custom_policy() -> None:
    record("custom_policy")
    raise ValueError("nope")


def _exhausted(exc: BaseException) -> None:
    record(f"exhausted:{type(exc).__name__}")


@app.job(name="exhausts", max_attempts=1, on_exhausted=_exhausted)
def exhausts() -> None:
    record("exhausts")
    raise KeyError("gone")


@app.job(name="sleepy")
def sleepy(seconds: float, label: str = "sleepy") -> None:
    record(label)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    record(label, "end")


@app.job(name="async_sleepy")
async def async_sleepy(seconds: float, label: str = "async_sleepy") -> None:
    await asyncio.to_thread(record, label)
    await asyncio.sleep(seconds)
    await asyncio.to_thread(record, label, "end")


@app.job(name="until_stopping")
def until_stopping() -> None:
    record("until_stopping")
    while not pgjobs.current_job().stopping:
        time.sleep(0.01)
    record("until_stopping", "saw-stopping")


@app.job(name="anything")
def anything(*args: Any, **kwargs: Any) -> None:
    record("anything")


@app.job(name="until_cancelled")
def until_cancelled() -> None:
    record("until_cancelled")
    while not pgjobs.current_job().cancelled:
        time.sleep(0.01)
    record("until_cancelled", "saw-cancel")


@app.job(name="async_until_cancelled")
async def async_until_cancelled() -> None:
    await asyncio.to_thread(record, "async_until_cancelled")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.to_thread(record, "async_until_cancelled", "cancelled")
        raise


@app.job(name="snoozer", max_attempts=1)
def snoozer(times: int) -> None:
    """Snoozes ``times`` times (counted in the ledger), then completes."""
    record("snoozer")
    row = (
        _ledger()
        .execute("SELECT count(*) FROM ledger WHERE job_id = %s", (pgjobs.current_job().id,))
        .fetchone()
    )
    assert row is not None
    if row[0] <= times:
        raise pgjobs.Snooze(0.1)


@app.job(name="async_overruns", timeout=0.5, max_attempts=2, retry=retry_now)
async def async_overruns() -> None:
    await asyncio.to_thread(record, "async_overruns")
    await asyncio.sleep(3600)


@app.job(name="async_raises_timeout_error", max_attempts=1)
async def async_raises_timeout_error() -> None:
    """A job without a timeout of its own whose code times out (a socket, a client library)."""
    raise TimeoutError("the upstream service did not answer")


@app.job(name="sync_overruns", timeout=0.5, max_attempts=1)
def sync_overruns(seconds: float) -> None:
    record("sync_overruns")
    time.sleep(seconds)
    record("sync_overruns", "end")


@app.job(name="spins", timeout=2, max_attempts=3, retry=retry_now)
def spins() -> None:
    """Poison pill: never returns."""
    record("spins")
    while True:
        time.sleep(0.01)


@app.job(name="kills_its_worker", max_attempts=3)
def kills_its_worker() -> None:
    """Poison pill: SIGKILLs the process running it."""
    record("kills_its_worker")
    os.kill(os.getpid(), signal.SIGKILL)


@app.job(name="exits_its_worker", max_attempts=3)
def exits_its_worker() -> None:
    """Poison pill: ends the process running it with status 3, skipping all clean-up."""
    record("exits_its_worker")
    os._exit(3)


@app.job(name="segfaults", max_attempts=3)
def segfaults() -> None:
    """Poison pill: a segmentation fault."""
    record("segfaults")
    ctypes.string_at(0)


class Hostile(BaseException):
    """Not an ``Exception``: what a library's own control flow might raise out of a job."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text for you")


def _misbehave(how: str) -> None:
    if how.startswith("exit"):
        sys.exit(int(how.removeprefix("exit")))
    raise {
        "interrupt": KeyboardInterrupt,
        "base": Hostile,
        "unprintable": Unprintable,
        "cancelled": asyncio.CancelledError,
        "snooze_inf": lambda: pgjobs.Snooze(float("inf")),
    }[how]()


@app.job(name="hostile", max_attempts=1)
def hostile(how: str) -> None:
    """Ends its attempt as ``how`` says: ``exit0``, ``interrupt``, ``base``, ``unprintable``..."""
    record(f"hostile:{how}")
    _misbehave(how)


@app.job(name="async_hostile", max_attempts=1)
async def async_hostile(how: str) -> None:
    await asyncio.to_thread(record, f"async_hostile:{how}")
    _misbehave(how)


def _policy_raises(attempt: int, exc: BaseException) -> float:
    raise ZeroDivisionError("the policy's own bug")


@app.job(name="policy_raises", max_attempts=2, retry=_policy_raises)
def policy_raises() -> None:
    record("policy_raises")
    raise RuntimeError("the job failed")


@app.job(name="policy_huge", max_attempts=2, retry=lambda attempt, exc: 1e300)
def policy_huge() -> None:
    record("policy_huge")
    raise RuntimeError("the job failed")


@app.job(name="policy_nan", max_attempts=2, retry=lambda attempt, exc: float("nan"))
def policy_nan() -> None:
    record("policy_nan")
    raise RuntimeError("the job failed")


def _hook_exits(exc: BaseException) -> None:
    record("hook_exits:hook")
    sys.exit(1)


@app.job(name="hook_exits", max_attempts=1, on_exhausted=_hook_exits)
def hook_exits() -> None:
    record("hook_exits")
    raise RuntimeError("the job failed")


@app.job(name="blocks_the_loop")
async def blocks_the_loop(seconds: float) -> None:
    """Misbehaves: a blocking call inside ``async def`` holds its worker's event loop."""
    record("blocks_the_loop")
    time.sleep(seconds)
    record("blocks_the_loop", "end")


@app.job(name="nap")
def nap(seconds: float) -> None:
    """Sleeps, touching no database (the ledger may be unreachable)."""
    time.sleep(seconds)


@app.job(name="leaks_a_thread")
def leaks_a_thread() -> None:
    """Leaves a non-daemon thread behind that never ends, as careless job code can."""
    threading.Thread(target=threading.Event().wait, name="leaked", daemon=False).start()


@app.job(name="waits_for_lock_elsewhere")
def waits_for_lock_elsewhere(key: int, ledger_url: str) -> None:
    """``waits_for_lock`` with its ledger and lock in another database (``ledger_url``): it never
    writes to the jobs' database, so a crash of that database can still undo its claim."""
    job = pgjobs.current_job()
    insert = "INSERT INTO ledger (job_id, attempt, pid, label, event) VALUES (%s, %s, %s, %s, %s)"
    with psycopg.connect(ledger_url, autocommit=True) as ledger:
        ledger.execute(insert, (job.id, job.attempt, os.getpid(), "waits_elsewhere", "start"))
        ledger.execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", (key, key))
        ledger.execute(insert, (job.id, job.attempt, os.getpid(), "waits_elsewhere", "end"))


def _batch_of_current_job() -> str:
    return str(pgjobs.current_job().batch_id)


@app.job(name="batch_member")
def batch_member(seconds: float = 0.0, first_attempt_seconds: float | None = None) -> None:
    """A job of a batch: records its batch id (``event``) at its start, then sleeps (on its
    first attempt ``first_attempt_seconds``, when given: long enough to be killed mid-run)."""
    record("batch_member", _batch_of_current_job())
    first = first_attempt_seconds is not None and pgjobs.current_job().attempt == 1
    time.sleep(first_attempt_seconds if first and first_attempt_seconds is not None else seconds)


@app.job(name="batch_member_fails_once", max_attempts=1)
def batch_member_fails_once() -> None:
    """Fails its first attempt (and, with one attempt allowed, is discarded); a retry completes."""
    record("batch_member_fails_once", _batch_of_current_job())
    if pgjobs.current_job().attempt == 1:
        raise RuntimeError("first attempt fails")


@app.job(name="batch_grows")
def batch_grows(extra: int, seconds: float) -> None:
    """Adds ``extra`` sleeping jobs to its own batch, on pgjobs' own connection (committed before
    this job ends)."""
    batch_id = pgjobs.current_job().batch_id
    assert batch_id is not None
    record("batch_grows", str(batch_id))
    app.add_to_batch(batch_id, [batch_member.call(seconds) for _ in range(extra)])


@app.job(name="batch_callback")
def batch_callback(kind: str) -> None:
    """A batch's callback: records ``kind`` (``on_success``/``on_complete``) and its batch."""
    record(f"batch_callback:{kind}", _batch_of_current_job())


@app.job(name="unique_noop", unique=True)
def unique_noop(label: str, extra: int = 0) -> None:
    """Unique by all its arguments, ``extra``'s default included."""
    record(label)


@app.job(name="unique_kept", unique=pgjobs.Unique(states=(*pgjobs.Unique().states, "completed")))
def unique_kept(label: str) -> None:
    """Holds its key after completing too."""
    record(label)


@app.job(name="unique_for", unique=pgjobs.Unique(by=("label",), period=0.5))
def unique_for(label: str, extra: int = 0) -> None:
    """Unique by ``label`` within each half second of the database clock."""
    record(label)


@app.job(name="debounced", unique=pgjobs.Unique(by=("key",), replace=True))
def debounced(key: int, label: str) -> None:
    """Unique by ``key``; a later enqueue replaces a waiting job's ``label`` and run time."""
    record(label)
    if label.startswith("lock "):
        _ledger().execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", (key, key))


@app.job(name="returns", max_attempts=2, retry=retry_now)
def returns(value: Any) -> Any:
    """Returns its argument: its result."""
    return value


@app.job(name="async_returns")
async def async_returns(value: Any) -> Any:
    return value


@app.job(name="returns_unstorable", max_attempts=2, retry=retry_now)
def returns_unstorable(kind: str) -> Any:
    """Returns what cannot be a result: ``set``, ``nan``, ``big`` (over the size limit)."""
    record("returns_unstorable")
    unstorable = {"set": {1, 2}, "nan": {"ratio": float("nan")}, "big": "x" * (1024 * 1024 + 1)}
    return unstorable[kind]


@app.job(name="reports_progress")
def reports_progress(key: int) -> int:
    """Reports 0.4, then waits for the test holding advisory lock ``key``; returns 10."""
    pgjobs.current_job().progress(0.4, "resized 4 of 10")
    _ledger().execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", (key, key))
    return 10


@app.job(name="async_reports_progress")
async def async_reports_progress(key: int) -> int:
    pgjobs.current_job().progress(0.25)
    await asyncio.to_thread(
        lambda: _ledger().execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", (key, key))
    )
    return 4


@app.job(name="progress_loop")
def progress_loop(reports: int) -> None:
    """Reports progress ``reports`` times in a tight loop, then once more as 1.0 "done"."""
    for n in range(reports):
        pgjobs.current_job().progress(n / reports, f"{n}")
    pgjobs.current_job().progress(1.0, "done")
    time.sleep(1.5)  # long enough for the last report to be written while it runs


@app.job(name="bad_progress", max_attempts=1)
def bad_progress(fraction: Any, message: Any = None) -> str:
    """Reports a bad value; returns the ValidationError's message."""
    try:
        pgjobs.current_job().progress(fraction, message)
    except pgjobs.ValidationError as exc:
        return str(exc)
    return "accepted"


@app.job(name="gathers_results")
def gathers_results(kind: str) -> dict[str, Any]:
    """A batch callback that returns its batch's results, keyed by job id as text."""
    batch_id = pgjobs.current_job().batch_id
    assert batch_id is not None
    return {str(k): v for k, v in app.batch_results(batch_id).items()}
