"""A worker's database connection for one role, that rides out database errors by itself.

Statements on one link run one at a time. A statement that fails for a reason not in what it was
given (a broken connection, a read-only or recovering server, a statement or lock timeout, a full
disk, a serialization failure...) is retried after a back-off (0.1 s doubling to 5 s), so a
database in trouble pauses the worker instead of killing it. Each distinct problem is logged once
while it lasts, and its end once. The connection is replaced only when it is broken or the server
is read-only (a new connection is how a multi-host URL finds the new primary). Only errors in the
statement's data or rows (SQLSTATE classes 22, 23 and P0: see :data:`CALLERS_FAULT`) reach the
caller. Every statement pgjobs retries
this way is safe to repeat: claims and promotions select afresh, and fenced writes that already
landed simply match no row again. (A claim that landed before its answer was lost is found and
handed back by the worker.) A statement unanswered for :data:`STATEMENT_TIMEOUT` counts as a
broken connection: that is a half-open link, and :func:`within` cuts it at once.

A stopping worker sets a time to give up (:meth:`Link.give_up_at`): past it, a failure raises
:class:`DatabaseError` instead of being retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import set_json_loads

from ._blockers import lock_holders
from ._connection import connect_async
from ._errors import DatabaseError
from ._settings import Settings
from ._sql import queries_for
from ._waits import Backoff, wait_for_event

log = logging.getLogger("pgjobs.worker")

T = TypeVar("T")

RECONNECT_BACKOFF = (0.1, 5.0)
"""First and longest pause before trying a broken connection again."""

STATEMENT_TIMEOUT = 30.0
"""Seconds a statement may go unanswered before its connection is presumed half-open and
replaced. pgjobs' statements take milliseconds; this only catches dead links."""

CALLERS_FAULT = ("22", "23", "P0")
"""SQLSTATE classes of errors in what a statement was given or in the rows it touched (data
exceptions, integrity violations, an exception raised by a trigger): raised to the caller, which
can tell the bad row from the rest, never retried."""

LAST_TRY = 1.0
"""Seconds a statement (or a connection attempt) may take once the give-up time has passed: a
stopping worker still tries each of its last writes once."""


async def within(conn: psycopg.AsyncConnection[Any], work: Awaitable[T], seconds: float) -> T:
    """``await work`` (statements on ``conn``), or, after ``seconds``, cut ``conn`` and raise
    ``TimeoutError``.

    Cutting, not cancelling: psycopg answers a cancelled statement with a cancel request and waits
    up to 10 s for it, and on a half-open link that request is lost too. Shutting the socket down
    under the pending statement makes it fail at once.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    with (
        contextlib.suppress(OSError, psycopg.Error),
        socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock,
    ):
        sock.shutdown(socket.SHUT_RDWR)
    done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise TimeoutError(f"no answer within {seconds:g} s")


CUSTOM_PLANS = "SET plan_cache_mode = force_custom_plan"
"""Prepared statements keep their parse, but each run is planned for its own parameters and the
table as it is now. A generic plan is made once, often while the jobs table is still small, and
kept: a claim planned as a sequential scan of a 10-row table went on scanning it at 100,000 rows
(15 ms a claim). Planning costs about 30 µs. Not sent behind a transaction pooler, where prepared
statements are off (so plans are custom anyway) and a SET would reach other clients' sessions."""


