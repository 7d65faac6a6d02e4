"""The ledger that test jobs write what ran into: a table of the test's database, written through
autocommit connections of the job's own (one per thread), so tests assert on what really ran,
not on pgjobs' bookkeeping."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

import pgjobs


class Ledger:
    """Connections to the database that ``app`` is configured for, one per thread."""

    def __init__(self, app: pgjobs.App) -> None:
        self._app = app
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []

    def connection(self) -> psycopg.Connection[Any]:
        """This thread's connection, anew when the app points at another database."""
        url = str(self._app.settings.database_url)
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or self._local.url != url:
            conn = self._local.conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
            self._local.url = url
            self._connections.append(conn)
        return conn

    def record(self, label: str, event: str = "start", pid: int = 0) -> None:
        """A row for the current job's attempt."""
        job = pgjobs.current_job()
        self.connection().execute(
            "INSERT INTO ledger (job_id, attempt, pid, label, event) VALUES (%s, %s, %s, %s, %s)",
            (job.id, job.attempt, pid, label, event),
        )

    def close(self) -> None:
        while self._connections:
            self._connections.pop().close()
