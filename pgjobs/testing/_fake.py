"""Fake mode: enqueues are recorded, nothing is written; :meth:`FakeQueue.drain` runs them here.

:func:`fake` hands an app's enqueues (``enqueue``, ``using(conn).enqueue`` without touching
``conn``, the ``_async`` ones, ``enqueue_many``, batches) to a :class:`FakeQueue` until the block
ends. The queue keeps one :class:`EnqueuedJob` per job, runs them through the worker's own
execution path, and models what the database would do: unique keys, retries up to
``max_attempts`` (back-off not waited for), snoozes and start times (due by :meth:`advance` or
``run_scheduled``), and batches' callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .._app import App
from .._batch import AsyncBatch, Batch
from .._batches import callback_template
from .._call import DEFAULT_STATES, JobCall
from .._errors import UnknownJobError, ValidationError
from .._job import Job
from .._outcome import Outcome
from .._unique import JobId, job_id
from ._run import run_job

WAITING = ("scheduled", "available", "retryable")
"""States of a job that has yet to run (again)."""

DEFAULT_MAX_RUNS = 1000
"""Attempts one :meth:`FakeQueue.drain` makes at most before it gives up (jobs that enqueue
themselves forever)."""

_UNSET: Any = object()

_fakes: weakref.WeakKeyDictionary[App, FakeQueue] = weakref.WeakKeyDictionary()
"""The fake queue recording each app's enqueues now (for :class:`~pgjobs.testing.Clock`)."""


class DrainError(AssertionError):
    """A drain that could not finish cleanly; an ``AssertionError``, so a test fails on it."""


class JobsFailed(DrainError):
    """Jobs were discarded (their attempts used up, or their exception in ``discard_on``)."""


class DrainLimitReached(DrainError):
    """A drain made ``max_runs`` attempts and jobs were still waiting (jobs that enqueue
    jobs forever, or snooze forever with ``run_scheduled``)."""


@dataclass
class EnqueuedJob:
    """A job as fake mode recorded it, and what became of it."""

    id: int
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    priority: int
    max_attempts: int
    scheduled_at: datetime
    """When it is due: the enqueue's time, its ``at=``, or the enqueue's time plus its delay;
    after a failed attempt or a snooze, when that attempt ended plus the delay."""
    at: datetime | None
    """The start time given with ``at=`` (or ``enqueue_at``), ``None`` without one."""
    batch_id: int | None = None
    unique_key: str | None = None
    state: str = "available"
    attempt: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    callback_of: int | None = None
    """The batch whose callback this job is (its ``batch_id`` too)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What ``Job.options(meta=)`` and the enqueue middleware stored (``jobs.meta``)."""
    result: Any = None
    """What it returned once ``completed`` (as JSON gives it back, like ``App.get_result``)."""

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args]
        arguments += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return (
            f"<{self.name}({', '.join(arguments)}) id={self.id} queue={self.queue!r} "
            f"state={self.state}>"
        )


@dataclass(frozen=True)
class DrainSummary:
    """What one drain ran: attempts by outcome. ``failed`` counts attempts that failed and were
    retried; ``discarded`` the jobs that ended discarded."""

    completed: int = 0
    failed: int = 0
    discarded: int = 0
    cancelled: int = 0
    snoozed: int = 0

    @property
    def runs(self) -> int:
        return self.completed + self.failed + self.discarded + self.cancelled + self.snoozed


@dataclass
class _FakeBatchState:
    id: int
    on_success: JobCall | None
    on_complete: JobCall | None
    sealed: bool = False
    finished: bool = False


class FakeBatch(Batch):
    """A batch in fake mode: its jobs are recorded with their ``batch_id``."""

    def __init__(self, queue: FakeQueue, batch_id: int) -> None:
        self._queue = queue
        self.id = batch_id

    def enqueue_many(self, calls: Iterable[JobCall]) -> list[int]:
        return self._queue.add_to_batch(self.id, list(calls), None)

    def seal(self) -> None:
        self._queue.seal(self.id)


class FakeAsyncBatch(AsyncBatch):
    """:class:`FakeBatch` for async code."""

    def __init__(self, queue: FakeQueue, batch_id: int) -> None:
        self._queue = queue
        self.id = batch_id

    async def enqueue_many(self, calls: Iterable[JobCall]) -> list[int]:
        return self._queue.add_to_batch(self.id, list(calls), None)

    async def seal(self) -> None:
        self._queue.seal(self.id)


