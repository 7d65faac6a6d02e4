"""The producer: claims jobs into a worker's free slots, and decides when to claim again.

It claims at most the free slots in one ``FOR UPDATE SKIP LOCKED`` statement. A claim that
filled every free slot may have left jobs behind, so the next one follows as slots free; a claim
that found fewer jobs emptied the queues, and the producer waits for news of more (a
notification, a promotion) or the poll interval. A finished job then wakes nothing: under a
steady trickle, a worker would otherwise claim again at every job's end and mostly find
nothing. A slot is free once its job's outcome is written: a worker whose writes lag claims
nothing more, so its outcomes never pile up into one huge statement.

Queues with limits (concurrency, rate) are claimed by their own statement; which ones are
limited is read at start, on news of a change, and at least every poll interval (the claims are
authoritative). A queue whose claim the database refuses is set aside
(:class:`~pgjobs._refusals.Refusals`) so that the others run.

The producer knows nothing of running a job: it hands the claimed rows to its :class:`Slots`
(the worker), which starts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from ._errors import DatabaseError
from ._execution import ClaimedJob
from ._link import Link
from ._queues import QueueView, split_limited_claim
from ._refusals import Refusals
from ._settings import QueueSpec
from ._sql import Queries
from ._stager import Stager
from ._waits import wait_for_event

log = logging.getLogger("pgjobs.worker")

CLAIM_LINGER = 0.005
"""Seconds the producer waits for more free slots when fewer than half are free."""


@dataclass(frozen=True)
class ProducerConfig:
    """What the producer needs of the worker's settings."""

    worker_id: str
    queues: QueueSpec
    concurrency: int
    poll_interval: float
    burst: bool = False
    """Return from :meth:`Producer.run` once nothing is left to run."""


@dataclass(frozen=True)
class Slots:
    """The worker's side: its free slots, and the jobs it holds."""

    free: Callable[[], int]
    """Slots without a job or an unwritten outcome."""
    start: Callable[[Sequence[Sequence[Any]], frozenset[str]], list[ClaimedJob]]
    """Start the claimed jobs (CLAIM_JOBS rows); the second argument: the queues whose starts
    are confirmed once the jobs have begun."""
    held: Callable[[], list[int]]
    """The ids of the jobs it runs, or whose outcome it has not written yet."""
    settled: Callable[[], Awaitable[bool]]
    """Whether nothing runs and every outcome is written (it writes what it can first)."""


