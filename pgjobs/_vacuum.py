"""The leader's vacuum of the jobs table, in the background on a connection of its own.

Every claim leaves a dead entry at the head of the claim index, and every later claim steps over
it until a vacuum removes it (see ``VACUUM_JOBS`` in :mod:`pgjobs._sql`). Autovacuum visits a
database at most once a minute, which under load is long enough for claims to slow several
times over; so the leader's heartbeat tells when the table is due, and the leader
(:mod:`pgjobs._leader`) has :class:`Vacuum` run it.
Its own connection, opened for each run, keeps a long vacuum from ever delaying a heartbeat.

A role that may not vacuum the table (PostgreSQL wants its owner) gets a warning instead, which is
logged once; this worker then leaves the table to autovacuum. A table that another vacuum holds
(autovacuum, say) is skipped for this time only.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

from ._connection import connect_async
from ._errors import DatabaseError
from ._settings import Settings
from ._sql import Queries

log = logging.getLogger("pgjobs.worker")

LOCK_NOT_AVAILABLE = "55P03"
"""The SQLSTATE of the warning by which ``SKIP_LOCKED`` skips a table that another vacuum
(autovacuum, a former leader's) or an ``ANALYZE`` holds: the table is busy, not forbidden."""


class Vacuum:
    def __init__(self, settings: Settings, queries: Queries, application_name: str) -> None:
        self._settings = settings
        self._queries = queries
        self._application_name = application_name
        self._task: asyncio.Task[None] | None = None
        self._permitted = True

    def start_unless_running(self) -> None:
        """Start a vacuum in the background, unless one runs or the role may not vacuum."""
        if self._permitted and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="pgjobs-vacuum")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        refusals: list[str] = []
        busy = False

        def note_refusal(notice: psycopg.errors.Diagnostic) -> None:
            nonlocal busy
            if notice.severity_nonlocalized != "WARNING" or not notice.message_primary:
                return
            if notice.sqlstate == LOCK_NOT_AVAILABLE:
                busy = True
            else:
                refusals.append(notice.message_primary)

        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            conn = await connect_async(self._settings, self._application_name)
        except DatabaseError as exc:
            log.warning("vacuum of the jobs table skipped: %s", exc)
            return
        try:
            conn.add_notice_handler(note_refusal)
            await conn.execute(self._queries.vacuum_jobs)
        except psycopg.Error as exc:
            log.warning("vacuum of the jobs table failed: %s", str(exc).strip())
            return
        finally:
            await conn.close()
        if refusals:
            self._permitted = False
            log.warning(
                "cannot vacuum the jobs table (%s); leaving it to autovacuum. Run workers as the "
                "table's owner, or set vacuum_threshold = 0 to silence this",
                "; ".join(refusals),
            )
            return
        if busy:
            log.debug("vacuum of the jobs table skipped: the table is busy; trying again later")
            return
        log.debug("vacuumed the jobs table in %.3f s", loop.time() - started)
