"""Batched, fenced acknowledgements.

Outcomes queue up while a write is in flight and go out together in one ``finish_jobs``
statement. Each row is matched on id, attempt, claim token, ``state = 'running'`` and this
worker; a job missing from the statement's result was no longer ours (handed back, rescued or
cancelled), so the write changed nothing. That is logged and counted, never raised.

One bad row must not hold up the others: when the database refuses a batch (not a lost
connection: the link rides those out), its rows are written one at a time. A row refused alone
is stored as a fallback outcome (:func:`fallback_outcome`) with an error of class
``pgjobs.OutcomeNotStored`` saying why; a row whose fallback is refused too is held and tried
again, the original outcome first, after a back-off, while the other rows go on.

The statement is planned for each batch (the link forces custom plans): a generic plan guesses
ten rows for the batch and may join it in a nested loop, which costs the square of its size.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._link import Link
from ._outcome import MAX_ERROR_MESSAGE, Outcome, sidekiq_backoff
from ._sql import Queries
from ._stats import Tally
from ._waits import Backoff, wait_for_event

log = logging.getLogger("pgjobs.worker")

HELD_BACKOFF = (1.0, 30.0)
"""First and longest pause before outcomes that could not be stored at all are tried again."""

OUTCOME_NOT_STORED = "pgjobs.OutcomeNotStored"
"""The error class recorded when an attempt's own outcome could not be stored."""


@dataclass(slots=True)
class Claim:
    """A job as this worker holds it: the claim its outcome is written under.

    ``attempt`` and ``token`` change when the worker claims the job again while it still runs
    it or its outcome is unwritten (a database crash undid the first claim, or the job was
    rescued): that run adopts the new claim, and its outcome is written under it.
    """

    job_id: int
    attempt: int
    max_attempts: int
    token: uuid.UUID
    queue: str = ""
    name: str = ""
    seconds: float = 0.0
    """How long the run took, once it ended: counted with its outcome."""


FinishRow = tuple[int, int, uuid.UUID, Outcome]
"""``(job id, attempt, claim token, outcome)``: one row of ``finish_jobs``."""


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
        self.tally: Tally | None = Tally()
        """The outcomes written and not yet added to ``job_stats``; ``None``: not counted."""
        self._on_retry = on_retry
        self._on_written = on_written
        self._claims: dict[int, Claim] = {}
        """Every job whose outcome is not written yet: pending, being written or held."""
        self._pending: list[tuple[Claim, Outcome]] = []
        self._held: list[tuple[Claim, Outcome]] = []
        """Rows that could not be stored, not even as a fallback; tried again at ``_held_until``."""
        self._held_until = 0.0
        self._held_backoff = Backoff(*HELD_BACKOFF)
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.stale_acks = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgjobs-acker")

    async def stop(self) -> None:
        """Write everything pending, then stop. Held rows get one last try; a job whose outcome
        still cannot be stored stays ``running`` under this worker, and the leader's sweep gives
        it back to the queue once the worker has deregistered."""
        await self.flush()
        if self._held:
            self._retry_held()
            await self.flush()
        for claim, outcome in self._held:
            log.error(
                "job %s attempt %s: stopping with its %s outcome unwritten; it will be rescued "
                "and run again",
                claim.job_id,
                claim.attempt,
                outcome.state,
            )
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def add(self, claim: Claim, outcome: Outcome) -> None:
        self._claims[claim.job_id] = claim
        self._pending.append((claim, outcome))
        self._idle.clear()
        self._ready.set()

    @property
    def backlog(self) -> int:
        """How many outcomes are not written yet."""
        return len(self._claims)

    def unwritten(self) -> set[int]:
        """Ids of jobs whose outcome is not written yet: still this worker's, though done."""
        return set(self._claims)

    def claim_of(self, job_id: int) -> Claim | None:
        """The claim of job ``job_id`` if its outcome is waiting here to be written."""
        return self._claims.get(job_id)

    async def flush(self) -> None:
        """Wait until every outcome added so far is written, or held after its write failed."""
        await self._idle.wait()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._held:
                await wait_for_event(self._ready, max(0.0, self._held_until - loop.time()))
                if loop.time() >= self._held_until:
                    self._retry_held()
            else:
                await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            if batch:
                held = len(self._held)
                await self._write_isolating(batch)
                if len(self._held) > held:
                    self._held_until = loop.time() + self._held_backoff.take()
                elif not self._held:
                    self._held_backoff.reset()
                self._on_written()
            if self._pending:
                self._ready.set()
            else:
                self._idle.set()

    def _retry_held(self) -> None:
        self._pending.extend(self._held)
        self._held = []
        self._idle.clear()
        self._ready.set()

    async def _write_isolating(self, batch: list[tuple[Claim, Outcome]]) -> None:
        """Write ``batch``; if the database refuses it, write its rows one at a time."""
        if len(batch) > 1:
            try:
                await self._write(batch)
                return
            except Exception as exc:
                log.warning(
                    "writing %s job outcomes failed (%s); writing them one at a time",
                    len(batch),
                    _first_line(exc),
                )
        for row in batch:
            await self._write_alone(*row)

    async def _write_alone(self, claim: Claim, outcome: Outcome) -> None:
        try:
            await self._write([(claim, outcome)])
            return
        except Exception as exc:
            fallback = fallback_outcome(claim, outcome, exc)
            log.error(
                "job %s attempt %s: its %s outcome could not be stored (%s); storing %s instead",
                claim.job_id,
                claim.attempt,
                outcome.state,
                _first_line(exc),
                fallback.state,
            )
        try:
            await self._write([(claim, fallback)])
        except Exception as exc:
            log.error(
                "job %s attempt %s: not even a %s outcome could be stored (%s); trying again "
                "in %.0f s",
                claim.job_id,
                claim.attempt,
                fallback.state,
                _first_line(exc),
                self._held_backoff.delay,
            )
            self._held.append((claim, outcome))

    async def _write(self, batch: list[tuple[Claim, Outcome]]) -> None:
        # the claims as sent: a claim adopted during the write is written again under its token
        rows = [(c.job_id, c.attempt, c.token, outcome) for c, outcome in batch]
        written = {
            row[0]
            for row in await self._link.fetch(
                self._queries.finish_jobs, finish_params(self._worker_id, rows)
            )
        }
        for (claim, outcome), (job_id, attempt, token, _) in zip(batch, rows, strict=True):
            if job_id in written:
                self._claims.pop(job_id, None)
                if self.tally is not None:
                    self.tally.add(claim.queue, claim.name, outcome.state, claim.seconds)
                if outcome.state in ("retryable", "scheduled"):
                    self._on_retry(outcome.delay)
            elif claim.token != token:
                self._pending.append((claim, outcome))
            else:
                self._claims.pop(job_id, None)
                self.stale_acks += 1
                log.warning(
                    "job %s attempt %s: %s acknowledgement changed nothing; the job was no longer "
                    "running under this worker",
                    job_id,
                    attempt,
                    outcome.state,
                )


