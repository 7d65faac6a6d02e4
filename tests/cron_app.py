"""Cron entries for tests/test_cron.py, in a module of their own so that no other test's worker
schedules them. Each job records its tick in the ``ledger`` table (label ``entry@tick``) through
its own connection.

``app`` declares every entry; ``smaller`` has the same jobs but lacks ``every.second`` (code from
which that entry was removed) and has ``smaller.second`` instead.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

import psycopg

import pgjobs

_local = threading.local()


def _record(app: pgjobs.App, entry: str, tick: str) -> None:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        url = str(app.settings.database_url)
        conn = _local.conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
    job = pgjobs.current_job()
    conn.execute(
        "INSERT INTO ledger (job_id, attempt, pid, label, event) VALUES (%s, %s, %s, %s, 'tick')",
        (job.id, job.attempt, os.getpid(), f"{entry}@{tick}"),
    )


def build(*per_second: str) -> pgjobs.App:
    """An app whose ``tick`` job is declared for each entry in ``per_second`` (every second) and
    for three yearly entries, one per catch-up rule."""
    app = pgjobs.App()

    @app.job(name="cron.tick")
    def record_tick(entry: str, tick: str) -> None:
        _record(app, entry, tick)

    @app.job(name="cron.nightly", cron="@daily", tz="Europe/Berlin")
    def nightly() -> None:
        _record(app, "cron.nightly", "")

    for name in per_second:
        app.periodic(
            record_tick, cron="* * * * * *", name=name, kwargs={"entry": name}, tick_kwarg="tick"
        )
    catch_up: dict[str, Any] = {
        "catch.latest": "latest",
        "catch.none": "none",
        "catch.window": timedelta(days=1000),
    }
    for name, rule in catch_up.items():
        app.periodic(
            record_tick,
            cron="0 0 1 1 *",
            name=name,
            kwargs={"entry": name},
            tick_kwarg="tick",
            catch_up=rule,
        )
    return app


app = build("every.second")
smaller = build("smaller.second")
