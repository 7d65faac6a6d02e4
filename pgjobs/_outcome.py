"""What happens to a job after an attempt: a pure decision, turned into SQL elsewhere."""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

RetryPolicy = Callable[[int, BaseException], "float | timedelta | None"]
"""``(attempt, exception) -> delay`` before the next attempt (seconds or timedelta), or ``None``
to discard the job at once."""

MAX_ERROR_MESSAGE = 2_000
"""Characters of an exception message kept per failed attempt."""

MAX_ERROR_TRACEBACK = 16_000
"""Characters of a traceback kept per failed attempt (the end, where the error is)."""


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
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not seconds >= 0:
            raise ValueError("Snooze: delay must be zero or more seconds")
        self.delay = seconds
        super().__init__(f"snoozed for {seconds:g} s")


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt: the job's next state, and for a retry or snooze the delay.

    ``scheduled`` is a snooze. ``thread_overran`` marks a sync job whose thread still runs after
    its timeout: the worker must retire, since it cannot stop that thread.
    """

    state: Literal["completed", "retryable", "discarded", "cancelled", "scheduled"]
    delay: float = 0.0
    error: dict[str, Any] | None = None
    thread_overran: bool = False


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
    """Decide between retry and discard after ``exception`` ended attempt number ``attempt``."""
    error = error_record(exception, attempt)
    if attempt >= max_attempts or isinstance(exception, discard_on):
        return Outcome("discarded", error=error)
    delay = retry(attempt, exception)
    if delay is None:
        return Outcome("discarded", error=error)
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    return Outcome("retryable", delay=max(0.0, seconds), error=error)


def error_record(exception: BaseException, attempt: int) -> dict[str, Any]:
    """The stored form of a failed attempt: class, message and traceback, made safe for jsonb."""
    kind = type(exception)
    trace = "".join(traceback.format_exception(exception))
    return {
        "attempt": attempt,
        "class": f"{kind.__module__}.{kind.__qualname__}",
        "message": _clean(str(exception))[:MAX_ERROR_MESSAGE],
        "traceback": _clean(trace)[-MAX_ERROR_TRACEBACK:],
    }


def _clean(text: str) -> str:
    """Remove what jsonb cannot hold: NUL characters and lone surrogates."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
