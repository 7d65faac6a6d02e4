"""A worker's database connection for one role, that reconnects by itself.

Statements on one link run one at a time. When the connection breaks, the statement is retried
on a new connection after a back-off (0.1 s doubling to 5 s), so a database restart pauses the
worker instead of killing it. Every statement pgjobs retries this way is safe to repeat: claims
and promotions select afresh, and fenced writes that already landed simply match no row again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg

from ._connection import connect_async
from ._errors import DatabaseError
from ._settings import Settings

log = logging.getLogger("pgjobs.worker")

MAX_BACKOFF = 5.0


class Link:
    """One autocommit connection, opened on first use and reopened after a failure."""

    def __init__(self, settings: Settings, application_name: str) -> None:
        self._settings = settings
        self._application_name = application_name
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The open connection, reconnecting (with back-off) until it succeeds."""
        backoff = 0.1
        while self._conn is None or self._conn.closed:
            try:
                self._conn = await connect_async(self._settings, self._application_name)
            except DatabaseError as exc:
                log.warning("%s: %s; retrying in %.1f s", self._application_name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        return self._conn

    async def fetch(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run ``statement`` and return its rows, riding out connection failures."""
        backoff = 0.1
        async with self._lock:
            while True:
                conn = await self.connection()
                try:
                    async with conn.cursor() as cur:
                        await cur.execute(statement, params)
                        return await cur.fetchall() if cur.description else []
                except psycopg.OperationalError as exc:
                    log.warning(
                        "%s: connection lost (%s); retrying in %.1f s",
                        self._application_name,
                        str(exc).strip(),
                        backoff,
                    )
                    await conn.close()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
