"""The worker: claims jobs into free slots, runs them, acknowledges them, shuts down cleanly.

One process holds three connections: ``session`` (registration, heartbeat, leadership,
LISTEN/NOTIFY: see :mod:`pgjobs._session`), ``claim`` (claims and promotions of due scheduled
jobs, and the ticks of the app's cron entries, if it has any: :mod:`pgjobs._scheduler`) and
``ack`` (batched outcome writes), and a fourth, ``progress``, once a job reports its progress
(:mod:`pgjobs._progress`). The producer loop claims at most the free slots in one
``FOR UPDATE SKIP LOCKED`` statement. A claim that filled every free slot may have left jobs
behind, so the next one follows as slots free; a claim that found fewer jobs emptied the queues,
and the producer waits for news of more (a notification, a promotion) or the poll interval. A
finished job then wakes nothing: under a steady trickle, a worker would otherwise claim again at
every job's end and mostly find nothing. A slot is free once its job's outcome is written: a
worker whose writes lag claims nothing more, so its outcomes never pile up into one huge
statement.

Shutdown: the first SIGTERM/SIGINT stops claiming and gives running jobs ``shutdown_timeout``
seconds to finish; jobs still running then are handed back to the queue (their attempt is not
counted) and the worker exits. A second signal hands them back at once. The heartbeat goes on
until the end, so a draining worker is never swept.

Quiet: SIGTSTP (``systemctl reload`` with ``ExecReload=/bin/kill -TSTP $MAINPID``, as in
Sidekiq's unit) stops claiming for good while running jobs go on to their end; the worker stays
up with its heartbeat until SIGTERM, which then stops it as above. Quiet is one-way, as in
Sidekiq: SIGCONT does not undo it, because systemd sends SIGCONT along with every stop signal and
``kill -STOP``/``-CONT`` pairs (debuggers, freezers) would otherwise end a quiet nobody lifted; a
fresh process (a restart) claims again. Under a supervisor the worker starts with SIGTSTP
blocked and unblocks it once its handler is in place, so a quiet request during start-up is held
for it rather than stopping the process.

Retiring: a ``def`` job that overruns its timeout leaves a thread nobody can stop. The worker then
stops claiming, lets its other jobs finish as in a shutdown, and exits with :data:`EXIT_RETIRED`
so its supervisor (``--processes``) or process manager starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from ._acker import Acker, Claim
from ._app import App
from ._context import JobContext
from ._errors import DatabaseError
from ._execution import ClaimedJob, execute
from ._leader import Leader
from ._link import LAST_TRY, Link
from ._logs import job_ended, job_started
from ._migrate import check_schema
from ._progress import ProgressWriter
from ._queues import QueueView, split_limited_claim
from ._refusals import Refusals
from ._scheduler import Scheduler
from ._session import Session, SessionEvents
from ._stager import Stager
from ._starts import Entering, Starts
from ._stats import STATS_INTERVAL, STATS_LAST_TRY, STATS_SLOTS
from ._vacuum import Vacuum
from ._waits import wait_for_event

log = logging.getLogger("pgjobs.worker")

CLAIM_LINGER = 0.005
"""Seconds the producer waits for more free slots when fewer than half are free."""

EXIT_RETIRED = 3
"""Exit status of a worker that retired because a job's thread overran its timeout."""

FINAL_WAIT = 0.5
"""Seconds a stopping worker whose jobs ran to its shutdown timeout still gives their outcomes
to be written."""


@dataclass(frozen=True)
class Running:
    """A job this worker is running: its task, its row, what the job sees of itself, and the
    claim its outcome will be written under."""

    task: asyncio.Task[None]
    job: ClaimedJob
    context: JobContext
    claim: Claim


