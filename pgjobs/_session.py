"""The worker's session: its registration, heartbeat, leadership and notifications, on a thread of
its own.

The session runs on its own thread with its own event loop, apart from the loop that runs the
jobs. An ``async def`` job that blocks its loop (a ``time.sleep`` or a blocking client inside a
coroutine) cannot stop the heartbeat, so the worker's lease stays alive as long as its process is,
and no other worker ever takes over a job this one is still running. What the session learns
reaches the worker on the worker's loop (``call_soon_threadsafe``).

Everything that proves a worker alive runs on one connection:

* a session advisory lock, taken before the worker registers. When the process dies (SIGKILL,
  OOM, segfault), PostgreSQL closes the connection and drops the lock; the leader's next sweep
  finds the lock free and gives the worker's jobs back within one heartbeat interval;
* the heartbeat, every ``heartbeat_interval`` on database time, which extends the worker's lease.
  A worker whose process stalls or loses its host stops beating and is swept when its lease
  expires;
* LISTEN. The heartbeat runs on the same session with a timeout, so a half-open listener is
  noticed within a beat plus :data:`BEAT_TIMEOUT` and replaced. A notification only wakes the
  worker: anyone who can log in may NOTIFY, so on the cancel channel the session reads which of
  this worker's running jobs have a cancellation requested, and acts on those alone.

Behind a transaction pooler (poll-only without ``listen_database_url``) session state cannot be
trusted, so there is no lock and no LISTEN: the lease alone decides, which is slower but correct.

Each beat also takes or keeps the leader lease (a row in ``leases``) and, for the leader, tells
whether any worker is lost and whether the jobs table needs a vacuum; the session then hands over
to :class:`~pgjobs._leader.Leader`. An idle worker makes one statement per beat.

The session also watches the worker's loop: it pings it every :data:`WATCH_INTERVAL` and, when a
ping goes unanswered for :data:`STALL_WARNING`, logs once that the loop is blocked and where.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import sys
import threading
import time
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

STOP_TIMEOUT = 2 * BEAT_TIMEOUT
"""Seconds :meth:`Session.stop` waits for the session's thread to deregister and end."""

WATCH_INTERVAL = 0.5
"""Seconds between pings of the worker's event loop."""

STALL_WARNING = 1.0
"""Seconds a ping of the worker's event loop may go unanswered before the stall is logged."""

JOB_TASK_PREFIX = "pgjobs-job-"
"""How the worker names a job's task, followed by the job's id."""


@dataclass(frozen=True)
class SessionEvents:
    """What the session tells its worker, on the worker's event loop."""

    on_jobs: Callable[[str], None]
    """Jobs may be available in this queue ("" for any: after a reconnect, a rescue)."""
    on_scheduled: Callable[[], None]
    """A job was scheduled for later: re-read the next due time."""
    on_cancel: Callable[[int], None]
    """The table says cancellation was requested for this job running on this worker (it may
    have ended since)."""
    on_queues: Callable[[], None] = lambda: None
    """A queue's settings changed (a pause, a limit): re-read them."""


@dataclass(frozen=True)
class SessionConfig:
    """What a worker's session needs of its settings."""

    worker_id: str
    queues: str
    """The worker's queues as given (shown by ``pgjobs workers``)."""
    concurrency: int
    heartbeat_interval: float
    lease_timeout: float
    vacuum_threshold: int
    trusted: bool
    """Whether the session is direct, so the lock and LISTEN can be relied on: a
    ``listen_database_url`` is given, or the database URL is not a pooler's (``poll_only``)."""

    @classmethod
    def of(cls, settings: Settings, worker_id: str) -> SessionConfig:
        return cls(
            worker_id,
            settings.queues,
            settings.concurrency,
            settings.heartbeat_interval,
            settings.lease_timeout,
            settings.vacuum_threshold,
            settings.listen_database_url is not None or not settings.poll_only,
        )


def session_link(settings: Settings, application_name: str) -> Link:
    """The session's connection: to ``listen_database_url`` when given (a direct one beside a
    pooler), else to the database URL."""
    if settings.listen_database_url is not None:
        settings = dataclasses.replace(settings, database_url=settings.listen_database_url)
    return Link(settings, application_name)


