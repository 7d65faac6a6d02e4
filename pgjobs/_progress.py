"""Writing running jobs' progress reports (:meth:`JobContext.progress`) in the background.

A report only records the job's latest value, from whichever thread the job runs in, and wakes
the writer once; the writer sends every job's latest value in one fenced statement, then rests
:data:`WRITE_INTERVAL` before the next. So at most one write is in flight, a job reporting in a
tight loop costs about two statements a second, and a job never waits on the database. A write
the database refuses is logged and dropped. The connection opens on the first report: a worker
whose jobs never report has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid

from ._acker import Claim
from ._link import Link
from ._sql import Queries

log = logging.getLogger("pgjobs.worker")

WRITE_INTERVAL = 0.5
"""Seconds the writer rests after each write: the reports meanwhile go out together."""


class ProgressWriter:
    """Coalesces and writes the progress reports of this worker's running jobs."""

    def __init__(self, link: Link, queries: Queries, worker_id: str) -> None:
        self._link = link
        self._queries = queries
        self._worker_id = worker_id
        self._latest: dict[int, tuple[Claim, float, str | None]] = {}
        """Per job id, its claim (whose token fences the write) and its latest report."""
        self._lock = threading.Lock()
        self._woken = False
        """Whether the writer was woken since it last took the reports (under the lock)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="pgjobs-progress")

    async def stop(self) -> None:
        """Stop writing; reports not yet written are dropped (their jobs have ended)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._link.close()

    def report(self, claim: Claim, fraction: float, message: str | None) -> None:
        """Record job ``claim.job_id``'s latest progress; from any thread, never blocks."""
        with self._lock:
            self._latest[claim.job_id] = (claim, fraction, message)
            if self._woken:
                return
            self._woken = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the worker is gone
                loop.call_soon_threadsafe(self._ready.set)

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            with self._lock:
                latest, self._latest = self._latest, {}
                self._woken = False
            if latest:
                await self._write(latest)
                await asyncio.sleep(WRITE_INTERVAL)

    async def _write(self, latest: dict[int, tuple[Claim, float, str | None]]) -> None:
        ids: list[int] = []
        tokens: list[uuid.UUID] = []
        fractions: list[float] = []
        messages: list[str | None] = []
        for job_id, (claim, fraction, message) in latest.items():
            ids.append(job_id)
            tokens.append(claim.token)  # read now: a claim the job adopted since is current
            fractions.append(fraction)
            messages.append(message)
        params = {
            "ids": ids,
            "tokens": tokens,
            "progress": fractions,
            "messages": messages,
            "worker_id": self._worker_id,
        }
        try:
            await self._link.fetch(self._queries.report_progress, params)
        except Exception as exc:  # a report must never stop the writer
            log.warning(
                "could not store the progress of job(s) %s: %s; the jobs go on",
                ", ".join(map(str, ids)),
                str(exc).strip().partition("\n")[0] or type(exc).__name__,
            )
