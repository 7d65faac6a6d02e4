"""What a running job can know about itself: :func:`current_job`."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def cancelled(self) -> bool:
        return self.id in self._cancelled_ids


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
