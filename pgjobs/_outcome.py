"""What happens to a job after an attempt: a pure decision, turned into SQL elsewhere."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

RetryPolicy = Callable[[int, BaseException], "float | timedelta | None"]
"""``(attempt, exception) -> delay`` before the next attempt (seconds or timedelta), or ``None``
to discard the job at once."""

MAX_DELAY = 100 * 365.25 * 86400
"""The longest delay pgjobs stores, in seconds (100 years): an enqueue's, a retry's, a snooze's."""

DEPLOY_SKEW_DELAYS = (60.0, 300.0, 900.0)
"""Seconds before attempts 2, 3 and 4 of a job this worker cannot run as stored (a name it does not
know, arguments that do not fit the function): time for a rolling deploy to finish, then discard."""

MAX_ERROR_MESSAGE = 2_000
"""Characters of an exception message kept per failed attempt."""

MAX_ERROR_TRACEBACK = 16_000
"""Characters of a traceback kept per failed attempt (the end, where the error is)."""

RUNNER_DIRECTORIES = tuple(
    f"{directory}/"
    for directory in (
        Path(__file__).parent,
        Path(asyncio.__file__).parent,
        Path(concurrent.futures.__file__).parent.parent,
    )
)
"""Where the frames that call a job live (pgjobs, asyncio, the thread pool): a stored traceback
starts after the leading ones."""


def sidekiq_backoff(attempt: int, exception: BaseException) -> float:
    """Sidekiq's schedule: ``attempt**4 + 15 + random(0, 10 * attempt)`` seconds.

    Over the default 25 attempts the retries spread across about three weeks.
    """
    return float(attempt**4 + 15 + random.randint(0, 10 * attempt))


class Snooze(Exception):
    """Raise from a job to run it again after ``delay``, without counting this attempt.

    For "not yet" rather than "failed": a rate limit, a resource that is not ready. The job goes
    back to ``scheduled``; its attempt number is given back, so snoozing never exhausts it.
    """

    def __init__(self, delay: float | timedelta) -> None:
        seconds = _seconds(delay)
        if not _is_delay(seconds):
            raise ValueError(
                f"Snooze: delay must be from 0 to {MAX_DELAY:g} s (100 years), not {seconds!r}"
            )
        self.delay = seconds
        super().__init__(f"snoozed for {seconds:g} s")


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt: the job's next state, and for a retry or snooze the delay.

    ``scheduled`` is a snooze. ``thread_overran`` marks a sync job whose thread still runs after
    its timeout: the worker must retire, since it cannot stop that thread. ``result`` is what a
    completed job returned, as JSON text (``None`` when it returned ``None``).
    """

    state: Literal["completed", "retryable", "discarded", "cancelled", "scheduled"]
    delay: float = 0.0
    error: dict[str, Any] | None = None
    thread_overran: bool = False
    result: str | None = None


COMPLETED = Outcome("completed")
CANCELLED = Outcome("cancelled")


def failure_outcome(
    exception: BaseException,
    *,
    attempt: int,
    max_attempts: int,
    retry: RetryPolicy,
    discard_on: tuple[type[BaseException], ...],
) -> Outcome:
    """Decide between retry and discard after ``exception`` ended attempt number ``attempt``.

    A policy that raises, or returns something other than ``None`` or a delay of at most
    :data:`MAX_DELAY`, must not strand the job: it is retried on :func:`sidekiq_backoff` instead,
    and its error message says what the policy did.
    """
    error = error_record(exception, attempt)
    if attempt >= max_attempts or isinstance(exception, discard_on):
        return Outcome("discarded", error=error)
    delay, problem = _policy_delay(retry, attempt, exception)
    if problem is not None:
        note = f" [retry policy {problem}; retried on the default backoff]"
        error["message"] = error["message"][: MAX_ERROR_MESSAGE - len(note)] + note
    if delay is None:
        return Outcome("discarded", error=error)
    return Outcome("retryable", delay=delay, error=error)


def deploy_skew_outcome(exception: BaseException, *, attempt: int, max_attempts: int) -> Outcome:
    """Retry or discard a job this worker cannot run as stored (an :class:`UnknownJobError`, an
    :class:`ArgumentsMismatch`): after :data:`DEPLOY_SKEW_DELAYS`, then discarded, whatever the
    job's own policy, since a worker of another version may still be starting."""
    return failure_outcome(
        exception,
        attempt=attempt,
        max_attempts=min(max_attempts, len(DEPLOY_SKEW_DELAYS) + 1),
        retry=_deploy_skew_backoff,
        discard_on=(),
    )


