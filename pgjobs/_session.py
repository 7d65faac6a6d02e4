"""The worker's session connection: its registration, heartbeat, leadership and notifications.

Everything that proves a worker alive runs on this one connection:

* a session advisory lock, taken before the worker registers. When the process dies (SIGKILL,
  OOM, segfault), PostgreSQL closes the connection and drops the lock; the leader's next sweep
  finds the lock free and gives the worker's jobs back within one heartbeat interval;
* the heartbeat, every ``heartbeat_interval`` on database time, which extends the worker's lease.
  A worker that stalls or loses its host stops beating and is swept when its lease expires;
* LISTEN. The heartbeat runs on the same session with a timeout, so a half-open listener is
  noticed within a beat plus :data:`BEAT_TIMEOUT` and replaced. A notification only wakes the
  worker: anyone who can log in may NOTIFY, so on the cancel channel the session reads which of
  this worker's running jobs have a cancellation requested, and acts on those alone.

Behind a transaction pooler (poll-only without ``listen_database_url``) session state cannot be
trusted, so there is no lock and no LISTEN: the lease alone decides, which is slower but correct.

Each beat also takes or keeps the leader lease (a row in ``leases``) and, for the leader, tells
whether any worker is lost and whether the jobs table needs a vacuum; the session then hands over
to :class:`~pgjobs._leader.Leader`. An idle worker makes one statement per beat.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ._leader import Leader
from ._link import RECONNECT_BACKOFF, STATEMENT_TIMEOUT, Link, within
from ._settings import Settings
from ._sql import Queries
from ._waits import Backoff

log = logging.getLogger("pgjobs.worker")

BEAT_TIMEOUT = 5.0
"""Seconds a heartbeat (or the session's set-up) may take before the connection is presumed dead."""


@dataclass(frozen=True)
class SessionEvents:
    """What the session tells its worker."""

    on_jobs: Callable[[str], None]
    """Jobs may be available in this queue ("" for any: after a reconnect, a rescue)."""
    on_scheduled: Callable[[], None]
    """A job was scheduled for later: re-read the next due time."""
    on_cancel: Callable[[int], None]
    """The table says cancellation was requested for this job running on this worker (it may
    have ended since)."""


class Session:
    """Keeps a worker registered and alive in the database until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        queries: Queries,
        worker_id: str,
        application_name: str,
        events: SessionEvents,
        leader: Leader,
    ) -> None:
        self.trusted = settings.listen_database_url is not None or not settings.poll_only
        """Whether this is a direct session, so the lock and LISTEN can be relied on."""
        if settings.listen_database_url is not None:
            settings = dataclasses.replace(settings, database_url=settings.listen_database_url)
        self._link = Link(settings, application_name)
        self._settings = settings
        self._queries = queries
        self._worker_id = worker_id
        self._events = events
        self._leader = leader
        self._lock_key: int | None = None
        self._leading = False
        self._task: asyncio.Task[None] | None = None
        self.registered = asyncio.Event()
        """Set once the worker row exists: claims may start."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgjobs-session")

    async def stop(self) -> None:
        """Stop beating and remove this worker's row (its lease would expire anyway)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._leader.stop()
        conn = self._link.current
        if conn is not None and not conn.closed:
            try:
                await within(
                    conn,
                    conn.execute(self._queries.deregister_worker, {"worker_id": self._worker_id}),
                    BEAT_TIMEOUT,
                )
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("could not deregister worker: %s", str(exc).strip())
        await self._link.close()

    async def _run(self) -> None:
        backoff = Backoff(*RECONNECT_BACKOFF)
        while True:
            conn = await self._link.connection()
            self._lock_key = None  # a new session holds no lock yet
            try:
                await within(conn, self._open(conn), BEAT_TIMEOUT)
                backoff.reset()
                while True:
                    sweep_due, vacuum_due = await within(conn, self._beat(conn), BEAT_TIMEOUT)
                    if self._leading:
                        lead = self._leader.lead(conn, sweep_due, vacuum_due)
                        await within(conn, lead, STATEMENT_TIMEOUT)
                    await self._wait_for_notifications(conn, self._settings.heartbeat_interval)
            except Exception as exc:  # never let the heartbeat die: a live worker needs it
                if isinstance(exc, psycopg.Error | TimeoutError):
                    problem = str(exc).strip() or "no answer"
                    log.warning("session connection lost (%s); reconnecting", problem)
                else:
                    log.exception("session failed; reconnecting")
                await self._link.close()
                self._events.on_jobs("")  # the producer polls meanwhile; wake it now
                await backoff.sleep()

    async def _open(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Lock, register, LISTEN, sweep once; then wake the producer for an immediate claim."""
        if self.trusted and self._lock_key is None:
            self._lock_key = await self._take_lock(conn)
        await conn.execute(
            self._queries.register_worker,
            {
                "worker_id": self._worker_id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "queues": self._settings.queues,
                "concurrency": self._settings.concurrency,
                "lock_key": self._lock_key,
                "lease": self._settings.lease_timeout,
            },
        )
        if self.trusted:
            q = self._queries
            for channel in (q.jobs_channel, q.scheduled_channel, q.cancel_channel):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            log.info(
                "listening on %s, %s and %s", q.jobs_channel, q.scheduled_channel, q.cancel_channel
            )
        if not self.registered.is_set():
            await self._leader.sweep(conn)  # start-up sweep: lost workers' jobs need no leader
            self.registered.set()
        self._events.on_jobs("")

    async def _take_lock(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """A session advisory lock under a random key; a key still held (say, by this worker's
        previous half-open connection) is skipped for another."""
        while True:
            key = random.randint(-(2**31), 2**31 - 1)
            cur = await conn.execute(
                self._queries.lock_worker,
                {"lock_namespace": self._queries.lock_namespace, "lock_key": key},
            )
            row = await cur.fetchone()
            if row is not None and row[0]:
                return key

    async def _beat(self, conn: psycopg.AsyncConnection[Any]) -> tuple[bool, bool]:
        """Heartbeat; returns whether this worker leads and (a) lost workers await its sweep,
        (b) the jobs table is due for a vacuum."""
        cur = await conn.execute(
            self._queries.heartbeat,
            {
                "worker_id": self._worker_id,
                "lease": self._settings.lease_timeout,
                "lock_namespace": self._queries.lock_namespace,
                "vacuum_threshold": self._settings.vacuum_threshold,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        registered, leading, cancel_requested, sweep_due, vacuum_due = row
        if not registered:
            log.warning(
                "this worker was presumed lost (no heartbeat within %s s) and its jobs went "
                "back to the queue; registering again",
                self._settings.lease_timeout,
            )
            await self._open(conn)
        if leading != self._leading:
            self._leading = leading
            log.info("%s the leader", "became" if leading else "is no longer")
        for job_id in cancel_requested:
            self._events.on_cancel(job_id)
        return bool(sweep_due), bool(vacuum_due)

    async def _read_cancellations(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Tell the worker which of its running jobs have a cancellation requested."""
        cur = await conn.execute(
            self._queries.cancel_requested_jobs, {"worker_id": self._worker_id}
        )
        for (job_id,) in await cur.fetchall():
            self._events.on_cancel(job_id)

    async def _wait_for_notifications(
        self, conn: psycopg.AsyncConnection[Any], seconds: float
    ) -> None:
        if not self.trusted:
            await asyncio.sleep(seconds)
            return
        q = self._queries
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            cancel_news = False
            # one batch at a time: a statement cannot run while notifies() holds the connection
            async for notify in conn.notifies(timeout=left, stop_after=1):
                if notify.channel == q.jobs_channel:
                    self._events.on_jobs(notify.payload)
                elif notify.channel == q.scheduled_channel:
                    self._events.on_scheduled()
                elif notify.channel == q.cancel_channel:
                    cancel_news = True  # the payload is anyone's word: look at the table
            if cancel_news:
                await within(conn, self._read_cancellations(conn), BEAT_TIMEOUT)