class Link:
    """One autocommit connection, opened on first use and reopened after a failure."""

    def __init__(self, settings: Settings, application_name: str) -> None:
        self._settings = settings
        self._application_name = application_name
        self._queries = queries_for(settings.schema)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._give_up_at: float | None = None
        self._give_up_moved = asyncio.Event()
        self._problem: str | None = None
        """The problem last logged, until a statement succeeds again."""
        self.failures = 0
        """Statements that failed with the connection and were run again on a new one."""

    @property
    def current(self) -> psycopg.AsyncConnection[Any] | None:
        """The connection if one is open, without connecting."""
        return self._conn

    def give_up_at(self, when: float) -> None:
        """From loop time ``when`` on, a failed statement or connection attempt raises
        :class:`DatabaseError` instead of being retried; a back-off under way ends then."""
        self._give_up_at = when
        self._give_up_moved.set()

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The open connection, reconnecting (with back-off) until it succeeds."""
        backoff = Backoff(*RECONNECT_BACKOFF)
        while self._conn is None or self._conn.closed:
            conn = None
            try:
                async with asyncio.timeout(
                    self._bound(self._settings.connect_timeout + STATEMENT_TIMEOUT)
                ):
                    conn = await connect_async(self._settings, self._application_name, limits=True)
                    set_json_loads(_loads, conn)
                    if self._settings.prepared_statements:
                        await conn.execute(CUSTOM_PLANS)
                self._conn = conn
            except (DatabaseError, psycopg.Error, TimeoutError) as exc:
                if conn is not None:
                    await conn.close()
                problem = str(exc).strip() or "no answer"
                await self._retry_later(problem, problem, backoff)
        return self._conn

    async def fetch(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run ``statement`` and return its rows, riding out every error but the caller's."""
        backoff = Backoff(*RECONNECT_BACKOFF)
        async with self._lock:
            while True:
                conn = await self.connection()
                try:
                    rows = await within(
                        conn, _rows(conn, statement, params), self._bound(STATEMENT_TIMEOUT)
                    )
                except (psycopg.Error, TimeoutError) as exc:
                    if isinstance(exc, psycopg.Error) and not _retried(exc):
                        raise
                    problem = _first_line(exc) or "no answer"
                    if isinstance(exc, psycopg.errors.LockNotAvailable):
                        problem = f"{problem}; {await lock_holders(conn, self._queries)}"
                    if _reconnects(conn, exc):
                        if not isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
                            problem = f"connection lost ({problem})"
                        self.failures += 1
                        await conn.close()
                    await self._retry_later(_kind(exc), problem, backoff)
                    continue
                if self._problem is not None:
                    log.info("%s: the database answers again", self._application_name)
                    self._problem = None
                return rows

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _bound(self, seconds: float) -> float:
        """``seconds``, cut to the time left before giving up (but :data:`LAST_TRY` at least)."""
        if self._give_up_at is None:
            return seconds
        return min(seconds, max(self._give_up_at - asyncio.get_running_loop().time(), LAST_TRY))

    async def _retry_later(self, kind: str, problem: str, backoff: Backoff) -> None:
        """Log ``problem`` unless a problem of this ``kind`` is the one last logged, then wait
        out the back-off; raise :class:`DatabaseError` instead once it is time to give up."""
        now = asyncio.get_running_loop().time()
        name = self._application_name
        if self._give_up_at is not None and now >= self._give_up_at:
            raise DatabaseError(f"{name}: {problem}; gave up, the worker is stopping")
        if kind != self._problem:
            self._problem = kind
            log.warning(
                "%s: %s; retrying with back-off (%.1f s, doubling up to %g s)",
                name,
                problem,
                backoff.delay,
                RECONNECT_BACKOFF[1],
            )
        delay = backoff.take()
        if self._give_up_at is not None:
            delay = min(delay, self._give_up_at - now)
        self._give_up_moved.clear()
        await wait_for_event(self._give_up_moved, delay)


def _retried(exc: psycopg.Error) -> bool:
    """Whether a failed statement is tried again: unless its data was at fault, or psycopg
    refused it before sending (no SQLSTATE, not a connection error)."""
    if isinstance(exc, psycopg.OperationalError):
        return True
    return exc.sqlstate is not None and exc.sqlstate[:2] not in CALLERS_FAULT


def _reconnects(conn: psycopg.AsyncConnection[Any], exc: Exception) -> bool:
    """Whether to retry on a new connection: this one is broken (or cut: a half-open link), or
    the server is read-only (a hot standby stays one; a new connection may find the primary)."""
    return (
        conn.closed
        or conn.broken
        or isinstance(exc, TimeoutError | psycopg.errors.ReadOnlySqlTransaction)
    )


def _kind(exc: Exception) -> str:
    """What makes two failures the same problem, for logging it once: its SQLSTATE and first
    line (a lock wait's holders, a connection's details may differ)."""
    sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    return f"{sqlstate or type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: Exception) -> str:
    """The message without the statement excerpt the server adds (``LINE 3: ...``)."""
    return str(exc).strip().partition("\n")[0]


def _loads(data: str | bytes) -> Any:
    """``json.loads``, with the empty arguments most claimed jobs have spared the parser."""
    if data == b"[]":
        return []
    if data == b"{}":
        return {}
    return json.loads(data)


async def _rows(
    conn: psycopg.AsyncConnection[Any], statement: str, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(statement, params)
        return await cur.fetchall() if cur.description else []
