"""Makes scheduled and retryable jobs available when their time comes, by the database clock.

It sleeps until the next due time that the database reports (capped by the poll interval), so a
job scheduled for T starts shortly after T without busy polling. A notification on the scheduled
channel, or a local retry, wakes it early to re-read the next due time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from ._link import Link
from ._sql import Queries
from ._waits import wait_for_event

log = logging.getLogger("pgjobs.worker")

BATCH = 1000
"""Jobs promoted per statement; a full batch is followed at once by another."""

SLACK = 0.005
"""Seconds added to a due time, so the promotion's ``now()`` is past it."""


class Stager:
    def __init__(
        self,
        link: Link,
        queries: Queries,
        poll_interval: float,
        on_promoted: Callable[[], None],
    ) -> None:
        self._link = link
        self._queries = queries
        self._poll_interval = poll_interval
        self._on_promoted = on_promoted
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgjobs-stager")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        self._wakeup.set()

    async def promote_due(self) -> tuple[int, float | None]:
        """Promote what is due now; returns (jobs promoted, seconds until the next is due)."""
        rows = await self._link.fetch(
            self._queries.promote_scheduled_jobs,
            {"limit": BATCH, "channel": self._queries.jobs_channel},
        )
        promoted, _, next_due_in = rows[0]
        if promoted:
            self._on_promoted()
        return promoted, None if next_due_in is None else float(next_due_in)

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                promoted, next_due_in = await self.promote_due()
            except psycopg.Error:
                # not a lost connection (the link rides those out): log, and try again later
                log.exception("promoting due jobs failed; retrying")
                promoted, next_due_in = 0, None
            if promoted >= BATCH:
                continue
            timeout = self._poll_interval
            if next_due_in is not None:
                timeout = min(timeout, max(next_due_in, 0.0) + SLACK)
            await wait_for_event(self._wakeup, timeout)
