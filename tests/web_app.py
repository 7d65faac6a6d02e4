"""Jobs, a queue with limits and a cron entry for tests/test_web_browser.py, in an app of its own
so that its queue declarations and cron entry never reach the workers of other tests. Each job
records its runs in the ``ledger`` table through its own autocommit connection.

``fragile`` fails until the test writes a ``fixed:KEY`` row into the ledger (see :func:`fix`),
and ``held`` runs until the test lets go of an advisory lock: the test decides how jobs end.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

import pgjobs
from tests.ledger import Ledger

app = pgjobs.App()
app.queue("mail", concurrency=2, rate=(30, timedelta(minutes=1)))

NIGHTLY = "web.nightly"
"""The cron entry: 03:00 UTC every day, a time no test waits for."""

ledger = Ledger(app)
_ledger = ledger.connection
record = ledger.record
close_connections = ledger.close


def fix(conn: psycopg.Connection[Any], key: str) -> None:
    """Let the ``fragile`` jobs of ``key`` complete from their next attempt on."""
    conn.execute(
        "INSERT INTO ledger (job_id, attempt, pid, label, event) VALUES (0, 0, 0, %s, 'fix')",
        (f"fixed:{key}",),
    )


@app.job(name="web.report")
def report(label: str = "") -> None:
    record(label)


@app.job(name="web.send_mail", queue="mail")
def send_mail(to: str) -> None:
    record(to)


@app.job(name="web.fragile", max_attempts=1)
def fragile(key: str, message: str = "the mail server refused the connection") -> None:
    """Raises ``RuntimeError(message)`` (one attempt: the job is discarded) until ``key`` is
    fixed."""
    (fixed,) = _ledger().execute(
        "SELECT count(*) FROM ledger WHERE label = %s", (f"fixed:{key}",)
    ).fetchone() or (0,)
    if not fixed:
        raise RuntimeError(message)
    record(key)


@app.job(name="web.日報", max_attempts=1)
def daily_report() -> None:
    """A job whose name is not ASCII (a name may be any text), which always fails."""
    raise RuntimeError("the report's source is gone")


@app.job(name="web.held")
def held(key: int) -> None:
    """Runs until the test that holds advisory lock ``key`` lets it go."""
    record("held")
    pgjobs.current_job().progress(0.4, "imported 2 of 5 files")
    _ledger().execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", (key, key))
    record("held", "end")


app.periodic(report, cron="0 3 * * *", name=NIGHTLY, kwargs={"label": "nightly"}, catch_up="none")
