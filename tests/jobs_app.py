"""Jobs used by the tests. Each one records its runs in the ``ledger`` table through its own
autocommit connection, so tests assert on what really ran, not on pgjobs' bookkeeping."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import psycopg

import pgjobs

app = pgjobs.App()

_local = threading.local()
_ledger_connections: list[psycopg.Connection[Any]] = []


def _ledger() -> psycopg.Connection[Any]:
    """This thread's connection to the ledger, in the database the app is configured for."""
    url = str(app.settings.database_url)
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or _local.url != url:
        conn = _local.conn = psycopg.connect(url, autocommit=True)
        _local.url = url
        _ledger_connections.append(conn)
    return conn


def close_ledger_connections() -> None:
    while _ledger_connections:
        _ledger_connections.pop().close()


def record(label: str, event: str = "start") -> None:
    job = pgjobs.current_job()
    _ledger().execute(
        "INSERT INTO ledger (job_id, attempt, pid, label, event) VALUES (%s, %s, %s, %s, %s)",
        (job.id, job.attempt, os.getpid(), label, event),
    )


def retry_now(attempt: int, exc: BaseException) -> float:
    return 0.0


@app.job(name="noop")
def noop(label: str = "") -> None:
    record(label)


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
