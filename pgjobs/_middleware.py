"""The seam around enqueue and run: middleware and error handlers registered on an App.

A middleware is a generator function of one parameter, sync or async, like the body of a
``contextlib.contextmanager``: enqueue middleware get an :class:`Enqueuing` for each job being
enqueued and are sent its :class:`~pgjobs.JobId` at their ``yield``; run middleware get the
running job's :class:`~pgjobs.JobContext`, and the job runs at their ``yield`` (its exception is
thrown in there). The first registered is the outermost. Error handlers are plain functions
``(job, exc)`` called after a failed attempt (``on_error``) or a discard (``on_death``).

This module registers them and drives the enqueue side; :mod:`._execution` drives the run side
with :func:`run_chain` and :func:`run_chain_async`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import ConfigError, ValidationError
from ._logs import job_ended, job_started
from ._observers import Observer, RunObserver, SendObserver
from ._validation import encode_meta

if TYPE_CHECKING:
    from ._call import JobCall
    from ._context import JobContext

Ids = TypeVar("Ids", bound=int)
"""The ids an insert returns: :class:`JobId` (enqueues) or ``int`` (a batch's additions)."""

HANDLER_TIMEOUT = 30.0
"""Seconds an error handler (and ``on_exhausted``) may run when its job has no timeout."""


@dataclass(frozen=True)
class Hook:
    """A registered middleware or handler: the function, its name for messages, and whether it
    is async (an async generator function or a coroutine function)."""

    func: Callable[..., Any]
    name: str
    is_async: bool


def _name(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def middleware(func: Any, kind: str) -> Hook:
    """``func`` as ``kind`` middleware; :class:`ConfigError` naming it unless it is a generator
    function (sync or async) of exactly one positional parameter."""
    name = _name(func)
    is_async = inspect.isasyncgenfunction(func)
    if not is_async and not inspect.isgeneratorfunction(func):
        raise ConfigError(
            f"{kind} middleware {name}: not a generator function; write it with one `yield` "
            "where the job is enqueued or run (see the guide)"
        )
    if not _takes_positional(func, 1):
        raise ConfigError(
            f"{kind} middleware {name}: must take exactly one positional parameter (the job)"
        )
    return Hook(func, name, is_async)


def handler(func: Any, kind: str) -> Hook:
    """``func`` as an ``on_error``/``on_death`` handler: a function (``def`` or ``async def``)
    of two positional parameters, ``(job, exc)``."""
    name = _name(func)
    if not callable(func) or inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise ConfigError(f"{kind} handler {name}: must be a function (job, exc) -> None")
    if not _takes_positional(func, 2):
        raise ConfigError(
            f"{kind} handler {name}: must take exactly two positional parameters (job, exc)"
        )
    return Hook(func, name, inspect.iscoroutinefunction(func))


def takes_job(hook: Callable[..., Any]) -> bool:
    """Whether an ``on_exhausted`` hook takes ``(job, exc)`` rather than ``exc`` alone."""
    try:
        inspect.signature(hook).bind(None, None)
    except (TypeError, ValueError):
        return False
    return True


def _takes_positional(func: Any, count: int) -> bool:
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return len(parameters) == count and all(p.kind in positional for p in parameters)


LOG_START = Observer(job_started, "pgjobs start line")
LOG_END = Observer(job_ended, "pgjobs end line")


class Seam:
    """An app's middleware, handlers and observers, in registration order. Read on every enqueue
    and run: an app without any pays one truth test of an empty tuple (but for the observers
    that write the log lines, on every app)."""

    def __init__(self) -> None:
        self.enqueue: tuple[Hook, ...] = ()
        self.run: tuple[Hook, ...] = ()
        self.run_sync: tuple[Hook, ...] = ()
        """The ``def`` run middleware: in a ``def`` job's thread, around its function."""
        self.run_async: tuple[Hook, ...] = ()
        """The ``async def`` run middleware: on the loop, around a ``def`` job's thread."""
        self.on_error: tuple[Hook, ...] = ()
        self.on_death: tuple[Hook, ...] = ()
        self.on_job_start: tuple[Observer, ...] = (LOG_START,)
        self.on_job_end: tuple[Observer, ...] = (LOG_END,)
        self.around_send: tuple[SendObserver, ...] = ()
        """Private: around each enqueue call (tracing's ``PRODUCER`` spans)."""
        self.around_run: tuple[RunObserver, ...] = ()
        """Private: around each attempt, outside the run middleware (tracing's ``CONSUMER``
        spans); with any, a ``def`` job's thread runs in a copy of the attempt's context."""
        self.carrier: Callable[[], str | None] | None = None
        """Private: the caller's trace context, for jobs inserted later on its behalf (a batch's
        callbacks)."""

    def add_run(self, hook: Hook) -> None:
        self.run += (hook,)
        self.run_sync = tuple(h for h in self.run if not h.is_async)
        self.run_async = tuple(h for h in self.run if h.is_async)


class Enqueuing:
    """A job being enqueued, as enqueue middleware see it.

    ``name``, ``args`` and ``kwargs`` are read-only. ``meta`` is a dict stored with the job
    (``jobs.meta``; JSON values, within the arguments' limits). ``queue``, ``priority``,
    ``max_attempts``, ``at`` and ``delay`` (seconds, or a timedelta) may be set; they are
    checked as :meth:`Job.options` checks them once every middleware has had its turn. Setting
    ``at`` clears ``delay`` and the other way round.
    """

    __slots__ = ("_args", "_by", "_call", "_current", "_kwargs", "_options", "meta")

    def __init__(self, call: JobCall) -> None:
        """``call``: the :class:`~pgjobs.JobCall` being enqueued."""
        self._call = call
        options = call.options
        self._options: dict[str, Any] = {
            "queue": call.queue,
            "priority": call.priority,
            "max_attempts": call.max_attempts,
            "at": options.at,
            "delay": options.delay,
        }
        self._by: dict[str, str] = {}
        """The middleware that last set each option, for messages."""
        self._current = ""
        self._args: tuple[Any, ...] | None = None
        self._kwargs: Mapping[str, Any] | None = None
        self.meta: dict[str, Any] = {} if call.meta is None else json.loads(call.meta)

    def __repr__(self) -> str:
        return f"<pgjobs.Enqueuing {self.name!r} queue={self.queue!r}>"

    @property
    def name(self) -> str:
        name: str = self._call.name
        return name

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments, as they will be stored (JSON values)."""
        if self._args is None:
            self._args = tuple(json.loads(self._call.args_json))
        return self._args

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """The keyword arguments, as they will be stored (a read-only view)."""
        if self._kwargs is None:
            self._kwargs = MappingProxyType(json.loads(self._call.kwargs_json))
        return self._kwargs

    @property
    def queue(self) -> str:
        return str(self._options["queue"])

    @queue.setter
    def queue(self, value: str) -> None:
        self._set("queue", value)

    @property
    def priority(self) -> int:
        return int(self._options["priority"])

    @priority.setter
    def priority(self, value: int) -> None:
        self._set("priority", value)

    @property
    def max_attempts(self) -> int:
        return int(self._options["max_attempts"])

    @max_attempts.setter
    def max_attempts(self, value: int) -> None:
        self._set("max_attempts", value)

    @property
    def at(self) -> datetime | None:
        """When the job is to run (an aware datetime), or ``None`` for after :attr:`delay`."""
        at: datetime | None = self._options["at"]
        return at

    @at.setter
    def at(self, value: datetime | None) -> None:
        self._set("at", value)
        if value is not None:
            self._options["delay"] = None

    @property
    def delay(self) -> float | None:
        """Seconds from the enqueue until the job is to run (``None``: at once, or :attr:`at`)."""
        delay: float | None = self._options["delay"]
        return delay

    @delay.setter
    def delay(self, value: timedelta | float | None) -> None:
        seconds = value.total_seconds() if isinstance(value, timedelta) else value
        self._set("delay", seconds)
        if seconds is not None:
            self._options["at"] = None

    def _set(self, option: str, value: Any) -> None:
        self._options[option] = value
        self._by[option] = self._current

    def _call_as_set(self, meta: str | None) -> JobCall:
        """The call to insert: the options as set, checked, and ``meta`` (its JSON text)."""
        call = self._call
        if not self._by:
            return call._replace(meta=meta)
        given = {option: self._options[option] for option in self._by}
        if "at" in given or "delay" in given:
            given["at"], given["delay"] = self._options["at"], self._options["delay"]
        try:
            options = replace(call.options, **given).checked()
        except ValidationError as exc:
            by = self._by.get(exc.path, "")
            raise ValidationError(
                exc.path, f"{exc.problem} (set by enqueue middleware {by})"
            ) from None
        resolved = {k: given[k] for k in ("queue", "priority", "max_attempts") if k in given}
        return call._replace(options=options, meta=meta, **resolved)


def _meta_of(job: Enqueuing, hook: Hook) -> str | None:
    try:
        return encode_meta(job.meta)
    except ValidationError as exc:
        raise ValidationError(
            exc.path, f"{exc.problem} (set by enqueue middleware {hook.name})"
        ) from None


def _entered_twice(hook: Hook) -> ConfigError:
    return ConfigError(
        f"enqueue middleware {hook.name}: returned before its yield, or yielded "
        "twice; yield exactly once (raise before the yield to refuse the enqueue)"
    )


def refuse_async(seam: Seam) -> None:
    """Refuse a sync enqueue when an enqueue middleware is async."""
    for hook in seam.enqueue:
        if hook.is_async:
            raise ConfigError(
                f"enqueue middleware {hook.name} is async: enqueue with enqueue_async "
                "(or enqueue_many_async) from async code, or make it a plain generator"
            )


def around_enqueue(
    seam: Seam, batch: list[JobCall], insert: Callable[[list[JobCall]], list[Ids]]
) -> list[Ids]:
    """``insert(batch)`` with every job of ``batch`` inside the enqueue middleware: each enters
    them all before the one insert, and each is sent its job's id after it (innermost first).
    An exception before the insert or from it is thrown into those entered, then raised."""
    refuse_async(seam)
    hooks = seam.enqueue
    entered: list[Any] = []
    try:
        calls = []
        for call in batch:
            job = Enqueuing(call)
            meta = call.meta
            for hook in hooks:
                generator = hook.func(job)
                job._current = hook.name
                try:
                    next(generator)
                except StopIteration:
                    raise _entered_twice(hook) from None
                entered.append(generator)
                if job.meta:
                    meta = _meta_of(job, hook)
            calls.append(job._call_as_set(meta))
        ids = insert(calls)
    except BaseException as exc:
        _throw_into(entered, exc)
        raise
    _send_ids(entered, ids, hooks)
    return ids


async def around_enqueue_async(
    seam: Seam, batch: list[JobCall], insert: Callable[[list[JobCall]], Awaitable[list[Ids]]]
) -> list[Ids]:
    """:func:`around_enqueue` for async code: async middleware are awaited, sync ones run as
    they are."""
    hooks = seam.enqueue
    entered: list[Any] = []
    try:
        calls = []
        for call in batch:
            job = Enqueuing(call)
            meta = call.meta
            for hook in hooks:
                generator = hook.func(job)
                job._current = hook.name
                try:
                    if hook.is_async:
                        await generator.__anext__()
                    else:
                        next(generator)
                except (StopIteration, StopAsyncIteration):
                    raise _entered_twice(hook) from None
                entered.append(generator)
                if job.meta:
                    meta = _meta_of(job, hook)
            calls.append(job._call_as_set(meta))
        ids = await insert(calls)
    except BaseException as exc:
        for generator in reversed(entered):
            try:
                if isinstance(generator, AsyncGenerator):
                    await generator.athrow(exc)
                    await generator.aclose()
                else:
                    generator.throw(exc)
                    generator.close()
            except (StopIteration, StopAsyncIteration):
                pass
            except BaseException as replaced:
                if replaced is not exc:
                    raise
        raise
    count = len(hooks)
    failure: BaseException | None = None
    for index, job_id in enumerate(ids):
        group = entered[index * count : (index + 1) * count]
        for position in reversed(range(len(group))):
            generator = group[position]
            try:
                if isinstance(generator, AsyncGenerator):
                    await generator.asend(job_id)
                    await generator.aclose()
                else:
                    generator.send(job_id)
                    generator.close()
            except (StopIteration, StopAsyncIteration):
                continue
            except BaseException as exc:
                failure = failure or exc
                continue
            failure = failure or _entered_twice(hooks[position])
    if failure is not None:
        raise failure
    return ids


def _throw_into(entered: list[Any], exc: BaseException) -> None:
    """Throw a failed enqueue's exception into the middleware that entered, innermost first;
    one that raises another exception replaces it (as nested ``with`` blocks do)."""
    for generator in reversed(entered):
        try:
            generator.throw(exc)
            generator.close()
        except StopIteration:
            pass
        except BaseException as replaced:
            if replaced is not exc:
                raise


def _send_ids(entered: list[Any], ids: list[Ids], hooks: tuple[Hook, ...]) -> None:
    """Send each job's id to its middleware, innermost first. Every one is resumed even if one
    raises; the first exception is raised at the end (the jobs are inserted by then)."""
    count = len(hooks)
    failure: BaseException | None = None
    for index, job_id in enumerate(ids):
        group = entered[index * count : (index + 1) * count]
        for position in reversed(range(len(group))):
            generator = group[position]
            try:
                generator.send(job_id)
                generator.close()
            except StopIteration:
                continue
            except BaseException as exc:
                failure = failure or exc
                continue
            failure = failure or _entered_twice(hooks[position])
    if failure is not None:
        raise failure


def run_chain(
    hooks: tuple[Hook, ...], context: JobContext, call: Callable[[], Any], failed_in: list[str]
) -> Any:
    """``call()`` inside the sync run middleware ``hooks``. A middleware that returns before
    its yield skips the job and the ones inside it; one that ends normally after the job's
    exception was thrown in completes the attempt; one that raises makes that the outcome.

    ``failed_in`` names the middleware whose code runs, or whose exception ends the attempt
    (empty while the job runs, and when the job's own exception ends it): a timeout that
    strikes inside a middleware is laid at its door.

    Returns what the job returned (each middleware gets it from its ``yield``); ``None`` when
    it was skipped or a middleware ended the attempt normally after its exception."""
    entered: list[tuple[Hook, Any]] = []
    exc: BaseException | None = None
    owner: str | None = None
    result: Any = None
    for hook in hooks:
        failed_in[:] = [hook.name]
        generator = hook.func(context)
        try:
            next(generator)
        except StopIteration:
            break  # returned before its yield: the job is skipped
        except BaseException as raised:
            exc, owner = raised, hook.name
            break
        entered.append((hook, generator))
    else:
        failed_in.clear()
        try:
            result = call()
        except BaseException as raised:
            exc = raised
    for hook, generator in reversed(entered):
        failed_in[:] = [hook.name]
        try:
            if exc is None:
                generator.send(result)
            else:
                generator.throw(exc)
        except StopIteration:
            if exc is not None:
                exc = owner = result = None  # ended normally: the attempt completes
            continue
        except BaseException as raised:
            if raised is not exc:
                owner = hook.name
            exc = raised
            continue
        generator.close()
        exc, owner = _yielded_twice(hook), hook.name
    failed_in[:] = [] if owner is None else [owner]
    if exc is not None:
        raise exc
    return result


async def run_chain_async(
    hooks: tuple[Hook, ...],
    context: JobContext,
    call: Callable[[], Awaitable[Any]],
    failed_in: list[str],
) -> Any:
    """:func:`run_chain` on the event loop: async middleware are awaited, sync ones (around an
    ``async def`` job) run on the loop too."""
    entered: list[tuple[Hook, Any]] = []
    exc: BaseException | None = None
    owner: str | None = None
    result: Any = None
    for hook in hooks:
        failed_in[:] = [hook.name]
        generator = hook.func(context)
        try:
            if hook.is_async:
                await generator.__anext__()
            else:
                next(generator)
        except (StopIteration, StopAsyncIteration):
            break
        except BaseException as raised:
            exc, owner = raised, hook.name
            break
        entered.append((hook, generator))
    else:
        failed_in.clear()
        try:
            result = await call()
        except BaseException as raised:
            exc = raised
            owner = failed_in[0] if failed_in else None  # a middleware in the thread, say
    for hook, generator in reversed(entered):
        failed_in[:] = [hook.name]
        try:
            if not hook.is_async:
                generator.send(result) if exc is None else generator.throw(exc)
            elif exc is None:
                await generator.asend(result)
            else:
                await generator.athrow(exc)
        except (StopIteration, StopAsyncIteration):
            if exc is not None:
                exc = owner = result = None
            continue
        except BaseException as raised:
            if raised is not exc:
                owner = hook.name
            exc = raised
            continue
        if hook.is_async:
            await generator.aclose()
        else:
            generator.close()
        exc, owner = _yielded_twice(hook), hook.name
    failed_in[:] = [] if owner is None else [owner]
    if exc is not None:
        raise exc
    return result


def _yielded_twice(hook: Hook) -> RuntimeError:
    return RuntimeError(f"run middleware {hook.name} yielded more than once")