class Worker:
    """Runs ``app``'s jobs from the queues in its settings until stopped (or, in burst mode,
    until those queues are empty)."""

    def __init__(
        self,
        app: App,
        *,
        burst: bool = False,
        worker_id: str | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.burst = burst
        self.id = worker_id or str(uuid.uuid4())
        """Random per start (never a hostname or pid, which a restart reuses)."""
        self._supervisor_pid = supervisor_pid
        self.queues = self.settings.queue_spec
        self.stopping = threading.Event()
        self._stop_requested = asyncio.Event()
        self._deadline: float | None = None
        """Loop time at which the shutdown timeout runs out, once stopping."""
        self.quiet = False
        """Set by SIGTSTP (:meth:`request_quiet`): no new jobs, but no stop either."""
        self._force = asyncio.Event()
        self._jobs_waiting = asyncio.Event()
        """Set when jobs may have become available: a notification, a promotion, a stop."""
        self._slot_freed = asyncio.Event()
        """Set when job outcomes are written, freeing their slots (a job's end frees none: its
        outcome holds the slot until written)."""
        self._running: dict[int, Running] = {}
        self._cancelled_ids: set[int] = set()
        self._claim_floor = max(1, self.settings.concurrency // 2)
        self._view = QueueView()
        """Which of this worker's queues are limited: read at start, on a notification on the
        queues channel, and at least every poll interval (the claims are authoritative)."""
        self._view_read_at: float | None = None
        self._limited_ended: set[str] = set()
        """Limited queues whose jobs ended here since their workers were last woken."""
        self._refusals = Refusals(self.settings.poll_interval)
        """Queues whose claims the database refused: left out until their settings change or a
        poll interval has passed."""
        self._rate_wake: asyncio.TimerHandle | None = None
        self._notifying: set[asyncio.Future[None]] = set()
        self._queries = app.queries
        self._threads = ThreadPoolExecutor(
            max_workers=self.settings.concurrency, thread_name_prefix="pgjobs-job"
        )
        self._claim = Link(self.settings, self._application_name("claim"))
        self._ack = Link(self.settings, self._application_name("ack"))
        self._starts = Starts(self._claim, self._queries)
        self._acker = Acker(
            self._ack,
            self._queries,
            self.id,
            on_retry=self._retry_scheduled,
            on_written=self._free_slot,
        )
        self._progress = ProgressWriter(
            Link(self.settings, self._application_name("progress")), self._queries, self.id
        )
        """Writes the progress jobs report; connects on the first report."""
        self._stats_slot = random.randrange(STATS_SLOTS)
        self._counting: asyncio.Task[None] | None = None
        self._counted_all = asyncio.Event()
        """Set once every outcome is written at the stop: time for the last count."""
        self._stager = Stager(
            self._claim,
            self._queries,
            self.settings.poll_interval,
            on_promoted=self._jobs_waiting.set,
        )
        self._session = Session(
            self.settings,
            self._queries,
            self.id,
            self._application_name("session"),
            SessionEvents(
                on_jobs=self._on_notification,
                on_scheduled=self._stager.wake,
                on_cancel=self._cancel,
                on_queues=self._on_queues_changed,
            ),
            Leader(
                self.settings,
                self._queries,
                self.id,
                Vacuum(self.settings, self._queries, self._application_name("vacuum")),
            ),
        )
        self._scheduler = (
            Scheduler(self._claim, self._queries, list(app.cron_entries.values()))
            if app.cron_entries and not burst
            else None
        )
        """Enqueues the app's cron entries; none without entries (and in burst mode)."""
        self.unfinished_threads = False
        """Set when jobs were handed back or overran: their threads may still be running."""
        self.retired = False
        """Set when the worker stopped because a job's thread overran its timeout."""

    def _application_name(self, role: str) -> str:
        return f"pgjobs-worker:{self.id[:8]}:{role}"

    async def run(self) -> None:
        """Run until stopped. Installs SIGTERM/SIGINT (stop) and SIGTSTP (quiet) handlers while
        it runs."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):  # first: a stop must work in every state
            loop.add_signal_handler(signum, self.request_stop)
        self._handle_quiet(loop)
        try:
            if not await self._unless_stopped(_in_daemon_thread(check_schema, self.settings)):
                return
            log.info(
                "worker %s started: queues %s, concurrency %s, %s",
                self.id,
                self.queues,
                self.settings.concurrency,
                "listening for notifications" if self._session.trusted else "poll-only",
            )
            self._session.start()
            if not await self._unless_stopped(self._session.registered.wait()):
                return
            await self._apply_declared_limits()
            await self._check_counting()
            self._acker.start()
            self._progress.start()
            if self._acker.tally is not None:
                self._counting = asyncio.create_task(self._count(), name="pgjobs-stats")
            if not self.burst:
                self._stager.start()
            if self._scheduler is not None:
                self._scheduler.start()
            try:
                await self._produce()
            except DatabaseError:
                if not self.stopping.is_set():
                    raise
                # a claim the database kept refusing, given up at the stop
            await self._stay_quiet()
            await self._drain()
        finally:
            self._unhandle_quiet(loop)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self._stager.stop()
            if self._scheduler is not None:
                await self._scheduler.stop()
            await self._starts.stop()
            await self._stop_acker()
            await self._progress.stop()
            if self._counting is not None:
                self._counted_all.set()  # the last outcomes' counts, if the database takes them
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(STATS_LAST_TRY):
                        await self._counting
            await self._session.stop()
            await self._claim.close()
            await self._ack.close()
            self._threads.shutdown(wait=False, cancel_futures=True)
            log.info("worker %s stopped", self.id)

    def request_stop(self) -> None:
        """First call: graceful shutdown. Second call: hand running jobs back and stop now."""
        if self.stopping.is_set():
            log.info("second stop signal: handing running jobs back now")
            self._force.set()
        else:
            log.info(
                "stopping: no new jobs; waiting up to %ss for %s running",
                self.settings.shutdown_timeout,
                len(self._running),
            )
            self.stopping.set()
            now = asyncio.get_running_loop().time()
            self._deadline = now + self.settings.shutdown_timeout
            self._claim.give_up_at(now)  # no more claims: one the database refuses ends now
            # after the drain's wait for the last outcomes: that wait reports what is unwritten
            self._ack.give_up_at(self._deadline + LAST_TRY)
            self._stop_requested.set()
        self._jobs_waiting.set()
        self._slot_freed.set()

    async def _unless_stopped(self, work: Awaitable[object]) -> bool:
        """Await ``work`` unless a stop comes first (then cancel it); True if it completed."""
        task = asyncio.ensure_future(work)
        stop = asyncio.create_task(self._stop_requested.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            log.info("stopping before the worker could start")
            return False
        task.result()
        return True

    async def _stop_acker(self) -> None:
        """Stop the acker once every outcome is written; once stopping, give up at the shutdown
        timeout (:meth:`_drain` has said what was left unwritten)."""
        left = None
        if self._deadline is not None:
            left = max(self._deadline - asyncio.get_running_loop().time(), 0.0)
        with contextlib.suppress(TimeoutError, DatabaseError):
            async with asyncio.timeout(left):
                await self._acker.stop()

    def request_quiet(self) -> None:
        """Stop claiming for good; running jobs go on, and the worker stays up until stopped."""
        if self.quiet or self.stopping.is_set():
            return
        log.info("quiet: no new jobs; %s running go on; stop with SIGTERM", len(self._running))
        self.quiet = True
        self._jobs_waiting.set()
        self._slot_freed.set()

    def _handle_quiet(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTSTP quiets the worker; a supervised one unblocks it now (its supervisor blocked it
        for the start-up)."""
        loop.add_signal_handler(signal.SIGTSTP, self.request_quiet)
        if self._supervisor_pid is not None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTSTP})

    def _unhandle_quiet(self, loop: asyncio.AbstractEventLoop) -> None:
        """Undo :meth:`_handle_quiet`; a supervised worker blocks SIGTSTP again, so a late one
        cannot stop it on its way out."""
        if self._supervisor_pid is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTSTP})
        loop.remove_signal_handler(signal.SIGTSTP)

    async def _stay_quiet(self) -> None:
        """A quiet worker runs its jobs to their end and waits for the stop (a quiet burst worker
        stops once they have ended)."""
        while self.quiet and not self.stopping.is_set() and (self._running or not self.burst):
            self._jobs_waiting.clear()
            await self._wait(self._jobs_waiting)

    def _cancel(self, job_id: int) -> None:
        """Cancel a job this worker runs: flag it, and cancel its task if it is async."""
        running = self._running.get(job_id)
        if running is None or job_id in self._cancelled_ids:
            return
        log.info("job %s: cancellation requested", job_id)
        self._cancelled_ids.add(job_id)
        job = self.app.jobs.get(running.job.name)
        if job is not None and job.is_async:
            running.task.cancel()

    def _retire(self, job: ClaimedJob) -> None:
        if self.retired:
            return
        log.error(
            "job %s %s overran its timeout in a thread that cannot be stopped; retiring: no new "
            "jobs, exit with status %s once the others end, for a fresh worker to replace this one",
            job.id,
            job.name,
            EXIT_RETIRED,
        )
        self.retired = True
        self.unfinished_threads = True
        if not self.stopping.is_set():
            self.request_stop()

    def _on_notification(self, queue: str) -> None:
        if not queue or queue in self.queues.names:
            self._jobs_waiting.set()

    def _on_queues_changed(self) -> None:
        self._view_read_at = None
        self._refusals.retry()
        self._jobs_waiting.set()

    async def _apply_declared_limits(self) -> None:
        """Store the limits the app declares for this worker's queues (never their pause)."""
        for name, limits in self.app.queue_limits.items():
            if name in self.queues.names:
                await self._claim.fetch(self._queries.set_queue_limits, limits.params(name))

    async def _check_counting(self) -> None:
        """Count outcomes in ``job_stats`` only if this role may: a role granted before the
        table existed still writes its outcomes, and says once what it lacks."""
        rows = await self._claim.fetch(self._queries.can_count_jobs, {})
        if not (rows and rows[0][0]):
            self._acker.tally = None
            log.warning(
                "this role may not add to the job_stats table: outcomes are written but not "
                "counted for metrics; apply `pgjobs grants --worker ROLE` again (docs/roles.md)"
            )

    async def _count(self) -> None:
        """Add the acker's tally to ``job_stats`` every :data:`STATS_INTERVAL` seconds, and once
        more when every outcome is written at the stop. Never cancelled mid-statement: psycopg
        would wait for the server to confirm the cancel."""
        while not await wait_for_event(self._counted_all, STATS_INTERVAL):
            await self._add_stats()
        await self._add_stats()

    async def _add_stats(self) -> None:
        """Add what the acker counted since the last time; kept for the next try if refused."""
        tally = self._acker.tally
        if not tally:
            return
        taken = tally.take()
        try:
            await self._ack.fetch(self._queries.add_job_stats, taken.params(self._stats_slot))
        except DatabaseError:
            tally.merge(taken)

    async def _read_view(self) -> None:
        """Re-read which queues are limited, at most once per poll interval unless told of a
        change: a worker whose queues have no settings pays one small query per interval."""
        now = asyncio.get_running_loop().time()
        if (
            self._view_read_at is not None
            and now - self._view_read_at < self.settings.poll_interval
        ):
            return
        self._view_read_at = now
        names = list(self.queues.names)
        rows = await self._claim.fetch(self._queries.queue_settings, {"queues": names})
        self._view = QueueView.from_rows(names, rows)

    def _free_slot(self) -> None:
        self._slot_freed.set()
        if self._limited_ended:
            # a slot under a limit is free: wake the workers of those queues, on every host.
            # Outcomes still unwritten may be of those queues: wake them again after each write
            # until none is left, so no wake-up comes before the slot it announces
            queues = sorted(self._limited_ended)
            if not self._acker.backlog:
                self._limited_ended.clear()
            task = asyncio.ensure_future(self._wake_held_queues(queues))
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)
        if self.burst:
            self._jobs_waiting.set()  # a burst worker looks again, to learn when it is done

    async def _wake_held_queues(self, queues: list[str]) -> None:
        with contextlib.suppress(DatabaseError):  # a missed wake-up costs a poll interval
            await self._ack.fetch(self._queries.wake_held_queues, {"queues": queues})

    def _retry_scheduled(self, delay: float) -> None:
        if delay < self.settings.poll_interval:
            self._stager.wake()

    async def _produce(self) -> None:
        while not self.stopping.is_set() and not self.quiet:
            free = self.settings.concurrency - len(self._running) - self._acker.backlog
            if free <= 0:
                self._slot_freed.clear()
                await self._wait(self._slot_freed)
                continue
            if free < self._claim_floor and await self._more_slots_soon():
                continue
            self._jobs_waiting.clear()  # before the claim: news during it means claim again
            claimed = await self._claim_jobs(free)
            if len(claimed) == free:
                continue  # there may be more: claim again as slots free
            if self.burst and not claimed and await self._burst_done():
                return
            await self._wait(self._jobs_waiting)

    async def _more_slots_soon(self) -> bool:
        """Wait up to :data:`CLAIM_LINGER` for another slot to free; True if one did.

        Claiming one slot at a time as short jobs finish costs a round trip per job; lingering
        a few milliseconds lets one claim fill many slots. Long jobs lose at most the linger.
        """
        self._slot_freed.clear()
        return await wait_for_event(self._slot_freed, CLAIM_LINGER) and not self.stopping.is_set()

    async def _burst_done(self) -> bool:
        """True once nothing runs, nothing is due and every outcome is written."""
        if self._running:
            return False
        await self._acker.flush()
        promoted, _ = await self._stager.promote_due()
        return promoted == 0 and not self._jobs_waiting.is_set()

    async def _wait(self, event: asyncio.Event) -> None:
        await wait_for_event(event, self.settings.poll_interval)
        if self._supervisor_pid is not None and os.getppid() != self._supervisor_pid:
            log.warning("the supervisor is gone; stopping")
            self.request_stop()

    async def _claim_jobs(self, limit: int) -> list[ClaimedJob]:
        failures = self._claim.failures
        await self._read_view()
        order = self._queue_order()
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

    async def _claim_each(
        self, queues: list[str], limit: int, *, limited: bool
    ) -> list[ClaimedJob]:
        """Claim and start up to ``limit`` jobs from ``queues`` (CLAIM_LIMITED_JOBS if
        ``limited``, else CLAIM_JOBS). When the database refuses the claim for what a row holds,
        claim queue by queue instead: a queue refused on its own is set aside
        (:class:`~pgjobs._refusals.Refusals`) and the others are claimed, so that no row can
        stop the worker."""
        q = self._queries
        try:
            rows = await self._claim.fetch(
                q.claim_limited_jobs if limited else q.claim_jobs,
                {"queues": queues, "limit": limit, "worker_id": self.id},
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
        return self._start_limited(rows) if limited else self._start_jobs(rows)

    def _refuse(self, queue: str, exc: psycopg.Error) -> None:
        problem = str(exc).strip().partition("\n")[0]
        if self._refusals.refuse(queue, problem, asyncio.get_running_loop().time()):
            log.warning(
                "queue %s: the database refuses to claim from it (%s); its jobs wait and the "
                "other queues run. Fix what it names (the queue's settings: pgjobs queue limit; "
                "or its jobs); it is tried again when its settings change, and every %g s",
                queue,
                problem,
                self.settings.poll_interval,
            )

    def _start_limited(self, rows: list[tuple[Any, ...]]) -> list[ClaimedJob]:
        """Start the jobs of a CLAIM_LIMITED_JOBS claim; when a rate holds jobs back, look again
        as its window frees (within the poll interval anyway)."""
        jobs, free_in = split_limited_claim(rows)
        if free_in is not None and free_in < self.settings.poll_interval:
            loop = asyncio.get_running_loop()
            at, wake = loop.time() + free_in, self._rate_wake
            # the earliest wake-up still to come holds (claims queue by queue each give one)
            if wake is None or wake.cancelled() or not loop.time() < wake.when() <= at:
                if wake is not None:
                    wake.cancel()
                self._rate_wake = loop.call_at(at, self._jobs_waiting.set)
        return self._start_jobs([tuple(job) for job in jobs])

    def _start_jobs(self, rows: list[tuple[Any, ...]]) -> list[ClaimedJob]:
        """A task for each claimed job (a job this worker still holds adopts its new claim);
        the starts in rate-limited queues are confirmed once the jobs have begun."""
        claimed = [ClaimedJob._make(row) for row in rows]
        rated = self._view.rated
        watched = [job.id for job in claimed if job.queue in rated] if rated else []
        begun = self._starts.watch(watched) if watched else None
        for job in claimed:
            running = self._running.get(job.id)
            held = running.claim if running is not None else self._acker.claim_of(job.id)
            if held is not None:
                self._adopt(job, held, still_running=running is not None)
                if begun is not None:
                    begun(job.id)  # its run began already, under its earlier claim
                continue
            claim = Claim(
                job.id, job.attempt, job.max_attempts, job.claim_token, job.queue, job.name
            )
            context = JobContext(
                id=job.id,
                name=job.name,
                queue=job.queue,
                attempt=job.attempt,
                max_attempts=job.max_attempts,
                worker_id=self.id,
                _stopping=self.stopping,
                _cancelled_ids=self._cancelled_ids,
                batch_id=job.batch_id,
                _report=functools.partial(self._progress.report, claim),
            )
            task = asyncio.create_task(
                self._run_job(job, context, claim, begun if job.queue in rated else None),
                name=f"pgjobs-job-{job.id}",
            )
            self._running[job.id] = Running(task, job, context, claim)
        return claimed

    def _adopt(self, job: ClaimedJob, claim: Claim, *, still_running: bool) -> None:
        """``job`` was claimed again while this worker still holds it: running, or its outcome
        unwritten. Its earlier claim was undone (a database crash lost it before it reached the
        disk) or the job was rescued from this worker. A second run would race the first, so the
        first adopts the new claim, and its outcome is written under it."""
        log.warning(
            "job %s was claimed again (attempt %s) while this worker still %s (attempt %s); its "
            "claim was undone by a database crash, or the job was rescued: the %s goes on under "
            "the new claim",
            job.id,
            job.attempt,
            "runs it" if still_running else "holds its unwritten outcome",
            claim.attempt,
            "run" if still_running else "outcome",
        )
        claim.attempt = job.attempt
        claim.token = job.claim_token

    async def _release_strays(self) -> None:
        """After a claim was retried on a new connection, the lost try may have claimed jobs
        that this worker never heard of: hand them back. Jobs it runs, and jobs it finished
        whose outcome is not written yet, are its own."""
        rows = await self._claim.fetch(
            self._queries.release_stray_jobs,
            {
                "worker_id": self.id,
                "known": [*self._running, *self._acker.unwritten()],
                "channel": self._queries.jobs_channel,
            },
        )
        if rows:
            log.warning("handed back %s job(s) claimed by a lost connection", len(rows))

    def _queue_order(self) -> list[str]:
        """The queues to claim from, in order: as given (strict) or a weighted shuffle."""
        spec = self.queues
        if not spec.weighted:
            return list(spec.names)
        # Efraimidis-Spirakis: sorting by U^(1/w) draws an order weighted by w
        keys = {
            n: random.random() ** (1 / w) for n, w in zip(spec.names, spec.weights, strict=True)
        }
        return sorted(spec.names, key=keys.__getitem__, reverse=True)

    async def _run_job(
        self,
        job: ClaimedJob,
        context: JobContext,
        claim: Claim,
        begun: Callable[[int], None] | None = None,
    ) -> None:
        """Run ``job`` to its outcome; ``begun(id)`` is called as its code begins (a rated
        job's start is then confirmed), and once more at its end."""
        try:
            job_started(job.id, job.name, job.queue, job.attempt)
            started = time.perf_counter()
            threads: Executor = self._threads
            if begun is not None:
                threads = self._entering(job, begun)
            tracing = self.app._client.tracing
            if tracing is None:
                outcome = await execute(self.app, job, context, threads)
            else:
                outcome = await tracing.process(self.app, job, context, threads)
            claim.seconds = time.perf_counter() - started
            job_ended(job.id, job.name, job.queue, job.attempt, outcome.state, claim.seconds)
            if job.queue in self._view.limited:
                self._limited_ended.add(job.queue)
            self._acker.add(claim, outcome)
            if outcome.thread_overran:
                self._retire(job)
        finally:
            if begun is not None:
                begun(job.id)  # it ended: it began, or never will
            del self._running[job.id]
            self._cancelled_ids.discard(job.id)

    def _entering(self, job: ClaimedJob, begun: Callable[[int], None]) -> Executor:
        """The thread pool that tells ``begun`` when ``job``'s ``def`` code begins. An ``async
        def`` job begins as this task goes on, before the confirmation's task can run: it is
        told now (as is a job this worker does not know, which never begins)."""
        definition = self.app.jobs.get(job.name)
        if definition is None or definition.is_async:
            begun(job.id)
            return self._threads
        loop = asyncio.get_running_loop()

        def entered() -> None:  # in the job's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(begun, job.id)

        return Entering(self._threads, entered)

    async def _drain(self) -> None:
        """Let running jobs finish within the shutdown timeout, write their outcomes, then hand
        the rest back."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline or loop.time() + self.settings.shutdown_timeout
        forced = asyncio.create_task(self._force.wait())
        tasks = {running.task for running in self._running.values()}
        while tasks and not forced.done() and (left := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait(
                tasks | {forced}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            tasks -= done
        forced.cancel()
        try:
            async with asyncio.timeout(max(deadline - loop.time(), FINAL_WAIT)):
                await self._acker.flush()
        except TimeoutError:
            log.error(
                "could not write %s job outcome(s) before the shutdown timeout: the database did "
                "not take them. Those jobs stay running under this worker until the rescue sweep "
                "finds it gone (at once when its session has ended, else when its lease of %s s "
                "expires) and hands them back",
                self._acker.backlog,
                self.settings.lease_timeout,
            )
        if self._running:
            await self._hand_back()

    async def _hand_back(self) -> None:
        """Give running jobs back to the queue (fenced), and stop waiting for them."""
        running = list(self._running.values())
        self.unfinished_threads = True
        try:
            rows = await self._ack.fetch(
                self._queries.release_jobs,
                {
                    "ids": [r.job.id for r in running],
                    "attempts": [r.claim.attempt for r in running],
                    "tokens": [r.claim.token for r in running],
                    "worker_id": self.id,
                    "channel": self._queries.jobs_channel,
                },
            )
            log.info("handed %s running job(s) back to the queue", len(rows))
        except DatabaseError as exc:
            log.error(
                "could not hand %s running job(s) back (%s); the rescue sweep will, once this "
                "worker is gone",
                len(running),
                exc,
            )
        for r in running:
            r.task.cancel()
        await asyncio.gather(*(r.task for r in running), return_exceptions=True)


def _in_daemon_thread(func: Callable[..., object], *args: object) -> asyncio.Future[object]:
    """``func(*args)`` in a daemon thread, as a future: a stopping worker can leave it behind
    (say, a schema check waiting ``connect_timeout`` on an unreachable database), and neither
    the event loop nor the interpreter waits for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        try:
            result, error = func(*args), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="pgjobs-start", daemon=True).start()
    return future