class Producer:
    """Claims jobs for one worker until :meth:`stop` (or, in burst mode, until its queues are
    empty). ``claim`` is the worker's claim connection; ``ack`` its outcome connection, on which
    it wakes the workers of limited queues whose slots freed."""

    def __init__(
        self,
        config: ProducerConfig,
        queries: Queries,
        claim: Link,
        ack: Link,
        stager: Stager,
        slots: Slots,
        after_wait: Callable[[], None],
    ) -> None:
        self._config = config
        self._queries = queries
        self._claim = claim
        self._ack = ack
        self._stager = stager
        self._slots = slots
        self._after_wait = after_wait
        self._stopped = False
        self._jobs_waiting = asyncio.Event()
        """Set when jobs may have become available: a notification, a promotion, a stop."""
        self._slot_freed = asyncio.Event()
        """Set when job outcomes are written, freeing their slots (a job's end frees none: its
        outcome holds the slot until written)."""
        self._claim_floor = max(1, config.concurrency // 2)
        self._view = QueueView()
        self._view_read_at: float | None = None
        self._limited_ended: set[str] = set()
        """Limited queues whose jobs ended here since their workers were last woken."""
        self._refusals = Refusals(config.poll_interval)
        self._rate_wake: asyncio.TimerHandle | None = None
        self._notifying: set[asyncio.Future[None]] = set()

    async def run(self) -> None:
        """Claim into free slots until stopped; a burst producer returns once its queues are
        empty and its worker has settled."""
        while not self._stopped:
            free = self._slots.free()
            if free <= 0:
                self._slot_freed.clear()
                await self._wait(self._slot_freed)
                continue
            if free < self._claim_floor and await self._more_slots_soon():
                continue
            self._jobs_waiting.clear()  # before the claim: news during it means claim again
            claimed = await self.claim(free)
            if len(claimed) == free:
                continue  # there may be more: claim again as slots free
            if self._config.burst and not claimed and await self._burst_done():
                return
            await self._wait(self._jobs_waiting)

    def stop(self) -> None:
        """Claim nothing more; :meth:`run` returns at once."""
        self._stopped = True
        self._jobs_waiting.set()
        self._slot_freed.set()

    def wake(self) -> None:
        """Jobs may be available (a promotion): claim again."""
        self._jobs_waiting.set()

    def notified(self, queue: str) -> None:
        """A notification of new jobs in ``queue`` (``""``: in some queue)."""
        if not queue or queue in self._config.queues.names:
            self._jobs_waiting.set()

    def queues_changed(self) -> None:
        """A queue's settings changed (a pause, a limit): read them again, and claim."""
        self._view_read_at = None
        self._refusals.retry()
        self._jobs_waiting.set()

    def ended(self, queue: str) -> None:
        """A job of ``queue`` ended here: once its outcome is written, a limited queue's other
        workers are woken."""
        if queue in self._view.limited:
            self._limited_ended.add(queue)

    def written(self, backlog: int) -> None:
        """Outcomes were written, freeing their slots; ``backlog`` are still unwritten."""
        self._slot_freed.set()
        if self._limited_ended:
            # a slot under a limit is free: wake the workers of those queues, on every host.
            # Outcomes still unwritten may be of those queues: wake them again after each write
            # until none is left, so no wake-up comes before the slot it announces
            queues = sorted(self._limited_ended)
            if not backlog:
                self._limited_ended.clear()
            task = asyncio.ensure_future(self._wake_held_queues(queues))
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)
        if self._config.burst:
            self._jobs_waiting.set()  # a burst worker looks again, to learn when it is done

    def queue_order(self) -> list[str]:
        """The queues to claim from, in order: as given (strict) or a weighted shuffle."""
        spec = self._config.queues
        if not spec.weighted:
            return list(spec.names)
        # Efraimidis-Spirakis: sorting by U^(1/w) draws an order weighted by w
        keys = {
            n: random.random() ** (1 / w) for n, w in zip(spec.names, spec.weights, strict=True)
        }
        return sorted(spec.names, key=keys.__getitem__, reverse=True)

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Claim and start up to ``limit`` jobs: the plain queues first, then the limited."""
        failures = self._claim.failures
        await self._read_view()
        order = self.queue_order()
        if self._refusals:
            skipped = self._refusals.skipped(asyncio.get_running_loop().time())
            order = [q for q in order if q not in skipped]
        limited = [q for q in order if q in self._view.limited] if self._view.limited else []
        claimed: list[ClaimedJob] = []
        if len(limited) < len(order):  # a plain claim would find nothing otherwise
            claimed += await self._claim_each(order, limit, limited=False)
        if limited and len(claimed) < limit:
            claimed += await self._claim_each(limited, limit - len(claimed), limited=True)
        if self._claim.failures != failures:
            await self._release_strays()
        return claimed

    async def _more_slots_soon(self) -> bool:
        """Wait up to :data:`CLAIM_LINGER` for another slot to free; True if one did.

        Claiming one slot at a time as short jobs finish costs a round trip per job; lingering
        a few milliseconds lets one claim fill many slots. Long jobs lose at most the linger.
        """
        self._slot_freed.clear()
        return await wait_for_event(self._slot_freed, CLAIM_LINGER) and not self._stopped

    async def _burst_done(self) -> bool:
        """True once nothing runs, nothing is due and every outcome is written."""
        if not await self._slots.settled():
            return False
        promoted, _ = await self._stager.promote_due()
        return promoted == 0 and not self._jobs_waiting.is_set()

    async def _wait(self, event: asyncio.Event) -> None:
        await wait_for_event(event, self._config.poll_interval)
        self._after_wait()

    async def _read_view(self) -> None:
        """Re-read which queues are limited, at most once per poll interval unless told of a
        change: a worker whose queues have no settings pays one small query per interval."""
        now = asyncio.get_running_loop().time()
        if self._view_read_at is not None and now - self._view_read_at < self._config.poll_interval:
            return
        self._view_read_at = now
        names = list(self._config.queues.names)
        rows = await self._claim.fetch(self._queries.queue_settings, {"queues": names})
        self._view = QueueView.from_rows(names, rows)

    async def _claim_each(
        self, queues: list[str], limit: int, *, limited: bool
    ) -> list[ClaimedJob]:
        """Claim and start up to ``limit`` jobs from ``queues`` (CLAIM_LIMITED_JOBS if
        ``limited``, else CLAIM_JOBS). When the database refuses the claim for what a row holds,
        claim queue by queue instead: a queue refused on its own is set aside and the others
        are claimed, so that no row can stop the worker."""
        q = self._queries
        try:
            rows = await self._claim.fetch(
                q.claim_limited_jobs if limited else q.claim_jobs,
                {"queues": queues, "limit": limit, "worker_id": self._config.worker_id},
            )
        except psycopg.Error as exc:
            if len(queues) == 1:
                self._refuse(queues[0], exc)
                return []
            claimed: list[ClaimedJob] = []
            for queue in queues:
                if len(claimed) >= limit:
                    break
                claimed += await self._claim_each([queue], limit - len(claimed), limited=limited)
            return claimed
        if self._refusals:  # those claimed from (a plain claim skips the limited queues) are back
            served = (queue for queue in queues if (queue in self._view.limited) == limited)
            for queue in self._refusals.claimed(served):
                log.info("queue %s: claimed again", queue)
        jobs = self._held_back_by_rates(rows) if limited else rows
        return self._slots.start(jobs, self._view.rated)

    def _refuse(self, queue: str, exc: psycopg.Error) -> None:
        problem = str(exc).strip().partition("\n")[0]
        if self._refusals.refuse(queue, problem, asyncio.get_running_loop().time()):
            log.warning(
                "queue %s: the database refuses to claim from it (%s); its jobs wait and the "
                "other queues run. Fix what it names (the queue's settings: pgjobs queue limit; "
                "or its jobs); it is tried again when its settings change, and every %g s",
                queue,
                problem,
                self._config.poll_interval,
            )

    def _held_back_by_rates(self, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        """The jobs of a CLAIM_LIMITED_JOBS claim; when a rate holds jobs back, look again as
        its window frees (within the poll interval anyway)."""
        jobs, free_in = split_limited_claim(rows)
        if free_in is not None and free_in < self._config.poll_interval:
            loop = asyncio.get_running_loop()
            at, wake = loop.time() + free_in, self._rate_wake
            # the earliest wake-up still to come holds (claims queue by queue each give one)
            if wake is None or wake.cancelled() or not loop.time() < wake.when() <= at:
                if wake is not None:
                    wake.cancel()
                self._rate_wake = loop.call_at(at, self._jobs_waiting.set)
        return jobs

    async def _release_strays(self) -> None:
        """After a claim was retried on a new connection, the lost try may have claimed jobs
        that this worker never heard of: hand them back. Jobs it runs, and jobs it finished
        whose outcome is not written yet, are its own."""
        rows = await self._claim.fetch(
            self._queries.release_stray_jobs,
            {
                "worker_id": self._config.worker_id,
                "known": self._slots.held(),
                "channel": self._queries.jobs_channel,
            },
        )
        if rows:
            log.warning("handed back %s job(s) claimed by a lost connection", len(rows))

    async def _wake_held_queues(self, queues: list[str]) -> None:
        with contextlib.suppress(DatabaseError):  # a missed wake-up costs a poll interval
            await self._ack.fetch(self._queries.wake_held_queues, {"queues": queues})