class FakeQueue:
    """The enqueues of ``app`` recorded in fake mode (see :func:`fake`), and the assertions on
    them. Enqueues are checked as usual (arguments against the signature and as JSON, options);
    the connection passed with ``using(conn)`` is never used."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._jobs: list[EnqueuedJob] = []
        self._batches: dict[int, _FakeBatchState] = {}
        self._ids = itertools.count(1)
        self._batch_ids = itertools.count(1)
        self._offset = timedelta()

    # -- the recorder the app hands its enqueues to ------------------------------------------

    def enqueue(self, calls: list[JobCall], conn: Any) -> list[JobId]:
        return [self._record(call) for call in calls]

    async def enqueue_async(self, calls: list[JobCall], conn: Any) -> list[JobId]:
        return self.enqueue(calls, conn)

    def add_to_batch(self, batch_id: int, calls: list[JobCall], conn: Any) -> list[int]:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ValidationError("batch_id", f"there is no batch {batch_id}")
        if batch.finished:
            raise ValidationError(
                "batch_id", f"batch {batch_id} finished; add the jobs to a new batch"
            )
        for call in calls:
            if call.unique_key is not None:
                raise ValidationError(
                    "unique_key", f"{call.name} is a unique job, which cannot join a batch"
                )
        return [int(self._record(call, batch_id=batch_id)) for call in calls]

    async def add_to_batch_async(self, batch_id: int, calls: list[JobCall], conn: Any) -> list[int]:
        return self.add_to_batch(batch_id, calls, conn)

    def batch(
        self,
        on_success: JobCall | None,
        on_complete: JobCall | None,
        description: str | None,
        conn: Any,
    ) -> Batch:
        return FakeBatch(self, self._new_batch(on_success, on_complete))

    async def batch_async(
        self,
        on_success: JobCall | None,
        on_complete: JobCall | None,
        description: str | None,
        conn: Any,
    ) -> AsyncBatch:
        return FakeAsyncBatch(self, self._new_batch(on_success, on_complete))

    def seal(self, batch_id: int) -> None:
        self._batches[batch_id].sealed = True
        self._settle(batch_id)

    # -- assertions --------------------------------------------------------------------------

    def enqueued_jobs(self, job: Job[..., Any] | str | None = None) -> list[EnqueuedJob]:
        """Every job recorded (since the last :meth:`clear`), oldest first; only ``job``'s when
        given (a job of the app, or its name)."""
        if job is None:
            return list(self._jobs)
        name = self._registered_name(job)
        return [record for record in self._jobs if record.name == name]

    def assert_enqueued(
        self,
        job: Job[..., Any] | str,
        args: Any = _UNSET,
        kwargs: Any = _UNSET,
        *,
        queue: Any = _UNSET,
        at: Any = _UNSET,
        priority: Any = _UNSET,
        batch_id: Any = _UNSET,
    ) -> EnqueuedJob:
        """Assert that ``job`` was enqueued with what is given (what is not given is not
        compared; ``args`` and ``kwargs`` as stored, in JSON); return the first match.

        Raises:
            AssertionError: no such enqueue; the message lists what was enqueued.
            UnknownJobError: ``job`` is not registered in this app.
        """
        matches = self._matching(job, args, kwargs, queue, at, priority, batch_id)
        if not matches:
            wanted = self._describe(job, args, kwargs, queue, at, priority, batch_id)
            raise AssertionError(f"expected {wanted} to be enqueued; {self._listing()}")
        return matches[0]

    def assert_not_enqueued(
        self,
        job: Job[..., Any] | str,
        args: Any = _UNSET,
        kwargs: Any = _UNSET,
        *,
        queue: Any = _UNSET,
        at: Any = _UNSET,
        priority: Any = _UNSET,
        batch_id: Any = _UNSET,
    ) -> None:
        """Assert that no enqueue of ``job`` matches what is given (see :meth:`assert_enqueued`)."""
        matches = self._matching(job, args, kwargs, queue, at, priority, batch_id)
        if matches:
            wanted = self._describe(job, args, kwargs, queue, at, priority, batch_id)
            found = ", ".join(map(repr, matches))
            raise AssertionError(f"expected no {wanted} to be enqueued, found {found}")

    def clear(self) -> None:
        """Forget every recorded job and batch."""
        self._jobs.clear()
        self._batches.clear()

    # -- time and running ----------------------------------------------------------------------

    def now(self) -> datetime:
        """The fake clock: the current time plus every :meth:`advance` so far."""
        return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        """Move the fake clock ``delta`` forward: jobs due within it (start times, retries'
        back-off, snoozes) become due. New enqueues are due relative to the moved clock."""
        if delta < timedelta():
            raise ValueError(f"advance: {delta} is negative; time only moves forward")
        self._offset += delta

    def drain(
        self,
        *,
        run_scheduled: bool = False,
        max_runs: int = DEFAULT_MAX_RUNS,
        raise_on_discard: bool = True,
    ) -> DrainSummary:
        """Run the waiting jobs here until none is due: the jobs they enqueue too, and their
        retries at once (back-off not waited for), up to each job's ``max_attempts``; batches'
        callbacks once their batch ends. Jobs due later (``at=``, a delay, a snooze) run only
        with ``run_scheduled=True`` (or after :meth:`advance`).

        Raises:
            JobsFailed: a job was discarded (unless ``raise_on_discard=False``): the message
                names each and its last error.
            DrainLimitReached: ``max_runs`` attempts were made and jobs still wait.
            RuntimeError: called from a running event loop; use :meth:`drain_async`.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("drain() called from a running event loop: await drain_async()")
        return asyncio.run(self.drain_async(run_scheduled, max_runs, raise_on_discard))

    async def drain_async(
        self,
        run_scheduled: bool = False,
        max_runs: int = DEFAULT_MAX_RUNS,
        raise_on_discard: bool = True,
    ) -> DrainSummary:
        """:meth:`drain` for async tests."""
        counts = dict.fromkeys(("completed", "failed", "discarded", "cancelled", "snoozed"), 0)
        discarded: list[EnqueuedJob] = []
        threads = _threads()
        try:
            while (record := self._next(run_scheduled)) is not None:
                if sum(counts.values()) >= max_runs:
                    waiting = [r for r in self._jobs if r.state in WAITING]
                    raise DrainLimitReached(
                        f"drain stopped after {max_runs} runs (max_runs) with "
                        f"{len(waiting)} job(s) still waiting, e.g. {waiting[:5]}: do jobs "
                        "enqueue jobs forever?"
                    )
                record.attempt += 1
                record.state = "running"
                outcome = await run_job(
                    self.app,
                    job_id=record.id,
                    name=record.name,
                    queue=record.queue,
                    args=record.args,
                    kwargs=record.kwargs,
                    priority=record.priority,
                    attempt=record.attempt,
                    max_attempts=record.max_attempts,
                    batch_id=record.batch_id,
                    meta=record.meta,
                    threads=threads,
                )
                if outcome.thread_overran:  # its thread runs on: the next job gets a new one
                    threads.shutdown(wait=False)
                    threads = _threads()
                counts[self._apply(record, outcome)] += 1
                if record.state == "discarded":
                    discarded.append(record)
                if record.batch_id is not None and record.callback_of is None:
                    self._settle(record.batch_id)
        finally:
            threads.shutdown(wait=False)
        if discarded and raise_on_discard:
            lines = "\n".join(
                f"  {record!r} after {record.attempt} attempt(s): "
                f"{record.errors[-1]['class']}: {record.errors[-1]['message']}"
                for record in discarded
            )
            raise JobsFailed(f"{len(discarded)} job(s) discarded in drain():\n{lines}")
        return DrainSummary(**counts)

    # -- the model -------------------------------------------------------------------------

    def _record(
        self, call: JobCall, *, batch_id: int | None = None, callback_of: int | None = None
    ) -> JobId:
        options, unique = call.options, call.unique
        now = self.now()
        due = options.at or now + timedelta(seconds=options.delay or 0)
        if call.unique_key is not None:
            states = unique.states if unique is not None else DEFAULT_STATES
            for held in self._jobs:
                if held.unique_key == call.unique_key and held.state in states:
                    if unique is not None and unique.replace:
                        self._replace(held, call, due, now)
                    return job_id(held.id, True)
        record = EnqueuedJob(
            id=next(self._ids),
            name=call.name,
            args=json.loads(call.args_json),
            kwargs=json.loads(call.kwargs_json),
            queue=call.queue,
            priority=call.priority,
            max_attempts=call.max_attempts,
            scheduled_at=due,
            at=options.at,
            batch_id=batch_id,
            unique_key=call.unique_key,
            state="scheduled" if due > now else "available",
            callback_of=callback_of,
            meta={} if call.meta is None else json.loads(call.meta),
        )
        self._jobs.append(record)
        return job_id(record.id, False)

    def _replace(self, held: EnqueuedJob, call: JobCall, due: datetime, now: datetime) -> None:
        """A debounce: a waiting holder takes the duplicate's arguments, priority and run time
        (a running or retryable one is kept as it is)."""
        if held.state not in ("scheduled", "available"):
            return
        held.args = json.loads(call.args_json)
        held.kwargs = json.loads(call.kwargs_json)
        if call.options.priority is not None:
            held.priority = call.options.priority
        held.scheduled_at, held.at = due, call.options.at
        held.state = "scheduled" if due > now else "available"

    def _new_batch(self, on_success: JobCall | None, on_complete: JobCall | None) -> int:
        for name, call in (("on_success", on_success), ("on_complete", on_complete)):
            callback_template(self.app.jobs, name, call)  # raises as the real one does
        batch_id = next(self._batch_ids)
        self._batches[batch_id] = _FakeBatchState(batch_id, on_success, on_complete)
        return batch_id

    def _settle(self, batch_id: int) -> None:
        """Enqueue a sealed batch's callbacks once none of its jobs is pending."""
        batch = self._batches.get(batch_id)
        if batch is None or not batch.sealed or batch.finished:
            return
        members = [r for r in self._jobs if r.batch_id == batch_id and r.callback_of is None]
        if any(r.state in (*WAITING, "running") for r in members):
            return
        batch.finished = True
        if batch.on_success is not None and all(r.state == "completed" for r in members):
            self._record(batch.on_success, batch_id=batch_id, callback_of=batch_id)
        if batch.on_complete is not None:
            self._record(batch.on_complete, batch_id=batch_id, callback_of=batch_id)

    def _next(self, run_scheduled: bool) -> EnqueuedJob | None:
        now = self.now()
        due = [
            r
            for r in self._jobs
            if r.state == "available"
            or r.state == "retryable"
            or (r.state == "scheduled" and (run_scheduled or r.scheduled_at <= now))
        ]
        return min(due, key=lambda r: (r.priority, r.scheduled_at, r.id), default=None)

    def _apply(self, record: EnqueuedJob, outcome: Outcome) -> str:
        """Move ``record`` to ``outcome``'s state; return the summary's count to add to."""
        record.state = outcome.state
        if outcome.result is not None:
            record.result = json.loads(outcome.result)
        if outcome.error is not None:
            record.errors.append(outcome.error)
        if outcome.state == "scheduled":
            record.attempt -= 1  # a snooze gives its attempt back
            record.scheduled_at = self.now() + timedelta(seconds=outcome.delay)
            return "snoozed"
        if outcome.state == "retryable":
            record.scheduled_at = self.now() + timedelta(seconds=outcome.delay)
            return "failed"
        return outcome.state

    # -- matching ----------------------------------------------------------------------------

    def _registered_name(self, job: Job[..., Any] | str) -> str:
        name = job if isinstance(job, str) else getattr(job, "name", None)
        if not isinstance(name, str) or name not in self.app.jobs:
            known = ", ".join(sorted(self.app.jobs)) or "none"
            what = name if isinstance(name, str) else repr(job)
            raise UnknownJobError(
                f"{what} is not a job registered in this app, so it is never enqueued; "
                f"register it with @app.job (known: {known})"
            )
        return name

    def _matching(
        self,
        job: Job[..., Any] | str,
        args: Any,
        kwargs: Any,
        queue: Any,
        at: Any,
        priority: Any,
        batch_id: Any,
    ) -> list[EnqueuedJob]:
        name = self._registered_name(job)
        wanted = {
            "args": _UNSET if args is _UNSET else _as_stored(list(args)),
            "kwargs": _UNSET if kwargs is _UNSET else _as_stored(dict(kwargs)),
            "queue": queue,
            "at": at,
            "priority": priority,
            "batch_id": batch_id,
        }
        given = {key: value for key, value in wanted.items() if value is not _UNSET}
        return [
            record
            for record in self._jobs
            if record.name == name
            and all(getattr(record, key) == value for key, value in given.items())
        ]

    def _describe(self, job: Job[..., Any] | str, *values: Any) -> str:
        keys = ("args", "kwargs", "queue", "at", "priority", "batch_id")
        given = [f"{k}={v!r}" for k, v in zip(keys, values, strict=True) if v is not _UNSET]
        return f"{self._registered_name(job)}({', '.join(given)})"

    def _listing(self) -> str:
        if not self._jobs:
            return "nothing was enqueued"
        return "enqueued:\n" + "\n".join(f"  {record!r}" for record in self._jobs)


def _threads() -> ThreadPoolExecutor:
    """The thread that ``def`` jobs run in, one after the other."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgjobs-fake")


def _as_stored(value: Any) -> Any:
    """``value`` as it comes back from the jobs table's JSON."""
    return json.loads(json.dumps(value))


@contextlib.contextmanager
def fake(app: App) -> Iterator[FakeQueue]:
    """Record ``app``'s enqueues instead of writing them, until the block ends::

    with pgjobs.testing.fake(app) as jobs:
        signup("ada@example.com")
        jobs.assert_enqueued(send_welcome_email, args=[1])
        jobs.drain()
    """
    if app in _fakes:
        raise RuntimeError("this app already records its enqueues in fake mode")
    queue = FakeQueue(app)
    _fakes[app] = queue
    app._record_enqueues(queue)
    try:
        yield queue
    finally:
        app._record_enqueues(None)
        del _fakes[app]


def faking(app: App) -> FakeQueue | None:
    """The fake queue recording ``app``'s enqueues now, if any."""
    return _fakes.get(app)
