"""Moving time forward for jobs, without sleeping."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from .._app import App
from . import _sql
from ._fake import faking


class Clock:
    """Moves ``app``'s jobs through time.

    In fake mode (:func:`~pgjobs.testing.fake` active for ``app``) :meth:`advance` moves the fake
    queue's clock. Otherwise it changes the app's database (a test's own): the ``scheduled_at``
    of every ``scheduled`` and ``retryable`` job (start times, retries' back-off, snoozes) and
    the ``last_tick_at`` of every cron entry move back by the delta, so what was due within it is
    due now; nothing else (no ``created_at``, no ``finished_at``, no lease). A worker, or
    :func:`~pgjobs.testing.drain`, then runs them.
    """

    def __init__(self, app: App) -> None:
        self.app = app

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
        queries = _sql.queries_for(settings.schema)
        with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
            conn.execute(queries.advance_jobs, {"delta": delta})
            conn.execute(queries.advance_cron, {"delta": delta})
