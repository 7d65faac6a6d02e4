"""A worker's database connection for one role, that reconnects by itself.

Statements on one link run one at a time. When the connection breaks, the statement is retried
on a new connection after a back-off (0.1 s doubling to 5 s), so a database restart pauses the
worker instead of killing it. Every statement pgjobs retries this way is safe to repeat: claims
and promotions select afresh, and fenced writes that already landed simply match no row again. (A
claim that landed before its answer was lost is found and handed back by the worker.) A statement
unanswered for :data:`STATEMENT_TIMEOUT` counts as a broken connection: that is a half-open link,
and :func:`within` cuts it at once.
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

from ._connection import connect_async
from ._errors import DatabaseError
from ._settings import Settings
from ._waits import Backoff

log = logging.getLogger("pgjobs.worker")

T = TypeVar("T")

RECONNECT_BACKOFF = (0.1, 5.0)
"""First and longest pause before trying a broken connection again."""

STATEMENT_TIMEOUT = 30.0
"""Seconds a statement may go unanswered before its connection is presumed half-open and
replaced. pgjobs' statements take milliseconds; this only catches dead links."""


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
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self.failures = 0
        """Statements that failed with the connection and were run again on a new one."""

    @property
    def current(self) -> psycopg.AsyncConnection[Any] | None:
        """The connection if one is open, without connecting."""
        return self._conn

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The open connection, reconnecting (with back-off) until it succeeds."""
        backoff = Backoff(*RECONNECT_BACKOFF)
        while self._conn is None or self._conn.closed:
            try:
                conn = await connect_async(self._settings, self._application_name)
                set_json_loads(_loads, conn)
                if self._settings.prepared_statements:
                    await conn.execute(CUSTOM_PLANS)
                self._conn = conn
            except DatabaseError as exc:
                log.warning(
                    "%s: %s; retrying in %.1f s", self._application_name, exc, backoff.delay
                )
                await backoff.sleep()
        return self._conn

    async def fetch(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run ``statement`` and return its rows, riding out connection failures."""
        backoff = Backoff(*RECONNECT_BACKOFF)
        async with self._lock:
            while True:
                conn = await self.connection()
                try:
                    return await within(conn, _rows(conn, statement, params), STATEMENT_TIMEOUT)
                except (psycopg.OperationalError, TimeoutError) as exc:
                    self.failures += 1
                    log.warning(
                        "%s: connection lost (%s); retrying in %.1f s",
                        self._application_name,
                        str(exc).strip() or "no answer",
                        backoff.delay,
                    )
                    await conn.close()
                    await backoff.sleep()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


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
