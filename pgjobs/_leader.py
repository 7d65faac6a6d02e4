"""The leader's duties: the rescue sweep, pruning, and starting the vacuum of the jobs table.

One worker at a time leads: its session holds the leader lease (a row in ``leases``), renewed at
every heartbeat (:mod:`pgjobs._session`). The heartbeat that renews it also tells whether any
worker is lost and whether the jobs table is due for a vacuum, so the session calls
:meth:`Leader.lead` after each of the leader's beats and an idle leader makes no statement of its
own. Invariants:

* every duty is safe to run twice or by two workers at once (a lease can pass on while its old
  holder is mid-duty): the sweep and the prune lock their rows ``SKIP LOCKED``, and the vacuum
  skips what another holds;
* nothing here decides from how long a job has run: the sweep takes the jobs of workers whose
  lease expired or whose session lock is free, and running jobs whose worker is not registered;
* the duties run on the session's connection, one statement at a time, except the vacuum, which
  runs in the background on a connection of its own (:mod:`pgjobs._vacuum`) so it never delays
  a heartbeat.

:func:`rescue` is the sweep itself; a supervisor also runs it for a child it saw die.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from ._settings import Settings
from ._sql import Queries
from ._vacuum import Vacuum

log = logging.getLogger("pgjobs.worker")

PRUNE_INTERVAL = 60.0
"""Seconds between the leader's prune runs."""

PRUNE_BATCH = 1000
"""Jobs deleted per prune statement; a run stops after :data:`PRUNE_BATCHES` full batches."""

PRUNE_BATCHES = 10

STATS_KEPT = 2 * 3600.0
"""Seconds of ``job_stats`` kept minute by minute; older minutes are folded into totals."""


@dataclass(frozen=True)
class Retention:
    """Seconds finished jobs are kept, by state, before the leader prunes them; and completed
    jobs' results, before it clears them (``None``: as long as the job)."""

    completed: float
    cancelled: float
    discarded: float
    results: float | None = None

    @classmethod
    def of(cls, settings: Settings) -> Retention:
        return cls(
            settings.retain_completed,
            settings.retain_cancelled,
            settings.retain_discarded,
            settings.result_retention,
        )


class Leader:
    """What the worker ``worker_id`` does while it holds the leader lease."""

    def __init__(
        self, retention: Retention, queries: Queries, worker_id: str, vacuum: Vacuum
    ) -> None:
        self._retention = retention
        self._queries = queries
        self._worker_id = worker_id
        self._vacuum = vacuum
        self._next_prune = 0.0
        self._prune_batches = True
        self._fold_stats = True
        """False once the role turned out unable to delete batches (granted before they were
        pruned): warned once, not at every run."""

    async def lead(
        self, conn: psycopg.AsyncConnection[Any], sweep_due: bool, vacuum_due: bool
    ) -> None:
        """The duties after one of the leader's beats: sweep lost workers and start a vacuum when
        the beat found them due, prune when due."""
        if vacuum_due:
            self._vacuum.start_unless_running()
        if sweep_due:
            await self.sweep(conn)
        await self._prune_when_due(conn)

    async def sweep(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Give the jobs of lost workers back to the queue (also run once by a starting worker,
        leader or not: a whole fleet restarting needs no leader to recover its jobs)."""
        lost, rescued, discarded = await rescue(
            conn, self._queries, sweeper_id=self._worker_id, worker_id=None, reason=None
        )
        if lost or rescued:
            log.warning(
                "swept %s lost worker(s): %s job(s) back to the queue, %s discarded on their "
                "last attempt",
                lost,
                rescued - discarded,
                discarded,
            )

    async def stop(self) -> None:
        """Stop a vacuum in progress."""
        await self._vacuum.stop()

    async def _prune_when_due(self, conn: psycopg.AsyncConnection[Any]) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL
        params = {
            "completed": self._retention.completed,
            "cancelled": self._retention.cancelled,
            "discarded": self._retention.discarded,
            "limit": PRUNE_BATCH,
        }
        total = 0
        for _ in range(PRUNE_BATCHES):
            cur = await conn.execute(self._queries.prune_jobs, params)
            row = await cur.fetchone()
            deleted = row[0] if row else 0
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        if total:
            log.info("pruned %s finished job(s) past their retention", total)
        if self._retention.results is not None:
            await self._prune_results(conn, self._retention.results)
        if self._prune_batches:
            await self._prune_finished_batches(conn)
        if self._fold_stats:
            await self._fold_job_stats(conn)

    async def _prune_results(self, conn: psycopg.AsyncConnection[Any], retain: float) -> None:
        """Clear the results stored more than ``retain`` seconds ago (``result_retention``)."""
        params = {"retain": retain, "limit": PRUNE_BATCH}
        total = 0
        for _ in range(PRUNE_BATCHES):
            cur = await conn.execute(self._queries.prune_results, params)
            row = await cur.fetchone()
            cleared = row[0] if row else 0
            total += cleared
            if cleared < PRUNE_BATCH:
                break
        if total:
            log.info("cleared %s job result(s) past result_retention", total)

    async def _fold_job_stats(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Fold ``job_stats`` minutes past :data:`STATS_KEPT` into their totals."""
        try:
            await conn.execute(self._queries.fold_job_stats, {"keep": STATS_KEPT})
        except psycopg.errors.InsufficientPrivilege:
            self._fold_stats = False
            log.warning(
                "cannot fold old minutes of job_stats: this role may not delete from it; apply "
                "`pgjobs grants --worker ROLE` again (docs/roles.md)"
            )

    async def _prune_finished_batches(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Delete batches whose jobs are all pruned, one statement per prune run."""
        params = {"retain": self._retention.completed, "limit": PRUNE_BATCH}
        try:
            cur = await conn.execute(self._queries.prune_finished_batches, params)
        except psycopg.errors.InsufficientPrivilege:
            self._prune_batches = False
            log.warning(
                "cannot prune finished batches: this role may not delete from the batches "
                "table; apply `pgjobs grants --worker ROLE` again (docs/roles.md)"
            )
            return
        row = await cur.fetchone()
        if row and row[0]:
            log.info("pruned %s finished batch(es) whose jobs are pruned", row[0])


async def rescue(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    *,
    sweeper_id: str | None,
    worker_id: str | None,
    reason: str | None,
) -> tuple[int, int, int]:
    """Run the rescue sweep; returns (workers lost, jobs rescued, of which discarded).

    ``worker_id`` names one worker known to be dead (its supervisor saw it exit), with ``reason``.
    """
    cur = await conn.execute(
        queries.rescue_jobs,
        {
            "sweeper_id": sweeper_id,
            "worker_id": worker_id,
            "reason": reason,
            "lock_namespace": queries.lock_namespace,
            "channel": queries.jobs_channel,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    lost, rescued, discarded, _ = row
    return lost, rescued, discarded
