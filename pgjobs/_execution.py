"""Running one claimed job to an :class:`~pgjobs._outcome.Outcome`.

Sync functions run in the worker's thread pool, ``async def`` ones on its event loop. Whatever
the job raises is caught here and turned into a retry or a discard; nothing escapes to the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import uuid
from collections.abc import Awaitable
from concurrent.futures import Executor
from typing import Any, NamedTuple

from ._app import App
from ._context import JobContext, reset_current_job, set_current_job
from ._errors import JobTimeout, UnknownJobError
from ._outcome import CANCELLED, COMPLETED, Outcome, Snooze, failure_outcome, sidekiq_backoff

log = logging.getLogger("pgjobs.worker")


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


async def execute(app: App, claimed: ClaimedJob, context: JobContext, threads: Executor) -> Outcome:
    """Run ``claimed`` and decide what becomes of it.

    Never raises, except ``CancelledError`` when the worker (not a user's cancel) stops the job.
    """
    try:
        job = app.get(claimed.name)
    except UnknownJobError as exc:
        log.error("job %s: %s; it will be retried in case a newer worker knows it", claimed.id, exc)
        return failure_outcome(
            exc,
            attempt=claimed.attempt,
            max_attempts=claimed.max_attempts,
            retry=sidekiq_backoff,
            discard_on=(),
        )
    try:
        await _call(
            job.func,
            job.is_async,
            claimed.args,
            claimed.kwargs,
            context,
            threads,
            timeout=job.timeout,
        )
    except asyncio.CancelledError:
        if not context.cancelled:
            raise
        _uncancel()
        return CANCELLED
    except Snooze as snooze:
        return Outcome("scheduled", delay=snooze.delay)
    except Exception as exc:
        if context.cancelled:
            return CANCELLED
        thread_overran = isinstance(exc, JobTimeout) and exc.thread_running
        outcome = failure_outcome(
            exc,
            attempt=claimed.attempt,
            max_attempts=claimed.max_attempts,
            retry=job.retry,
            discard_on=job.discard_on,
        )
        log.warning(
            "job %s %s attempt %s failed: %s: %s (%s)",
            claimed.id,
            claimed.name,
            claimed.attempt,
            type(exc).__name__,
            exc,
            outcome.state,
        )
        if outcome.state == "discarded" and job.on_exhausted is not None:
            await _call_hook(job.on_exhausted, exc, context, threads)
        return dataclasses.replace(outcome, thread_overran=thread_overran)
    return CANCELLED if context.cancelled else COMPLETED


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
) -> None:
    """Call ``func`` with ``context`` as the current job: on the loop if async, else in a thread.

    Past ``timeout`` seconds an async call is cancelled; a thread cannot be, so it is left running.
    Both raise :class:`JobTimeout`.
    """
    if is_async:
        token = set_current_job(context)
        try:
            await _within_timeout(func(*args, **kwargs), timeout, in_thread=False)
        finally:
            reset_current_job(token)
        return
    future = asyncio.get_running_loop().run_in_executor(
        threads, _call_in_thread, func, args, kwargs, context
    )
    await _within_timeout(future, timeout, in_thread=True)  # cancelling it leaves the thread


async def _within_timeout(call: Awaitable[Any], timeout: float | None, *, in_thread: bool) -> None:
    """Await ``call``; past ``timeout`` seconds, cancel it and raise :class:`JobTimeout`. A
    ``TimeoutError`` of the job's own passes through as itself. Without a timeout (most jobs) the
    hot path skips the timeout scope."""
    if timeout is None:
        await call
        return
    try:
        async with asyncio.timeout(timeout) as deadline:
            await call
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
    func: Any, args: list[Any], kwargs: dict[str, Any], context: JobContext
) -> None:
    token = set_current_job(context)
    try:
        func(*args, **kwargs)
    finally:
        reset_current_job(token)


async def _call_hook(hook: Any, exc: BaseException, context: JobContext, threads: Executor) -> None:
    """Run an ``on_exhausted`` hook like the job itself; its failure is logged, never raised."""
    try:
        await _call(hook, inspect.iscoroutinefunction(hook), [exc], {}, context, threads)
    except Exception:
        log.exception("job %s: on_exhausted hook failed", context.id)
