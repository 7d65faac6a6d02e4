"""Running one claimed job to an :class:`~pgjobs._outcome.Outcome`.

Sync functions run in the worker's thread pool, ``async def`` ones on its event loop. Whatever
the job raises (``SystemExit`` and ``KeyboardInterrupt`` too, from the loop or through a thread's
future) is caught here and turned into a retry or a discard; nothing escapes to the worker. A
job's stored arguments are bound to its function's signature first, so arguments that no longer
fit after a deploy fail as :class:`ArgumentsMismatch` without calling it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, NamedTuple

from ._context import JobContext, reset_current_job, set_current_job
from ._errors import ArgumentsMismatch, JobTimeout, UnknownJobError
from ._job import Job
from ._middleware import HANDLER_TIMEOUT, Hook, Seam, run_chain, run_chain_async, takes_job
from ._outcome import (
    CANCELLED,
    COMPLETED,
    Outcome,
    Snooze,
    deploy_skew_outcome,
    error_record,
    failure_outcome,
    snooze_outcome,
    whole_traceback,
)
from ._validation import encode_result

log = logging.getLogger("pgjobs.worker")

EXHAUSTED = "on_exhausted hook"
"""The name a job's ``on_exhausted`` hook goes by in the log."""


class ClaimedJob(NamedTuple):
    """A row returned by the claim statement (a tuple: one is made for every job run)."""

    id: int
    queue: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    claim_token: uuid.UUID
    batch_id: int | None
    trace_context: Any
    """The carrier its enqueue stored (``jobs.trace_context``): any JSON, or ``None``."""
    meta: dict[str, Any]
    """``jobs.meta``: what the enqueue's middleware or ``Job.options(meta=)`` stored."""


async def execute(
    jobs: Callable[[str], Job[..., Any]],
    seam: Seam,
    claimed: ClaimedJob,
    context: JobContext,
    threads: Executor,
) -> Outcome:
    """Run ``claimed`` (its job found by ``jobs``, the app's lookup by name, which raises
    :class:`UnknownJobError`) inside ``seam``'s run middleware, and decide what becomes of it.

    Never raises, except ``CancelledError`` when the worker (not a user's cancel) stops the job:
    whatever the job raises, ``BaseException`` included, ends the attempt with an outcome.
    """
    try:
        job = jobs(claimed.name)
    except UnknownJobError as exc:
        log.error("job %s: %s; it will be retried in case a newer worker knows it", claimed.id, exc)
        return deploy_skew_outcome(exc, attempt=claimed.attempt, max_attempts=claimed.max_attempts)
    try:
        job.check_arguments(claimed.args, claimed.kwargs)
    except TypeError as exc:
        mismatch = ArgumentsMismatch(f"the stored arguments do not fit {exc}")
        outcome = deploy_skew_outcome(
            mismatch, attempt=claimed.attempt, max_attempts=claimed.max_attempts
        )
        return await _failed(job, claimed, mismatch, outcome, context, threads, seam)
    failed_in: Sequence[str] = ()  # without middleware (most apps), nothing to allocate
    try:
        if seam.run:
            named: list[str] = []
            failed_in = named
            returned = await _call_within(job, claimed, context, threads, seam, named)
        else:
            returned = await _call(
                job.func,
                job.is_async,
                claimed.args,
                claimed.kwargs,
                context,
                threads,
                timeout=job.timeout,
            )
        result = None if returned is None else encode_result(returned, claimed.name)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and _stopped_by_worker(context):
            raise
        return await _ended_by(job, claimed, exc, context, threads, seam, failed_in)
    if context.cancelled:
        return CANCELLED
    return COMPLETED if result is None else Outcome("completed", result=result)


async def _call_within(
    job: Job[..., Any],
    claimed: ClaimedJob,
    context: JobContext,
    threads: Executor,
    seam: Seam,
    failed_in: list[str],
) -> Any:
    """Run the job inside the app's run middleware, all within its timeout: for an ``async
    def`` job every middleware runs on the loop; for a ``def`` job the ``def`` middleware run
    in its thread around the function, inside the ``async def`` ones on the loop."""
    args, kwargs = claimed.args, claimed.kwargs
    token = set_current_job(context)
    try:
        if job.is_async:
            call = _job_call(job.func, args, kwargs)
            chain = run_chain_async(seam.run, context, call, failed_in)
            return await _within_timeout(chain, job.timeout, in_thread=False)
        loop = asyncio.get_running_loop()

        def in_thread() -> Awaitable[Any]:
            return loop.run_in_executor(
                threads, _call_in_thread, job.func, args, kwargs, context, seam.run_sync, failed_in
            )

        chain = run_chain_async(seam.run_async, context, in_thread, failed_in)
        return await _within_timeout(chain, job.timeout, in_thread=True)
    finally:
        reset_current_job(token)


def _job_call(
    func: Callable[..., Awaitable[Any]], args: list[Any], kwargs: dict[str, Any]
) -> Callable[[], Awaitable[Any]]:
    return lambda: func(*args, **kwargs)


