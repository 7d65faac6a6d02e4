"""Wakes the worker when jobs are committed, through LISTEN/NOTIFY.

Notifications are only a hint (they carry a queue name, never job data): the producer's polling
runs whatever happens here, so a lost notification costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ._link import Link

log = logging.getLogger("pgjobs.worker")


class Notifier:
    """Listens on the jobs and scheduled channels; calls ``on_jobs(queue)`` / ``on_scheduled()``.

    It holds its link's connection for as long as it lives; the link reconnects with back-off.
    """

    def __init__(
        self,
        link: Link,
        channels: tuple[str, str],
        on_jobs: Callable[[str], None],
        on_scheduled: Callable[[], None],
    ) -> None:
        self._link = link
        self._jobs_channel, self._scheduled_channel = channels
        self._on_jobs = on_jobs
        self._on_scheduled = on_scheduled
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgjobs-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._link.close()

    async def _run(self) -> None:
        while True:
            conn = await self._link.connection()
            try:
                await self._listen(conn)
            except psycopg.OperationalError as exc:
                log.warning("listener lost (%s); reconnecting", str(exc).strip())
                await self._link.close()
                # the producer polls meanwhile; wake it so nothing waits for the next poll
                self._on_jobs("")

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for channel in (self._jobs_channel, self._scheduled_channel):
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        log.info("listening on %s and %s", self._jobs_channel, self._scheduled_channel)
        async for notify in conn.notifies():
            if notify.channel == self._jobs_channel:
                self._on_jobs(notify.payload)
            else:
                self._on_scheduled()
