"""The worker: claims jobs into free slots, runs them, acknowledges them, shuts down cleanly.

One process holds three connections: ``session`` (registration, heartbeat, leadership,
LISTEN/NOTIFY: see :mod:`pgjobs._session`), ``claim`` (claims and promotions of due scheduled
jobs, and the ticks of the app's cron entries, if it has any: :mod:`pgjobs._scheduler`) and
``ack`` (batched outcome writes), and a fourth, ``progress``, once a job reports its progress
(:mod:`pgjobs._progress`). Its :class:`~pgjobs._producer.Producer` claims jobs into the
free slots; the worker runs each in a task of its own and hands its outcome to the
:class:`~pgjobs._acker.Acker`. A slot is free once its job's outcome is written.

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
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ._acker import Acker, Claim
from ._app import App
from ._context import JobContext, running_context
from ._errors import DatabaseError
from ._execution import ClaimedJob, execute
from ._leader import Leader, Retention
from ._link import LAST_TRY, Link
from ._migrate import check_schema
from ._observers import (
    InContext,
    JobOutcome,
    ended,
    enter_run,
    exit_run,
    job_outcome,
    started,
    throw_run,
)
from ._outcome import Outcome
from ._producer import Producer, ProducerConfig, Slots
from ._progress import ProgressWriter
from ._queues import limits_params
from ._scheduler import Scheduler
from ._session import Session, SessionConfig, SessionEvents, session_link
from ._stager import Stager
from ._starts import Entering, Starts
from ._stats import STATS_INTERVAL, STATS_LAST_TRY, STATS_SLOTS
from ._vacuum import Vacuum
from ._waits import wait_for_event

log = logging.getLogger("pgjobs.worker")

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
        self._settled = asyncio.Event()
        """Set when an outcome is written or a stop is requested: a quiet worker looks again."""
        self._running: dict[int, Running] = {}
        self._cancelled_ids: set[int] = set()
        self._queries = app._queries
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
            on_written=self._written,
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
            on_promoted=self._promoted,
        )
        self._producer = Producer(
            ProducerConfig(
                self.id,
                self.queues,
                self.settings.concurrency,
                self.settings.poll_interval,
                burst,
            ),
            self._queries,
            self._claim,
            self._ack,
            self._stager,
            Slots(self._free_slots, self._start_jobs, self._held, self._settled_now),
            after_wait=self._check_supervisor,
        )
        self._session = Session(
            SessionConfig.of(self.settings, self.id),
            session_link(self.settings, self._application_name("session")),
            self._queries,
            SessionEvents(
                on_jobs=self._producer.notified,
                on_scheduled=self._stager.wake,
                on_cancel=self._cancel,
                on_queues=self._producer.queues_changed,
            ),
            Leader(
                Retention.of(self.settings),
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
                await self._producer.run()
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
        self._producer.stop()
        self._settled.set()

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
        self._producer.stop()
        self._settled.set()

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
            self._settled.clear()
            await wait_for_event(self._settled, self.settings.poll_interval)
            self._check_supervisor()

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

    async def _apply_declared_limits(self) -> None:
        """Store the limits the app declares for this worker's queues (never their pause)."""
        for name, limits in self.app.queue_limits.items():
            if name in self.queues.names:
                await self._claim.fetch(self._queries.set_queue_limits, limits_params(name, limits))

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

    def _retry_scheduled(self, delay: float) -> None:
        if delay < self.settings.poll_interval:
            self._stager.wake()

    def _written(self) -> None:
        """Outcomes were written: their slots are free."""
        self._producer.written(self._acker.backlog)
        self._settled.set()

    def _promoted(self) -> None:
        self._producer.wake()

    def _check_supervisor(self) -> None:
        """Stop if the supervisor that started this worker is gone (checked after each wait)."""
        if self._supervisor_pid is not None and os.getppid() != self._supervisor_pid:
            log.warning("the supervisor is gone; stopping")
            self.request_stop()

    def _free_slots(self) -> int:
        """Slots without a job or an unwritten outcome."""
        return self.settings.concurrency - len(self._running) - self._acker.backlog

    def _held(self) -> list[int]:
        """The jobs this worker runs, or whose outcome it has not written yet."""
        return [*self._running, *self._acker.unwritten()]

    async def _settled_now(self) -> bool:
        """Whether nothing runs and, once what can be written is, every outcome is written."""
        if self._running:
            return False
        await self._acker.flush()
        return True

    def _start_jobs(self, rows: Sequence[Sequence[Any]], rated: frozenset[str]) -> list[ClaimedJob]:
        """A task for each claimed job (a job this worker still holds adopts its new claim);
        the starts in queues of ``rated`` are confirmed once the jobs have begun."""
        claimed = [ClaimedJob._make(row) for row in rows]
        watched = [job.id for job in claimed if job.queue in rated] if rated else []
        begun = self._starts.watch(watched) if watched else None
        report = self._progress.report
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
            context = running_context(
                job.id,
                job.name,
                job.queue,
                job.attempt,
                job.max_attempts,
                self.id,
                self.stopping,
                self._cancelled_ids,
                job.batch_id,
                job.args,
                job.kwargs,
                job.meta,
                report,
                claim,
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

    async def _run_job(
        self,
        job: ClaimedJob,
        context: JobContext,
        claim: Claim,
        begun: Callable[[int], None] | None = None,
    ) -> None:
        """Run ``job`` to its outcome; ``begun(id)`` is called as its code begins (a rated
        job's start is then confirmed), and once more at its end."""
        seam = self.app.seam
        try:
            started(seam.on_job_start, context)
            began = time.perf_counter()
            threads: Executor = self._threads
            if begun is not None:
                threads = self._entering(job, begun)
            if seam.around_run:
                outcome, outcome_seen = await self._observed(
                    job, context, InContext(threads), began
                )
            else:
                outcome = await execute(self.app.get, seam, job, context, threads)
                outcome_seen = job_outcome(outcome, time.perf_counter() - began)
            claim.seconds = outcome_seen.seconds
            ended(seam.on_job_end, context, outcome_seen)
            self._producer.ended(job.queue)
            self._acker.add(claim, outcome)
            if outcome.thread_overran:
                self._retire(job)
        finally:
            if begun is not None:
                begun(job.id)  # it ended: it began, or never will
            del self._running[job.id]
            self._cancelled_ids.discard(job.id)

    async def _observed(
        self, job: ClaimedJob, context: JobContext, threads: Executor, began: float
    ) -> tuple[Outcome, JobOutcome]:
        """Run ``job`` inside the seam's run observers, outermost, which are sent its outcome
        (or the worker's cancellation, when it is handed back)."""
        entered = enter_run(self.app.seam.around_run, context, job.trace_context)
        try:
            outcome = await execute(self.app.get, self.app.seam, job, context, threads)
        except BaseException as exc:
            throw_run(entered, exc)
            raise
        seen = job_outcome(outcome, time.perf_counter() - began)
        exit_run(entered, seen)
        return outcome, seen

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
