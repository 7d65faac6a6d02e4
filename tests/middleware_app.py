"""An app with middleware and error handlers, for tests/test_middleware.py: run by real workers
(``--app tests.middleware_app:app``). What each middleware does to a job is steered by the job's
meta (``{"mw": "skip"}``, ``{"handler": "raise"}``...); everything that ran is written to the
``ledger`` table (label, event)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pgjobs
from tests.ledger import Ledger

app = pgjobs.App()
ledger = Ledger(app)

TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)


def record(label: str, event: str = "") -> None:
    ledger.record(label, event)


@app.run_middleware
def tenant(job: pgjobs.JobContext) -> Iterator[None]:
    """Sets the tenant of the job's meta for the job's code; notes its thread."""
    token = TENANT.set(job.meta.get("tenant"))
    record("tenant_thread", str(threading.get_ident()))
    try:
        yield
    finally:
        TENANT.reset(token)


@app.run_middleware
async def on_the_loop(job: pgjobs.JobContext) -> AsyncIterator[None]:
    """An async middleware: runs on the worker's loop, also around ``def`` jobs."""
    if job.meta.get("mw") == "async_raise":
        raise LookupError("the async middleware broke")
    yield


@app.run_middleware
def behaviour(job: pgjobs.JobContext) -> Iterator[None]:
    """Does to the job what its meta asks."""
    what = job.meta.get("mw")
    if what == "skip":
        record("skipped")
        return
    if what == "raise":
        raise RuntimeError("the middleware broke")
    if what == "snooze":
        raise pgjobs.Snooze(3600)
    if what == "exit":
        sys.exit(3)
    if what == "interrupt":
        raise KeyboardInterrupt
    if what == "hang":
        time.sleep(8)
    try:
        yield
    except ValueError:
        if what != "swallow":
            raise
        record("swallowed")
        return
    if what == "raise_after":
        raise RuntimeError("the middleware broke after the job")


def _hostile(job: pgjobs.JobContext, label: str) -> None:
    what = job.meta.get("handler")
    if what == "raise":
        raise RuntimeError(f"the {label} handler broke")
    if what == "exit":
        sys.exit(4)
    if what == "hang":
        time.sleep(8)


@app.on_error
def errors(job: pgjobs.JobContext, exc: BaseException) -> None:
    record("on_error", f"{job.attempt}:{type(exc).__name__}")
    _hostile(job, "on_error")


@app.on_death
async def deaths(job: pgjobs.JobContext, exc: BaseException) -> None:
    await asyncio.to_thread(record, "on_death", type(exc).__name__)
    if job.meta.get("handler") == "hang":
        await asyncio.sleep(8)
    else:
        _hostile(job, "on_death")


def exhausted(job: pgjobs.JobContext, exc: BaseException) -> None:
    record("on_exhausted", f"{job.name}:{type(exc).__name__}")


@app.job(name="sees", retry=lambda attempt, exc: 0.0)
def sees(value: int) -> None:
    """Records what it sees: its thread, the tenant, its meta, args and kwargs."""
    job = pgjobs.current_job()
    record("job_thread", str(threading.get_ident()))
    record("tenant", str(TENANT.get()))
    record("meta", repr(dict(job.meta)))
    record("arguments", repr((job.args, dict(job.kwargs))))


@app.job(name="async_sees")
async def async_sees() -> None:
    record("async_tenant", str(TENANT.get()))


@app.job(name="fails", max_attempts=2, retry=lambda attempt, exc: 0.0, on_exhausted=exhausted)
def fails() -> None:
    record("fails")
    raise ValueError("the job failed")


@app.job(
    name="fails_once_exhausted", max_attempts=1, on_exhausted=lambda exc: record("old", str(exc))
)
def fails_once_exhausted() -> None:
    raise ValueError("one attempt")


@app.job(name="slow_to_fail", max_attempts=1, timeout=2.0)
def slow_to_fail() -> None:
    raise ValueError("fails at once; its handlers hang")


@app.job(name="hung_by_middleware", max_attempts=1, timeout=2.0)
def hung_by_middleware() -> None:
    record("ran")


@app.job(name="runs")
def runs() -> None:
    record("ran")


def meta(**values: Any) -> pgjobs.Job[..., Any]:
    """``runs`` with this meta."""
    return runs.options(meta=values)
