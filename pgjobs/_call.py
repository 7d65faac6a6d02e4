"""What one enqueue carries: :class:`EnqueueOptions` (per-call options), :class:`Unique` (a
job's uniqueness) and :class:`JobCall` (one run to enqueue, with the job's values resolved).

A call carries values, not the job: every module that encodes, plans or observes an enqueue
reads it without importing the job definitions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from ._admin import STATES
from ._errors import ConfigError, ValidationError
from ._outcome import MAX_DELAY
from ._queues import check_partition_key
from ._settings import QUEUE_NAME
from ._validation import MAX_ATTEMPTS, check_text

PRIORITY_RANGE = range(-32768, 32768)

DEFAULT_STATES = ("scheduled", "available", "running", "retryable")
"""The states in which a unique job holds its key: until it ends, and no state a job moves into
before its end can meet another holder. Jobs may add finished states, never drop these."""

MIN_PERIOD = 0.001
"""Shortest period, in seconds: its number since the epoch must fit a ``bigint``."""


@dataclass(frozen=True)
class Unique:
    """At most one job of this name and key exists while in ``states``.

    Args:
        by: parameter names whose values make the key; ``None`` means all the arguments (with
            defaults applied, so ``f(1)`` and ``f(x=1)`` share a key).
        states: the states in which a job holds its key: always scheduled, available, running
            and retryable (the default), so a job holds its key from its enqueue to its end, and
            optionally also completed, discarded or cancelled, to hold it after its end. A job
            that leaves them (say, completes) frees the key for the next enqueue.
        period: with it, the key holds only within one period (a ``timedelta`` or seconds) of the
            database clock, counted from the Unix epoch: unique "for" that long.
        replace: a duplicate enqueue replaces the waiting holder's arguments, priority and run
            time (a debounce) instead of keeping it; a running or retryable holder is kept.
    """

    by: tuple[str, ...] | None = None
    states: tuple[str, ...] = DEFAULT_STATES
    period: timedelta | float | None = None
    replace: bool = False

    @property
    def seconds(self) -> float | None:
        """The period in seconds, ``None`` without one."""
        if isinstance(self.period, timedelta):
            return self.period.total_seconds()
        return self.period

    def _checked(self, job_name: str, signature: inspect.Signature) -> Unique:
        """Raise :class:`ConfigError` (naming the job and what to fix) unless this fits the job."""
        if not self.states:
            raise ConfigError(f"{job_name}: Unique(states=...) needs at least one state")
        for state in self.states:
            if state not in STATES:
                raise ConfigError(
                    f"{job_name}: Unique(states=...): {state!r} is not a state "
                    f"({', '.join(STATES)})"
                )
        missing = [state for state in DEFAULT_STATES if state not in self.states]
        if missing:
            raise ConfigError(
                f"{job_name}: Unique(states=...) must include {', '.join(DEFAULT_STATES)}: a job "
                f"holds its key until it ends (add completed, discarded or cancelled to hold it "
                f"longer); {', '.join(missing)} missing"
            )
        if self.by is not None:
            if isinstance(self.by, str):
                raise ConfigError(f"{job_name}: Unique(by=...) is a tuple of names, e.g. ('x',)")
            for name in self.by:
                if name not in signature.parameters:
                    raise ConfigError(
                        f"{job_name}: Unique(by=...): {name!r} is not a parameter of the function"
                        f" ({', '.join(signature.parameters) or 'it has none'})"
                    )
        seconds = self.seconds
        if seconds is not None and not seconds >= MIN_PERIOD:
            raise ConfigError(
                f"{job_name}: Unique(period=...) must be a positive duration of at least"
                f" {MIN_PERIOD} s"
            )
        return self


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-call options; ``None`` means "the job's default"."""

    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    at: datetime | None = None
    delay: float | None = None
    unique_key: str | None = None
    """The canonical JSON of the unique key value given by the caller."""
    partition_key: str | None = None
    meta: str | None = None
    """The JSON text of the meta given by the caller (``None``: none)."""

    def checked(self) -> EnqueueOptions:
        if self.queue is not None and not QUEUE_NAME.fullmatch(self.queue):
            raise ValidationError(
                "queue", f"{self.queue!r} is not a queue name (letters, digits, _.-)"
            )
        if self.priority is not None and self.priority not in PRIORITY_RANGE:
            raise ValidationError("priority", "must be an integer from -32768 to 32767")
        if self.max_attempts is not None and not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValidationError("max_attempts", f"must be from 1 to {MAX_ATTEMPTS}")
        if self.at is not None and self.at.utcoffset() is None:
            raise ValidationError(
                "at", "naive datetime; pass an aware one, e.g. datetime.now(timezone.utc)"
            )
        if self.delay is not None and not 0 <= self.delay <= MAX_DELAY:
            raise ValidationError("delay", f"must be from 0 to {MAX_DELAY:g} seconds (100 years)")
        if self.at is not None and self.delay is not None:
            raise ValidationError("at", "give either at= or a delay, not both")
        if self.partition_key is not None:
            check_text(check_partition_key(self.partition_key), "partition_key")
        return self


class JobCall(NamedTuple):
    """One job to enqueue: the job's name and its queue, priority and attempts as this call
    resolves them (its options over the job's defaults), its validated JSON arguments, and the
    rest of its per-call options.

    Build with :meth:`Job.call`; pass to :meth:`App.enqueue_many`. (A named tuple: a bulk enqueue
    makes one per job, and a frozen dataclass costs several times more to build.)
    """

    name: str
    queue: str
    priority: int
    max_attempts: int
    args_json: str
    kwargs_json: str
    options: EnqueueOptions
    """The call's options: its start time (``at``, ``delay``) and ``partition_key`` are read
    from here."""
    unique_key: str | None = None
    """``jobs.unique_key`` (before a period's bucket), for a unique job."""
    meta: str | None = None
    """``jobs.meta`` as JSON text; ``None`` stores ``{}``."""
    unique: Unique | None = None
    """The job's uniqueness, for a unique job."""
    func: Callable[..., Any] | None = None
    """The job's function: a batch's callback must be the one its app registered."""