async def _ended_by(
    job: Job[..., Any],
    claimed: ClaimedJob,
    exc: BaseException,
    context: JobContext,
    threads: Executor,
    seam: Seam,
    failed_in: Sequence[str],
) -> Outcome:
    """The outcome of an attempt that raised ``exc``: a snooze, a cancel, or a failure."""
    if isinstance(exc, Snooze) and (snoozed := snooze_outcome(exc)) is not None:
        return snoozed
    if context.cancelled:
        _uncancel()
        return CANCELLED
    outcome = failure_outcome(
        exc,
        attempt=claimed.attempt,
        max_attempts=claimed.max_attempts,
        retry=job.retry,
        discard_on=job.discard_on,
    )
    if isinstance(exc, JobTimeout) and exc.thread_running:
        outcome = dataclasses.replace(outcome, thread_overran=True)
    if failed_in and outcome.error is not None:
        outcome.error["middleware"] = failed_in[-1]
    return await _failed(job, claimed, exc, outcome, context, threads, seam)


async def _failed(
    job: Job[..., Any],
    claimed: ClaimedJob,
    exc: BaseException,
    outcome: Outcome,
    context: JobContext,
    threads: Executor,
    seam: Seam,
) -> Outcome:
    """Log a failed attempt and run the error handlers; if it is discarded, the job's
    ``on_exhausted`` hook and the death handlers. None of them changes the outcome."""
    error = outcome.error or {}
    if log.isEnabledFor(logging.DEBUG):
        log.debug("job %s: the whole traceback:\n%s", claimed.id, whole_traceback(exc))
    middleware = error.get("middleware")
    log.warning(
        "job %s %s attempt %s failed%s: %s: %s (%s)",
        claimed.id,
        claimed.name,
        claimed.attempt,
        "" if middleware is None else f" in run middleware {middleware}",
        error.get("class"),
        error.get("message"),  # as stored: str(exc) may raise
        outcome.state,
    )
    timeout = job.timeout or HANDLER_TIMEOUT
    for handler in seam.on_error:
        await _call_hook(handler, (context, exc), context, threads, timeout)
    if outcome.state == "discarded":
        hook = job.on_exhausted
        if hook is not None:
            exhausted = Hook(hook, EXHAUSTED, inspect.iscoroutinefunction(hook))
            args = (context, exc) if takes_job(hook) else (exc,)
            await _call_hook(exhausted, args, context, threads, timeout)
        for handler in seam.on_death:
            await _call_hook(handler, (context, exc), context, threads, timeout)
    return outcome


def _stopped_by_worker(context: JobContext) -> bool:
    """Whether a ``CancelledError`` means the worker is stopping the job (to hand it back), rather
    than a user's cancel or a ``CancelledError`` that the job raised of itself."""
    task = asyncio.current_task()
    return not context.cancelled and task is not None and task.cancelling() > 0


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def _call(
    func: Any,
    is_async: bool,
    args: list[Any],
    kwargs: dict[str, Any],
    context: JobContext,
    threads: Executor,
    timeout: float | None = None,
) -> Any:
    """Call ``func`` with ``context`` as the current job: on the loop if async, else in a thread;
    returns what it returns.

    Past ``timeout`` seconds an async call is cancelled; a thread cannot be, so it is left running.
    Both raise :class:`JobTimeout`.
    """
    if is_async:
        token = set_current_job(context)
        try:
            if timeout is None:
                return await func(*args, **kwargs)
            return await _within_timeout(func(*args, **kwargs), timeout, in_thread=False)
        finally:
            reset_current_job(token)
    future = asyncio.get_running_loop().run_in_executor(
        threads, _call_in_thread, func, args, kwargs, context
    )
    if timeout is None:  # most jobs: no coroutine more to make
        return await future
    return await _within_timeout(future, timeout, in_thread=True)  # cancelling leaves the thread


async def _within_timeout(call: Awaitable[Any], timeout: float | None, *, in_thread: bool) -> Any:
    """Await ``call``; past ``timeout`` seconds, cancel it and raise :class:`JobTimeout`. A
    ``TimeoutError`` of the job's own passes through as itself. Without a timeout (most jobs) the
    hot path skips the timeout scope."""
    if timeout is None:
        return await call
    try:
        async with asyncio.timeout(timeout) as deadline:
            return await call
    except TimeoutError:
        if not deadline.expired():
            raise
        if in_thread:
            raise JobTimeout(
                f"still running after its {timeout:g} s timeout; its thread cannot be stopped",
                thread_running=True,
            ) from None
        raise JobTimeout(f"cancelled after its {timeout:g} s timeout") from None


def _call_in_thread(
    func: Any,
    args: list[Any],
    kwargs: dict[str, Any],
    context: JobContext,
    around: tuple[Hook, ...] = (),
    failed_in: list[str] | None = None,
) -> Any:
    token = set_current_job(context)
    try:
        if around:
            return run_chain(
                around,
                context,
                lambda: func(*args, **kwargs),
                [] if failed_in is None else failed_in,
            )
        return func(*args, **kwargs)
    finally:
        reset_current_job(token)


async def _call_hook(
    hook: Hook,
    args: tuple[Any, ...],
    context: JobContext,
    threads: Executor,
    timeout: float,
) -> None:
    """Run a handler or ``on_exhausted`` hook like the job itself, within ``timeout`` seconds;
    its failure (a hang past it too) is logged with its name, never raised."""
    try:
        await _call(hook.func, hook.is_async, list(args), {}, context, threads, timeout=timeout)
    except BaseException as failure:
        if isinstance(failure, asyncio.CancelledError) and _stopped_by_worker(context):
            raise
        _uncancel()
        error = error_record(failure, context.attempt)
        log.error(
            "job %s: %s failed: %s: %s\n%s",
            context.id,
            hook.name if hook.name == EXHAUSTED else f"handler {hook.name}",
            error["class"],
            error["message"],
            error["traceback"],
        )
