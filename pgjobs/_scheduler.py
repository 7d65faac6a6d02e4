"""Enqueues the ticks of the app's cron entries: every (non-burst) worker runs one.

At start it declares the entries of its code (UPSERT_CRON_ENTRIES), which also gives it each
entry's last tick from the table. Then it sleeps until the next tick of any of its entries and
enqueues what is due (:func:`pgjobs._cron.due`) with ENQUEUE_CRON_TICKS, one statement per entry.
Every worker does the same at the same moments; the statement takes the entry's row lock and
moves its ``last_tick_at`` forward, so each tick is enqueued by exactly one of them, and the
others learn the new ``last_tick_at`` from their statement's answer. Entries in the table but not
in this code are left alone: nothing enqueues an entry that no running code declares.

Ticks are computed by this host's clock (the table, not the clock, keeps each tick to one job).
The scheduler wakes at least every :data:`MAX_SLEEP`, so a clock that jumps is caught up with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg

from ._cron import CronEntry, due, encode_rows, next_runs, tick_text
from ._link import Link
from ._sql import Queries

log = logging.getLogger("pgjobs.worker")

MAX_SLEEP = 60.0
"""Longest sleep between two looks at the clock, in seconds."""

SLACK = 0.002
"""Seconds past a tick at which the scheduler wakes, so the tick is in the past."""


class Scheduler:
    """Enqueues the ticks of ``entries`` on ``link`` until stopped. It keeps each entry's last
    tick as the table last reported it, and only ever asks the table to move it forward."""

    def __init__(self, link: Link, queries: Queries, entries: Sequence[CronEntry]) -> None:
        self._link = link
        self._queries = queries
        self._entries = list(entries)
        self._last_tick: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgjobs-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        await self._declare()
        while True:
            now = datetime.now(UTC)
            for entry in self._entries:
                try:
                    await self._enqueue_due(entry, now)
                except psycopg.Error:
                    # not a lost connection (the link rides those out): log, try at the next tick
                    log.exception("cron entry %r: enqueuing its tick failed", entry.name)
            wake = min(
                next_runs(e.schedule, max(now, self._last_tick[e.name]), 1)[0]
                for e in self._entries
            )
            delay = (wake - datetime.now(UTC)).total_seconds() + SLACK
            await asyncio.sleep(min(max(delay, 0.0), MAX_SLEEP))

    async def _declare(self) -> None:
        rows = await self._link.fetch(self._queries.upsert_cron_entries, encode_rows(self._entries))
        now = datetime.now(UTC)  # a row whose last tick was cleared in SQL starts afresh
        self._last_tick = {name: last_tick or now for name, last_tick in rows}
        log.info("cron: %s entr%s declared", len(rows), "y" if len(rows) == 1 else "ies")

    async def _enqueue_due(self, entry: CronEntry, now: datetime) -> None:
        ticks = due(entry.schedule, self._last_tick[entry.name], now, entry.catch_up)
        if ticks is None:
            return
        rows = await self._link.fetch(
            self._queries.enqueue_cron_ticks,
            {
                "name": entry.name,
                "ticks": [tick_text(tick) for tick in ticks.ticks],
                "through": ticks.through,
            },
        )
        last_tick, enqueued = rows[0]
        if last_tick is not None:
            self._last_tick[entry.name] = last_tick
        if enqueued:
            log.debug("cron entry %r: %s job(s) enqueued", entry.name, enqueued)
