"""Jobs for the tests of pgjobs.testing: in-memory effects for fake mode, ledger rows for the
real modes, and charges to prove a crash test catches a job that is not idempotent."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

import pgjobs
from pgjobs import Unique
from pgjobs.testing import checkpoint
from tests.ledger import Ledger

app = pgjobs.App()
ledger = Ledger(app)

ran: list[tuple[str, Any]] = []
"""What the in-memory jobs did, in order (fake mode)."""


@app.job(name="greet")
def greet(name: str, punctuation: str = "!") -> None:
    job = pgjobs.current_job()
    ran.append(("greet", (name, punctuation, job.id, job.attempt)))


@app.job(name="fan_out")
def fan_out(count: int) -> None:
    ran.append(("fan_out", count))
    for number in range(count):
        greet.enqueue(f"guest {number}")


@app.job(name="flaky", max_attempts=3, retry=lambda attempt, exc: 60.0)
def flaky(failures: int) -> None:
    attempt = pgjobs.current_job().attempt
    ran.append(("flaky", attempt))
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} fails")


@app.job(name="exits", max_attempts=2)
def exits() -> None:
    ran.append(("exits", pgjobs.current_job().attempt))
    sys.exit(3)


released = threading.Event()
"""Set by a test to end the threads of :func:`hangs`."""


@app.job(name="hangs", max_attempts=2, timeout=1)
def hangs() -> None:
    ran.append(("hangs", pgjobs.current_job().attempt))
    released.wait()


@app.job(name="hangs_async", max_attempts=2, timeout=1)
async def hangs_async() -> None:
    ran.append(("hangs_async", pgjobs.current_job().attempt))
    await asyncio.Event().wait()


@app.job(name="raises_base_exception", max_attempts=1)
def raises_base_exception() -> None:
    raise KeyboardInterrupt


@app.job(name="forever")
def forever() -> None:
    forever.enqueue()


@app.job(name="report")
def report(label: str) -> None:
    ran.append(("report", (label, pgjobs.current_job().batch_id)))


@app.job(name="once", unique=True)
def once(key: str) -> None:
    ran.append(("once", key))


@app.job(name="debounced", unique=Unique(by=("key",), replace=True))
def debounced(key: str, text: str) -> None:
    ran.append(("debounced", (key, text)))


@app.job(name="note")
def note(label: str) -> None:
    """A ledger row (real modes)."""
    ledger.record(label, pid=os.getpid())


def _charge(label: str, idempotent: bool) -> None:
    job = pgjobs.current_job()
    conn = ledger.connection()
    if idempotent:
        conn.execute(
            "INSERT INTO ledger (job_id, attempt, pid, label, event)"
            " SELECT %s, %s, %s, %s, 'charged' WHERE NOT EXISTS"
            " (SELECT FROM ledger WHERE job_id = %s AND event = 'charged')",
            (job.id, job.attempt, os.getpid(), label, job.id),
        )
    else:
        ledger.record(label, "charged", os.getpid())
    checkpoint("charged")
    ledger.record(label, "receipt", os.getpid())


@app.job(name="charge_once")
def charge_once(label: str) -> None:
    """Charges a card at most once per job, however often it runs."""
    _charge(label, idempotent=True)


@app.job(name="charge_naively")
def charge_naively(label: str) -> None:
    """Charges the card at every run: a retry after a crash charges twice."""
    _charge(label, idempotent=False)


@app.job(name="ticked")
def ticked(tick: str = "") -> None:
    """A cron entry's job: a ledger row labelled with its tick (real modes)."""
    ledger.record(tick, "tick", os.getpid())


app.periodic(ticked, cron="*/5 * * * *", tick_kwarg="tick")
