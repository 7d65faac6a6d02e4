"""Observers on the seam: hooks that watch enqueues and runs and change nothing.

Public: ``on_job_start`` observers ``(job)`` and ``on_job_end`` observers ``(job, outcome)``,
called on the worker's loop as an attempt begins and once its :class:`JobOutcome` is decided
(before it is written). pgjobs' own ``start``/``done`` log lines are the first of them on every
app. An observer that raises is logged with its name; the job goes on as if it had not been.

Private: around observers, for tracing, whose context must be current while the jobs are
inserted and while a job runs. A send observer is a generator function ``(calls, batch_id)``
entered before the insert of one enqueue call: it yields the trace context the jobs are to carry
(JSON text, or ``None``) and is sent their ids (an exception is thrown in instead). A run
observer is a generator function ``(job, carrier)`` entered as an attempt begins, outside the
run middleware: it yields once and is sent the attempt's :class:`JobOutcome` (or has the
worker's ``CancelledError`` thrown in when the job is handed back).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, ParamSpec, TypeVar

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._call import JobCall
    from ._context import JobContext
    from ._outcome import Outcome

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("pgjobs.worker")

Ids = TypeVar("Ids", bound=Sequence[int])

SendObserver = Callable[["Sequence[JobCall]", "int | None"], Generator["str | None", Any, None]]
"""Around one enqueue call: yields the trace context its jobs carry, is sent their ids."""

RunObserver = Callable[["JobContext", Any], Generator[None, "JobOutcome", None]]
"""Around one attempt, outside the run middleware: is sent its outcome."""


class JobOutcome(NamedTuple):
    """How one attempt of a job ended, as ``on_job_end`` observers see it (a named tuple: the
    worker makes one per attempt, and a frozen dataclass costs several times more to build).

    Attributes:
        state: the job's next state: ``completed``; ``retryable`` (to be retried after
            ``delay``); ``discarded`` (failed for good); ``cancelled``; or ``scheduled`` (snoozed
            for ``delay``, the attempt not counted).
        delay: seconds until the retry or the snoozed run; 0 for the other states.
        error: for a failed attempt (retryable or discarded), the error stored with the job:
            ``attempt``, ``class``, ``message``, ``traceback``; else ``None``.
        seconds: how long the attempt ran, as the worker measured it.
    """

    state: Literal["completed", "retryable", "discarded", "cancelled", "scheduled"]
    delay: float
    error: Mapping[str, Any] | None
    seconds: float


def job_outcome(outcome: Outcome, seconds: float) -> JobOutcome:
    """What observers see of ``outcome`` (its error read-only: it is about to be written)."""
    error = outcome.error
    return JobOutcome(
        outcome.state, outcome.delay, None if error is None else MappingProxyType(error), seconds
    )


@dataclass(frozen=True)
class Observer:
    """A registered ``on_job_start`` or ``on_job_end`` observer and its name for messages."""

    func: Callable[..., object]
    name: str


def observer(func: Any, kind: str, count: int) -> Observer:
    """``func`` as a ``kind`` observer of ``count`` positional parameters; :class:`ConfigError`
    naming it unless it is a plain function (``async def`` is refused: observers run on the
    worker's loop, where an await would hold up every job)."""
    name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
    params = "(job)" if count == 1 else "(job, outcome)"
    if not callable(func) or inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise ConfigError(f"{kind} observer {name}: must be a function {params} -> None")
    if inspect.iscoroutinefunction(func):
        raise ConfigError(
            f"{kind} observer {name} is async: observers run on the worker's loop and must not "
            "wait; make it a plain def that hands slow work elsewhere (a queue, a thread)"
        )
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(parameters) != count or any(p.kind not in positional for p in parameters):
        raise ConfigError(
            f"{kind} observer {name}: must take exactly {count} positional parameter"
            f"{'s' if count > 1 else ''} {params}"
        )
    return Observer(func, name)


def started(observers: tuple[Observer, ...], job: JobContext) -> None:
    """Call each ``on_job_start`` observer; one that raises (anything, ``SystemExit``
    included) is logged with its name, and the rest are still called."""
    for entry in observers:
        try:
            entry.func(job)
        except BaseException as exc:  # an observer changes nothing, whatever it raises
            _failed(job, "on_job_start", entry, exc)


def ended(observers: tuple[Observer, ...], job: JobContext, outcome: JobOutcome) -> None:
    """Call each ``on_job_end`` observer, contained as in :func:`started`."""
    for entry in observers:
        try:
            entry.func(job, outcome)
        except BaseException as exc:
            _failed(job, "on_job_end", entry, exc)


def _failed(job: JobContext, kind: str, entry: Observer, exc: BaseException) -> None:
    log.error(
        "job %s: %s observer %s failed: %s: %s",
        job.id,
        kind,
        entry.name,
        type(exc).__qualname__,
        exc,
        exc_info=exc,
    )


def around_send(
    observers: tuple[SendObserver, ...],
    calls: Sequence[JobCall],
    batch_id: int | None,
    insert: Callable[[str | None], Ids],
) -> Ids:
    """``insert(trace_context)`` inside the send observers (the first registered outermost)."""
    entered, context = _enter_send(observers, calls, batch_id)
    try:
        ids = insert(context)
    except BaseException as exc:
        _throw(entered, exc)
        raise
    _finish(entered, ids)
    return ids


async def around_send_async(
    observers: tuple[SendObserver, ...],
    calls: Sequence[JobCall],
    batch_id: int | None,
    insert: Callable[[str | None], Awaitable[Ids]],
) -> Ids:
    """:func:`around_send` for async code."""
    entered, context = _enter_send(observers, calls, batch_id)
    try:
        ids = await insert(context)
    except BaseException as exc:
        _throw(entered, exc)
        raise
    _finish(entered, ids)
    return ids


def _enter_send(
    observers: tuple[SendObserver, ...], calls: Sequence[JobCall], batch_id: int | None
) -> tuple[list[Generator[Any, Any, None]], str | None]:
    entered: list[Generator[Any, Any, None]] = []
    context: str | None = None
    try:
        for make in observers:
            generator = make(calls, batch_id)
            context = next(generator)
            entered.append(generator)
    except BaseException as exc:
        _throw(entered, exc)
        raise
    return entered, context


def enter_run(
    observers: tuple[RunObserver, ...], job: JobContext, carrier: Any
) -> list[Generator[None, JobOutcome, None]]:
    """Enter the run observers of one attempt, the first registered outermost."""
    entered: list[Generator[None, JobOutcome, None]] = []
    for make in observers:
        generator = make(job, carrier)
        next(generator)
        entered.append(generator)
    return entered


def exit_run(entered: list[Generator[None, JobOutcome, None]], outcome: JobOutcome) -> None:
    """Send the attempt's outcome to the run observers it entered, innermost first."""
    _finish(entered, outcome)


def throw_run(entered: list[Generator[None, JobOutcome, None]], exc: BaseException) -> None:
    """The attempt ended without an outcome (the worker handed its job back)."""
    _throw(entered, exc)


def _finish(entered: Sequence[Generator[Any, Any, None]], value: Any) -> None:
    for generator in reversed(entered):
        try:
            generator.send(value)
        except StopIteration:
            continue
        generator.close()


def _throw(entered: Sequence[Generator[Any, Any, None]], exc: BaseException) -> None:
    for generator in reversed(entered):
        try:
            generator.throw(exc)
        except StopIteration:
            continue
        except BaseException as replaced:
            if replaced is not exc:
                raise
            continue
        generator.close()


class InContext(Executor):
    """The worker's thread pool, with each call run in a copy of the submitting task's context:
    what the run observers made current (a span) is current in a ``def`` job's thread."""

    def __init__(self, threads: Executor) -> None:
        self._threads = threads

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        run: Callable[..., T] = contextvars.copy_context().run
        return self._threads.submit(run, fn, *args, **kwargs)