def _deploy_skew_backoff(attempt: int, exception: BaseException) -> float:
    return DEPLOY_SKEW_DELAYS[attempt - 1]


def snooze_outcome(snooze: Snooze) -> Outcome | None:
    """The outcome of a :class:`Snooze`, or ``None`` if it carries no delay (a subclass that
    skipped ``Snooze.__init__`` or changed ``delay``)."""
    delay = getattr(snooze, "delay", None)
    if isinstance(delay, float) and _is_delay(delay):
        return Outcome("scheduled", delay=delay)
    return None


def _policy_delay(
    retry: RetryPolicy, attempt: int, exception: BaseException
) -> tuple[float | None, str | None]:
    """``retry``'s delay in seconds (``None``: discard), or the default backoff's and what went
    wrong with the policy."""
    try:
        delay = retry(attempt, exception)
    except BaseException as failure:  # the policy is user code: it must not strand the job
        return sidekiq_backoff(attempt, exception), f"raised {_summary(failure)[:500]}"
    if delay is None:
        return None, None
    try:
        seconds = _seconds(delay)
    except BaseException:  # not a number: a str, or an object whose __float__ raises
        problem = f"returned a {type(delay).__qualname__}, not seconds or a timedelta"
    else:
        if -math.inf < seconds <= MAX_DELAY:
            return max(0.0, seconds), None  # a delay in the past means now
        problem = f"returned {seconds!r} s, not a delay of at most 100 years"
    return sidekiq_backoff(attempt, exception), problem


def _seconds(delay: float | timedelta) -> float:
    try:
        return delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    except OverflowError:  # an int past float's range
        return math.inf


def _is_delay(seconds: float) -> bool:
    return 0 <= seconds <= MAX_DELAY  # false for NaN too


def error_record(exception: BaseException, attempt: int) -> dict[str, Any]:
    """The stored form of a failed attempt: class, message and traceback, made safe for jsonb.

    Never raises: text that the exception cannot give (a ``__str__`` that raises, a traceback
    that fails to format) is replaced by a note saying so.
    """
    kind = type(exception)
    trace = _formed(lambda: "".join(_from_the_job(exception).format()), "traceback", kind)
    return {
        "attempt": attempt,
        "class": _formed(lambda: f"{kind.__module__}.{kind.__qualname__}", "class name", kind),
        "message": _message(exception)[:MAX_ERROR_MESSAGE],
        "traceback": trace[-MAX_ERROR_TRACEBACK:],
    }


def whole_traceback(exception: BaseException) -> str:
    """The traceback with every frame, pgjobs' own included, for debug logs; never raises."""
    return _formed(lambda: "".join(traceback.format_exception(exception)), "traceback", Exception)


def _from_the_job(exception: BaseException) -> traceback.TracebackException:
    """``exception``'s traceback without the leading frames of the code that called the job
    (kept whole when every frame is such: the error came before the job's code ran)."""
    formed = traceback.TracebackException.from_exception(exception)
    frames = list(formed.stack)
    first = next(
        (i for i, frame in enumerate(frames) if not frame.filename.startswith(RUNNER_DIRECTORIES)),
        0,
    )
    formed.stack = traceback.StackSummary.from_list(frames[first:])
    return formed


def _message(exception: BaseException) -> str:
    return _formed(lambda: str(exception), "message", type(exception))


def _summary(exception: BaseException) -> str:
    """``Class: message``, for a log line or a note; never raises."""
    return f"{type(exception).__qualname__}: {_message(exception)}"


def _formed(make: Callable[[], str], what: str, kind: type[BaseException]) -> str:
    """``make()`` made safe for jsonb, or a note if the exception's own code raised."""
    try:
        return _clean(make())
    except BaseException as failure:  # a hostile __str__ or __module__ must not lose the outcome
        return (
            f"<the {what} of this {kind.__qualname__} could not be formed: "
            f"it raised {type(failure).__qualname__}>"
        )


def _clean(text: str) -> str:
    """Remove what jsonb cannot hold: NUL characters and lone surrogates."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
