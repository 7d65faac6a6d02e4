"""Moving time forward for jobs, without sleeping."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from .._app import App
from .._cron import CronEntry, encode_rows, tick_text
from . import _sql
from ._fake import faking

MAX_TICKS = 1000
"""Ticks of one cron entry that one :meth:`Clock.advance` enqueues at most."""


class Clock:
    """Moves ``app``'s jobs through time.

    In fake mode (:func:`~pgjobs.testing.fake` active for ``app``) :meth:`advance` moves the fake
    queue's clock. Otherwise it changes the app's database (a test's own), and only this:

    * the ``scheduled_at`` of every ``scheduled`` and ``retryable`` job (start times, retries'
      back-off, snoozes) moves back by the delta, so what was due within it is due now;
    * each cron entry of the app gets a job for every tick from its last tick through the
      clock's time (the real time plus every advance so far), as a worker running all along
      would have enqueued them (the entry is stored first if no worker has), and its
      ``last_tick_at`` becomes the last of those ticks.

    A worker, or :func:`~pgjobs.testing.drain`, then runs the jobs now due.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self._offset = timedelta()

    def now(self) -> datetime:
        """The clock's time: the real time plus every :meth:`advance` so far."""
        fake = faking(self.app)
        return fake.now() if fake is not None else datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        """Make what falls due within ``delta`` due now (see the class)."""
        if delta < timedelta():
            raise ValueError(f"advance: {delta} is negative; time only moves forward")
        fake = faking(self.app)
        if fake is not None:
            fake.advance(delta)
            return
        settings = self.app.settings
        if settings.database_url is None:
            raise RuntimeError("Clock.advance: the app has no database_url and is not faked")
        self._offset += delta
        with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
            conn.execute(_sql.queries_for(settings.schema).advance_jobs, {"delta": delta})
            entries = list(self.app.cron_entries.values())
            if entries:
                self._enqueue_ticks(conn, entries)

    def _enqueue_ticks(self, conn: psycopg.Connection[Any], entries: list[CronEntry]) -> None:
        queries = self.app._queries
        conn.execute(queries.register_cron_entries, encode_rows(entries))
        last_ticks = dict(
            conn.execute(
                _sql.queries_for(self.app.settings.schema).cron_last_ticks,
                {"names": [entry.name for entry in entries]},
            ).fetchall()
        )
        now = self.now()
        for entry in entries:
            since = last_ticks.get(entry.name) or datetime.now(UTC)
            upcoming = entry.schedule.ticks_after(since)
            ticks = list(itertools.islice(itertools.takewhile(now.__ge__, upcoming), MAX_TICKS + 1))
            if len(ticks) > MAX_TICKS:
                raise ValueError(
                    f"advance: cron entry {entry.name!r} ticks more than {MAX_TICKS} times in "
                    "that time; advance by less"
                )
            if ticks:
                conn.execute(
                    queries.enqueue_cron_ticks,
                    {
                        "name": entry.name,
                        "ticks": list(map(tick_text, ticks)),
                        "through": ticks[-1],
                    },
                )
