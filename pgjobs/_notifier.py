"""Wakes the worker when jobs are committed, through LISTEN/NOTIFY.

Notifications are only a hint (they carry a queue name, never job data): the producer's polling
runs whatever happens here, so a lost notification costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

from ._connection import connect_async
from ._errors import DatabaseError
from ._settings import Settings

log = logging.getLogger("pgjobs.worker")


class Notifier:
    """Listens on the jobs and scheduled channels; calls ``on_jobs(queue)`` / ``on_scheduled()``."""

    def __init__(
        self,
        settings: Settings,
        application_name: str,
        channels: tuple[str, str],
        on_jobs: Callable[[str], None],
        on_scheduled: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._application_name = application_name
        self._jobs_channel, self._scheduled_channel = channels
        self._on_jobs = on_jobs
        self._on_scheduled = on_scheduled
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgjobs-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except (psycopg.OperationalError, DatabaseError) as exc:
                self.listening.clear()
                log.warning("listener lost (%s); reconnecting in %.1f s", str(exc).strip(), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                # the producer polls meanwhile; wake it so nothing waits for the next poll
                self._on_jobs("")

    async def _listen(self) -> None:
        conn = await connect_async(self._settings, self._application_name)
        try:
            for channel in (self._jobs_channel, self._scheduled_channel):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.listening.set()
            log.info("listening on %s and %s", self._jobs_channel, self._scheduled_channel)
            async for notify in conn.notifies():
                if notify.channel == self._jobs_channel:
                    self._on_jobs(notify.payload)
                else:
                    self._on_scheduled()
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
