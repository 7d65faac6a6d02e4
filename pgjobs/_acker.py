"""Batched, fenced acknowledgements.

Outcomes queue up while a write is in flight and go out together in one ``finish_jobs``
statement. Each row is matched on id, attempt, ``state = 'running'`` and this worker; a job
missing from the statement's result was no longer ours (handed back, rescued or cancelled), so
the write changed nothing. That is logged and counted, never raised.

The statement is planned for each batch (the link forces custom plans): a generic plan guesses
ten rows for the batch and may join it in a nested loop, which costs the square of its size.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from ._link import Link
from ._outcome import Outcome
from ._sql import Queries

log = logging.getLogger("pgjobs.worker")

RETRY_DELAY = 1.0
"""Seconds before a batch that the database refused is written again."""


class Acker:
    """Writes job outcomes in batches. ``stale_acks`` counts writes that matched no row."""

    def __init__(
        self,
        link: Link,
        queries: Queries,
        worker_id: str,
        on_retry: Callable[[float], None],
        on_written: Callable[[], None],
    ) -> None:
        self._link = link
        self._queries = queries
        self._worker_id = worker_id
        self._on_retry = on_retry
        self._on_written = on_written
        self._pending: list[tuple[int, int, Outcome]] = []
        self._writing: list[tuple[int, int, Outcome]] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.stale_acks = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgjobs-acker")

    async def stop(self) -> None:
        """Write everything pending, then stop."""
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def add(self, job_id: int, attempt: int, outcome: Outcome) -> None:
        self._pending.append((job_id, attempt, outcome))
        self._idle.clear()
        self._ready.set()

    @property
    def backlog(self) -> int:
        """How many outcomes are not written yet."""
        return len(self._pending) + len(self._writing)

    def unwritten(self) -> set[int]:
        """Ids of jobs whose outcome is not written yet: still this worker's, though done."""
        return {job_id for job_id, _, _ in (*self._pending, *self._writing)}

    async def flush(self) -> None:
        """Wait until every outcome added so far is written."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch = self._writing = self._pending
            self._pending = []
            if batch:
                try:
                    await self._write(batch)
                except psycopg.Error:
                    # not a lost connection (the link rides those out): keep the outcomes and try
                    # again, rather than die and leave a graceful stop waiting forever
                    log.exception("writing %s job outcome(s) failed; retrying", len(batch))
                    self._pending[:0] = batch
                    self._ready.set()
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                finally:
                    self._writing = []
                self._on_written()
            if not self._pending:
                self._idle.set()

    async def _write(self, batch: list[tuple[int, int, Outcome]]) -> None:
        rows = await self._link.fetch(
            self._queries.finish_jobs, finish_params(self._worker_id, batch)
        )
        written = {row[0] for row in rows}
        for job_id, attempt, outcome in batch:
            if job_id not in written:
                self.stale_acks += 1
                log.warning(
                    "job %s attempt %s: %s acknowledgement changed nothing; the job was no longer "
                    "running under this worker",
                    job_id,
                    attempt,
                    outcome.state,
                )
            elif outcome.state in ("retryable", "scheduled"):
                self._on_retry(outcome.delay)


def finish_params(worker_id: Any, batch: list[tuple[int, int, Outcome]]) -> dict[str, Any]:
    """``finish_jobs``' parameters for ``(job id, attempt, outcome)`` rows."""
    return {
        "ids": [job_id for job_id, _, _ in batch],
        "attempts": [attempt for _, attempt, _ in batch],
        "states": [o.state for _, _, o in batch],
        "delays": [o.delay for _, _, o in batch],
        "errors": [None if o.error is None else json.dumps(o.error) for _, _, o in batch],
        "worker_id": worker_id,
    }
