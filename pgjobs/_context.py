"""What a running job can know about itself: :func:`current_job`."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._validation import check_progress

_NOTHING: Mapping[str, Any] = MappingProxyType({})


def _nothing() -> Mapping[str, Any]:
    return _NOTHING


@dataclass(frozen=True)
class JobContext:
    """The job being run, as seen from inside it.

    ``stopping`` turns true when the worker starts a graceful shutdown: a long job can save its
    progress and return (or raise) early; if it does not finish within the shutdown timeout it is
    handed back to the queue and runs again later.

    ``cancelled`` turns true when someone cancels the running job (:meth:`App.cancel`,
    ``pgjobs cancel``, ``SELECT pgjobs.cancel_job(id)``). An ``async def`` job is also cancelled
    like any asyncio task; a ``def`` job should check the flag and return. Either way the job ends
    ``cancelled``.
    """

    id: int
    name: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    _stopping: threading.Event = field(repr=False, compare=False)
    _cancelled_ids: Set[int] = field(default_factory=frozenset, repr=False, compare=False)
    """The ids of the worker's jobs whose cancellation was requested (shared by all its jobs, so
    that starting a job allocates nothing for a rare event)."""
    batch_id: int | None = None
    """The batch the job belongs to (:meth:`App.batch`), ``None`` for a job of no batch."""
    _args: Sequence[Any] = field(default=(), repr=False, compare=False)
    _kwargs: Mapping[str, Any] = field(default_factory=_nothing, repr=False, compare=False)
    _meta: Mapping[str, Any] = field(default_factory=_nothing, repr=False, compare=False)

    @property
    def args(self) -> tuple[Any, ...]:
        """The job's positional arguments, as stored (JSON values)."""
        return tuple(self._args)

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The job's keyword arguments, as stored (a read-only view)."""
        return MappingProxyType(self._kwargs)

    @property
    def meta(self) -> Mapping[str, Any]:
        """What its enqueue stored in ``jobs.meta`` (enqueue middleware, ``Job.options(meta=)``),
        a read-only view; empty for a job enqueued without."""
        return MappingProxyType(self._meta)

    _report: Callable[[Any, float, str | None], None] | None = field(
        default=None, repr=False, compare=False
    )
    """Hands a progress report, with ``_claim``, to the worker's writer (from any thread);
    ``None``: dropped. One for all the worker's jobs: starting a job allocates nothing for it."""
    _claim: Any = field(default=None, repr=False, compare=False)
    """What ``_report`` is handed with each report: the worker's claim of the job."""

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far this attempt has come: ``fraction`` from 0 to 1, and a short text.

        Stored on the job's row (``progress``, ``progress_message``, ``progress_at``), shown by
        :meth:`App.get_job`, ``pgjobs job ID`` and the dashboard. Returns at once, from a ``def``
        job's thread or an ``async def`` job: reports are written in the background, the latest
        winning, at most one write in flight and about two a second, so calling this in a tight
        loop is fine. A write that fails is logged, never raised. A new attempt starts with no
        progress.

        Example::

            for done, image in enumerate(images, 1):
                resize(image)
                pgjobs.current_job().progress(done / len(images), f"resized {done} images")

        Raises:
            ValidationError: ``fraction`` is not a number from 0 to 1 (NaN included), or
                ``message`` is not text PostgreSQL can store, or is over 1,000 characters.
        """
        checked = check_progress(fraction, message)
        if self._report is not None:
            self._report(self._claim, checked, message)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def cancelled(self) -> bool:
        return self.id in self._cancelled_ids


def running_context(
    id: int,
    name: str,
    queue: str,
    attempt: int,
    max_attempts: int,
    worker_id: str,
    stopping: threading.Event,
    cancelled_ids: Set[int],
    batch_id: int | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    meta: Mapping[str, Any],
    report: Callable[[Any, float, str | None], None] | None,
    claim: Any,
) -> JobContext:
    """The :class:`JobContext` the worker makes for each job it starts, with every field given.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``: about
    2.5 µs for these fourteen, a few percent of a no-op job's whole cost in a worker at full
    rate. Filling the instance's ``__dict__`` at once takes a quarter of that, and the object
    is the same (its fields, equality and immutability are the dataclass's).
    """
    context = object.__new__(JobContext)
    context.__dict__.update(
        id=id,
        name=name,
        queue=queue,
        attempt=attempt,
        max_attempts=max_attempts,
        worker_id=worker_id,
        _stopping=stopping,
        _cancelled_ids=cancelled_ids,
        batch_id=batch_id,
        _args=args,
        _kwargs=kwargs,
        _meta=meta,
        _report=report,
        _claim=claim,
    )
    return context


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("pgjobs_current_job")


def current_job() -> JobContext:
    """The :class:`JobContext` of the job running in this thread or task.

    Raises:
        LookupError: called outside a job run by a pgjobs worker.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError("current_job() is only available inside a job run by a worker") from None


def set_current_job(context: JobContext) -> contextvars.Token[JobContext]:
    return _current.set(context)


def reset_current_job(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
