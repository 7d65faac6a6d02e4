"""Queue settings: pausing, concurrency limits and rate limits, in pure code.

The settings live in the ``queues`` table (docs/schema.md); this module checks them, parses the
CLI's rate text, derives a run's partition key from its arguments, builds the admin operations
and reads a worker's view of its queues. The limits themselves are enforced in the database, by
``claim_limited_jobs_v2()``, for every worker on every host at once.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ._admin import Operation, Rows, records_of
from ._errors import ValidationError
from ._records import QueueRecord
from ._settings import QUEUE_NAME
from ._sql import Queries

PARTITIONS = ("job", "key", "job,key")
"""How a limit may be partitioned: per job name, per partition key, or per both."""

MAX_PARTITION_KEY = 255
"""Characters a partition key may have."""

MAX_LIMIT = 2**31 - 1
"""The largest concurrency or rate a column can hold."""

MIN_RATE_PERIOD = 0.001
"""The shortest period of a rate, in seconds (1 ms)."""

MAX_RATE_PERIOD = 31 * 86400.0
"""The longest period of a rate, in seconds (31 days): a window that a claim can always count
(an endless one would make its interval arithmetic fail)."""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([smhd]?)\s*")

Rate = tuple[int, "timedelta | float"]
"""``(starts, period)``: at most ``starts`` job starts in any ``period`` (a timedelta or
seconds)."""


@dataclass(frozen=True)
class QueueLimits:
    """A queue's limits as stored: ``None`` is no limit (no partition: the whole queue)."""

    concurrency: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None
    partition: str | None = None

    @property
    def limited(self) -> bool:
        return self.concurrency is not None or self.rate_limit is not None


def limits_params(name: str, limits: QueueLimits) -> dict[str, Any]:
    """SET_QUEUE_LIMITS' parameters: queue ``name`` gets ``limits``."""
    return {
        "name": name,
        "concurrency": limits.concurrency,
        "rate_limit": limits.rate_limit,
        "rate_period": limits.rate_period,
        "partition": limits.partition,
    }


def check_limits(
    concurrency: int | None, rate: Rate | str | None, partition_by: str | None
) -> QueueLimits:
    """The limits to store; :class:`ValidationError` naming what to fix unless each is valid:
    a concurrency and a rate's starts from 1 to :data:`MAX_LIMIT`, a rate's period from
    :data:`MIN_RATE_PERIOD` to :data:`MAX_RATE_PERIOD`, and a known partition. The ``queues``
    table checks the same ranges, for plain SQL too."""
    if concurrency is not None and (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_LIMIT
    ):
        raise ValidationError("concurrency", f"must be a whole number from 1 to {MAX_LIMIT}")
    starts, period = (None, None) if rate is None else _rate(rate)
    if partition_by is not None and partition_by not in PARTITIONS:
        raise ValidationError(
            "partition_by", f"{partition_by!r} is not one of {', '.join(PARTITIONS)} (or None)"
        )
    return QueueLimits(concurrency, starts, period, partition_by)


def parse_rate(text: str) -> tuple[int, float]:
    """``"100/1m"`` (also ``100/m``, ``10/2s``, ``5/1.5h``, ``20/30`` for seconds) as
    ``(starts, seconds)``."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValidationError("rate", f"{text!r} is not STARTS/PERIOD, e.g. 100/1m, 10/2s, 5/h")
    starts, amount, unit = match.groups()
    if not amount and not unit:
        raise ValidationError("rate", f"{text!r} has no period, e.g. 100/1m")
    return _rate((int(starts), float(amount or 1) * _UNITS[unit or "s"]))


def _rate(rate: Rate | str) -> tuple[int, float]:
    if isinstance(rate, str):
        return parse_rate(rate)
    try:
        starts, period = rate
    except (TypeError, ValueError):
        raise ValidationError(
            "rate", "must be (starts, period), e.g. (100, timedelta(minutes=1))"
        ) from None
    seconds = period.total_seconds() if isinstance(period, timedelta) else period
    if isinstance(starts, bool) or not isinstance(starts, int) or not 1 <= starts <= MAX_LIMIT:
        raise ValidationError("rate", f"starts must be a whole number from 1 to {MAX_LIMIT}")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not MIN_RATE_PERIOD <= seconds <= MAX_RATE_PERIOD  # NaN fails too
    ):
        raise ValidationError(
            "rate",
            f"the period must be from 1 ms to 31 days ({MIN_RATE_PERIOD:g} to "
            f"{MAX_RATE_PERIOD:.0f} seconds, or a timedelta), not {period!r}",
        )
    return starts, float(seconds)


def check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise ValidationError("queue", f"{name!r} is not a queue name (letters, digits, _.-)")
    return name


def check_partition_key(key: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_PARTITION_KEY:
        raise ValidationError(
            "partition_key", f"must be a string of 1 to {MAX_PARTITION_KEY} characters"
        )
    return key


def partition_key_of(
    signature: inspect.Signature, parameter: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> str | None:
    """The partition key of a run: its ``parameter``'s argument (a string as it is, anything
    else as JSON text), ``None`` if that argument is ``None``."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    value = bound.arguments.get(parameter)
    if value is None:
        return None
    key = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return check_partition_key(key)


@dataclass(frozen=True)
class QueueView:
    """What a worker knows of its queues: which are limited (claimed by CLAIM_LIMITED_JOBS), and
    which of those have a rate (their starts are confirmed: CONFIRM_STARTS)."""

    limited: tuple[str, ...] = ()
    rated: frozenset[str] = frozenset()

    @classmethod
    def from_rows(cls, order: Iterable[str], rows: Iterable[Sequence[Any]]) -> QueueView:
        """From QUEUE_SETTINGS rows; ``order`` is the worker's queues. Paused queues are
        skipped by both claims, so they count as neither."""
        active = [r for r in rows if not r[1]]
        limited = {r[0] for r in active if r[2] is not None or r[3] is not None}
        rated = frozenset(r[0] for r in active if r[3] is not None)
        return cls(tuple(q for q in order if q in limited), rated)


def split_limited_claim(
    rows: Iterable[Sequence[Any]],
) -> tuple[list[Sequence[Any]], float | None]:
    """CLAIM_LIMITED_JOBS rows as the claimed jobs (CLAIM_JOBS' columns) and the seconds until
    the first rate-limited partition may start a job again (``None``: no rate holds a job)."""
    jobs: list[Sequence[Any]] = []
    waits: list[float] = []
    for row in rows:
        if row[0] is not None:
            jobs.append(row[:-1])
        elif row[-1] is not None:
            waits.append(max(float(row[-1]), 0.0))
    return jobs, min(waits, default=None)


def pause(queries: Queries, name: str) -> Operation[None]:
    return Operation(queries.pause_queue, {"name": check_queue_name(name)}, _nothing)


def resume(queries: Queries, name: str) -> Operation[None]:
    return Operation(queries.resume_queue, {"name": check_queue_name(name)}, _nothing)


def set_limits(queries: Queries, name: str, limits: QueueLimits) -> Operation[None]:
    params = limits_params(check_queue_name(name), limits)
    return Operation(queries.set_queue_limits, params, _nothing)


def list_queues(queries: Queries) -> Operation[list[QueueRecord]]:
    return Operation(queries.list_queues, {}, records_of(QueueRecord))


def describe_rate(limit: int | None, period: float | None) -> str:
    """``100/60s`` for display; ``-`` when there is no rate."""
    if limit is None or period is None:
        return "-"
    return f"{limit}/{period:g}s"


def _nothing(rows: Rows) -> None:
    return None
