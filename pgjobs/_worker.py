"""The worker: claims jobs into free slots, runs them, acknowledges them, shuts down cleanly.

One process holds three connections: ``listen`` (LISTEN/NOTIFY), ``claim`` (claims and
promotions of due scheduled jobs) and ``ack`` (batched outcome writes). The producer loop claims
at most the free slots in one ``FOR UPDATE SKIP LOCKED`` statement, then waits for a
notification, a freed slot or the poll interval, whichever comes first.

Shutdown: the first SIGTERM/SIGINT stops claiming and gives running jobs ``shutdown_timeout``
seconds to finish; jobs still running then are handed back to the queue (their attempt is not
counted) and the worker exits. A second signal hands them back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from ._acker import Acker
from ._app import App
from ._context import JobContext
from ._execution import ClaimedJob, execute
from ._link import Link
from ._migrate import check_schema
from ._notifier import Notifier
from ._stager import Stager

log = logging.getLogger("pgjobs.worker")


class Worker:
    """Runs ``app``'s jobs from the queues in its settings until stopped (or, in burst mode,
    until those queues are empty)."""

    def __init__(self, app: App, *, burst: bool = False) -> None:
        self.app = app
        self.settings = app.settings
        self.burst = burst
        self.id = str(uuid.uuid4())
        self.queues = self.settings.queue_spec
        self.stopping = threading.Event()
        self._force = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._running: dict[int, tuple[asyncio.Task[None], ClaimedJob]] = {}
        self._queries = app.queries
        self._threads = ThreadPoolExecutor(
            max_workers=self.settings.concurrency, thread_name_prefix="pgjobs-job"
        )
        self._claim = Link(self.settings, self._application_name("claim"))
        self._ack = Link(self.settings, self._application_name("ack"))
        self._acker = Acker(
            self._ack,
            self._queries,
            self.id,
            on_retry=self._retry_scheduled,
        )
        self._stager = Stager(
            self._claim, self._queries, self.settings.poll_interval, on_promoted=self._wakeup.set
        )
        self._notifier: Notifier | None = None
        if not self.settings.poll_only:
            self._notifier = Notifier(
                Link(self.settings, self._application_name("listen")),
                (self._queries.jobs_channel, self._queries.scheduled_channel),
                on_jobs=self._on_notification,
                on_scheduled=self._stager.wake,
            )
        self.unfinished_threads = False
        """Set when jobs were handed back: their threads may still be running."""

    def _application_name(self, role: str) -> str:
        return f"pgjobs-worker:{self.id[:8]}:{role}"

    async def run(self) -> None:
        """Run until stopped. Installs SIGTERM/SIGINT handlers while it runs."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, check_schema, self.settings)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        log.info(
            "worker %s started: queues %s, concurrency %s, %s",
            self.id,
            self.queues,
            self.settings.concurrency,
            "poll-only" if self._notifier is None else "listening for notifications",
        )
        try:
            if self._notifier is not None:
                self._notifier.start()
            self._acker.start()
            if not self.burst:
                self._stager.start()
            await self._produce()
            await self._drain()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self._stager.stop()
            if self._notifier is not None:
                await self._notifier.stop()
            await self._acker.stop()
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
        self._wakeup.set()

    def _on_notification(self, queue: str) -> None:
        if not queue or queue in self.queues.names:
            self._wakeup.set()

    def _retry_scheduled(self, delay: float) -> None:
        if delay < self.settings.poll_interval:
            self._stager.wake()

    async def _produce(self) -> None:
        while not self.stopping.is_set():
            free = self.settings.concurrency - len(self._running)
            if free <= 0:
                await self._wait()
                continue
            self._wakeup.clear()
            claimed = await self._claim_jobs(free)
            if len(claimed) == free:
                continue
            if self.burst and not claimed and await self._burst_done():
                return
            await self._wait()

    async def _burst_done(self) -> bool:
        """True once nothing runs, nothing is due and every outcome is written."""
        if self._running:
            return False
        await self._acker.flush()
        promoted, _ = await self._stager.promote_due()
        return promoted == 0 and not self._wakeup.is_set()

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self.settings.poll_interval)

    async def _claim_jobs(self, limit: int) -> list[ClaimedJob]:
        rows = await self._claim.fetch(
            self._queries.claim_jobs,
            {"queues": self._queue_order(), "limit": limit, "worker_id": self.id},
        )
        claimed = [ClaimedJob(*row) for row in rows]
        for job in claimed:
            task = asyncio.create_task(self._run_job(job), name=f"pgjobs-job-{job.id}")
            self._running[job.id] = (task, job)
        return claimed

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

    async def _run_job(self, job: ClaimedJob) -> None:
        context = JobContext(
            id=job.id,
            name=job.name,
            queue=job.queue,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            worker_id=self.id,
            _stopping=self.stopping,
        )
        try:
            outcome = await execute(self.app, job, context, self._threads)
            self._acker.add(job.id, job.attempt, outcome)
        finally:
            del self._running[job.id]
            self._wakeup.set()

    async def _drain(self) -> None:
        """Let running jobs finish within the shutdown timeout, then hand the rest back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout
        forced = asyncio.create_task(self._force.wait())
        tasks = {task for task, _ in self._running.values()}
        while tasks and not forced.done() and (left := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait(
                tasks | {forced}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            tasks -= done
        forced.cancel()
        await self._acker.flush()
        if self._running:
            await self._hand_back()

    async def _hand_back(self) -> None:
        """Give running jobs back to the queue (fenced), and stop waiting for them."""
        running = list(self._running.values())
        rows = await self._claim.fetch(
            self._queries.release_jobs,
            {
                "ids": [job.id for _, job in running],
                "attempts": [job.attempt for _, job in running],
                "worker_id": self.id,
                "channel": self._queries.jobs_channel,
            },
        )
        log.info("handed %s running job(s) back to the queue", len(rows))
        self.unfinished_threads = True
        for task, _ in running:
            task.cancel()
        await asyncio.gather(*(task for task, _ in running), return_exceptions=True)