class Session:
    """Keeps a worker registered and alive in the database, from its own thread, until
    :meth:`stop`."""

    def __init__(
        self,
        config: SessionConfig,
        link: Link,
        queries: Queries,
        events: SessionEvents,
        leader: Leader,
    ) -> None:
        self.trusted = config.trusted
        """Whether this is a direct session, so the lock and LISTEN can be relied on."""
        self._link = link
        self._config = config
        self._worker_id = config.worker_id
        self._queries = queries
        self._events = events
        self._leader = leader
        self._lock_key: int | None = None
        self._leading = False
        self._swept = False
        self.registered = asyncio.Event()
        """Set on the worker's loop once the worker row exists: claims may start."""
        self._stopping = asyncio.Event()  # on the session's loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._worker_loop: asyncio.AbstractEventLoop | None = None
        self._worker_thread = 0
        self._answered = 0.0
        """The latest ping of the worker's loop it answered (set on that loop)."""
        self._answered_at = 0.0

    def start(self) -> None:
        """Start the session's thread. Call on the worker's loop: the session's events go there."""
        self._worker_loop = asyncio.get_running_loop()
        self._worker_thread = threading.get_ident()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._main, args=(self._loop,), name="pgjobs-session", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop beating, remove this worker's row (its lease would expire anyway) and end the
        session's thread, waiting at most :data:`STOP_TIMEOUT` for it."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: the thread has ended
            self._loop.call_soon_threadsafe(self._stopping.set)
        await asyncio.to_thread(self._thread.join, STOP_TIMEOUT)
        if self._thread.is_alive():
            log.warning("the session did not end within %s s; leaving it behind", STOP_TIMEOUT)

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        tasks = [
            asyncio.create_task(self._run(), name="pgjobs-session"),
            asyncio.create_task(self._watch(), name="pgjobs-watch"),
        ]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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

    def _tell(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` on the worker's loop."""
        assert self._worker_loop is not None
        with contextlib.suppress(RuntimeError):  # the worker's loop is closed: nobody to tell
            self._worker_loop.call_soon_threadsafe(callback, *args)

    async def _run(self) -> None:
        backoff = Backoff(*RECONNECT_BACKOFF)
        logged = None  # the problem last logged, so that one that lasts is logged once
        while True:
            conn = await self._link.connection()
            self._lock_key = None  # a new session holds no lock yet
            try:
                await within(conn, self._open(conn), BEAT_TIMEOUT)
                backoff.reset()
                logged = None
                while True:
                    sweep_due, vacuum_due = await within(conn, self._beat(conn), BEAT_TIMEOUT)
                    if self._leading:
                        lead = self._leader.lead(conn, sweep_due, vacuum_due)
                        await within(conn, lead, STATEMENT_TIMEOUT)
                    await self._wait_for_notifications(conn, self._config.heartbeat_interval)
            except Exception as exc:  # never let the heartbeat die: a live worker needs it
                if isinstance(exc, psycopg.OperationalError | TimeoutError):
                    problem = f"session connection lost ({str(exc).strip() or 'no answer'})"
                elif isinstance(exc, psycopg.Error):  # read-only, a lock or statement timeout...
                    problem = f"session: the database refused ({' '.join(str(exc).split())})"
                else:
                    problem = ""
                    log.exception("session failed; reconnecting")
                if problem and problem != logged:
                    log.warning("%s; reconnecting", problem)
                    logged = problem
                await self._link.close()
                self._tell(self._events.on_jobs, "")  # the producer polls meanwhile; wake it now
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
                "queues": self._config.queues,
                "concurrency": self._config.concurrency,
                "lock_key": self._lock_key,
                "lease": self._config.lease_timeout,
            },
        )
        if self.trusted:
            q = self._queries
            for channel in (
                q.jobs_channel,
                q.scheduled_channel,
                q.cancel_channel,
                q.queues_channel,
            ):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            log.info(
                "listening on %s, %s and %s", q.jobs_channel, q.scheduled_channel, q.cancel_channel
            )
        if not self._swept:
            await self._leader.sweep(conn)  # start-up sweep: lost workers' jobs need no leader
            self._swept = True
            self._tell(self.registered.set)
        self._tell(self._events.on_jobs, "")

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
                "lease": self._config.lease_timeout,
                "lock_namespace": self._queries.lock_namespace,
                "vacuum_threshold": self._config.vacuum_threshold,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        registered, leading, cancel_requested, sweep_due, vacuum_due = row
        if not registered:
            log.warning(
                "this worker was presumed lost (no heartbeat within %s s) and its jobs went "
                "back to the queue; registering again",
                self._config.lease_timeout,
            )
            await self._open(conn)
        if leading != self._leading:
            self._leading = leading
            log.info("%s the leader", "became" if leading else "is no longer")
        for job_id in cancel_requested:
            self._tell(self._events.on_cancel, job_id)
        return bool(sweep_due), bool(vacuum_due)

    async def _read_cancellations(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Tell the worker which of its running jobs have a cancellation requested."""
        cur = await conn.execute(
            self._queries.cancel_requested_jobs, {"worker_id": self._worker_id}
        )
        for (job_id,) in await cur.fetchall():
            self._tell(self._events.on_cancel, job_id)

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
                    self._tell(self._events.on_jobs, notify.payload)
                elif notify.channel == q.scheduled_channel:
                    self._tell(self._events.on_scheduled)
                elif notify.channel == q.queues_channel:
                    self._tell(self._events.on_queues)
                elif notify.channel == q.cancel_channel:
                    cancel_news = True  # the payload is anyone's word: look at the table
            if cancel_news:
                await within(conn, self._read_cancellations(conn), BEAT_TIMEOUT)

    async def _watch(self) -> None:
        """Ping the worker's loop every :data:`WATCH_INTERVAL`; log a stall once, and its end."""
        pinged = time.monotonic()
        self._tell(self._answer, pinged)
        stalled = False
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self._answered == pinged:
                if stalled:
                    stalled = False
                    log.warning(
                        "the event loop answers again after %.1f s", self._answered_at - pinged
                    )
                pinged = time.monotonic()
                self._tell(self._answer, pinged)
            elif not stalled and (blocked := time.monotonic() - pinged) >= STALL_WARNING:
                stalled = True
                log.warning(
                    "the event loop was blocked for %.1f s (%s); async jobs must not block it: "
                    "await, or run blocking calls in a thread (asyncio.to_thread)",
                    blocked,
                    self._blocker(),
                )

    def _answer(self, pinged: float) -> None:
        """Run on the worker's loop: it is responsive."""
        self._answered_at = time.monotonic()
        self._answered = pinged

    def _blocker(self) -> str:
        """What holds the worker's loop: its current task and its thread's innermost line."""
        assert self._worker_loop is not None
        task = asyncio.current_task(self._worker_loop)
        frame = sys._current_frames().get(self._worker_thread)
        where = (
            f" at {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            if frame is not None
            else ""
        )
        name = task.get_name() if task is not None else None
        if name is not None and name.startswith(JOB_TASK_PREFIX):
            return f"a job is blocking it: job {name.removeprefix(JOB_TASK_PREFIX)}{where}"
        return f"task {name}{where}" if name is not None else f"blocked{where}"