def fallback_outcome(claim: Claim, outcome: Outcome, problem: BaseException) -> Outcome:
    """What to store when the database refused ``outcome`` itself, with ``problem``.

    A final outcome other than success stays final (``discarded``, or ``cancelled`` as asked);
    otherwise the attempt counts as failed: ``retryable`` after Sidekiq's delay for it, or
    ``discarded`` if it was the last. The stored error, of class ``pgjobs.OutcomeNotStored``,
    says what was refused and why; it replaces the attempt's own error, which may be the cause.
    """
    cause = "" if outcome.error is None else f" after {outcome.error.get('class')}"
    message = (
        f"the attempt ended {outcome.state}{cause}, but the database refused to store that "
        f"outcome: {_first_line(problem)}"
    )
    # what jsonb refuses (a NUL, a lone surrogate) may be in the cause: never in this record
    safe = message.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    error = {
        "attempt": claim.attempt,
        "class": OUTCOME_NOT_STORED,
        "message": safe[:MAX_ERROR_MESSAGE],
    }
    if outcome.state in ("discarded", "cancelled"):
        return Outcome(outcome.state, error=error)
    if claim.attempt >= claim.max_attempts:
        return Outcome("discarded", error=error)
    return Outcome("retryable", delay=sidekiq_backoff(claim.attempt, problem), error=error)


def finish_params(worker_id: Any, rows: Iterable[FinishRow]) -> dict[str, Any]:
    """``finish_jobs``' parameters for ``(job id, attempt, claim token, outcome)`` rows.

    Each array goes as the text of an array literal, joined here: psycopg's list dumper costs a
    few microseconds a row in Python (an element dumper call and a quoting check per element of
    six arrays), about 5 % of a no-op job's whole cost in a worker at full rate. The statement
    casts each text to its array type, as it casts the lists.
    """
    ids: list[str] = []
    attempts: list[str] = []
    tokens: list[str] = []
    states: list[str] = []
    delays: list[str] = []
    errors: list[str] = []
    results: list[str | None] = []
    returned = False
    for job_id, attempt, token, outcome in rows:
        ids.append(str(job_id))
        attempts.append(str(attempt))
        tokens.append(str(token))
        states.append(outcome.state)  # one of five plain words
        delays.append(repr(float(outcome.delay)))
        errors.append("NULL" if outcome.error is None else _element(json.dumps(outcome.error)))
        results.append(outcome.result)
        returned = returned or outcome.result is not None
    return {
        "ids": _array(ids),
        "attempts": _array(attempts),
        "tokens": _array(tokens),
        "states": _array(states),
        "delays": _array(delays),
        "errors": _array(errors),
        # one JSON array (its texts joined, not quoted again), or nothing when none returned
        "results": f"[{','.join(r or 'null' for r in results)}]" if returned else None,
        "worker_id": worker_id,
    }


def _array(elements: list[str]) -> str:
    """A PostgreSQL array literal of ``elements``, each a literal already."""
    return "{" + ",".join(elements) + "}"


def _element(text: str) -> str:
    """``text`` as an element of an array literal: quoted, its quotes and backslashes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _first_line(exc: BaseException) -> str:
    """The gist of an error: a database error's first line, or its type when it has no text."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
