"""Cron entries in pure code: declaring one (checked at import time), and the ticks of its
schedule, with no I/O.

Expressions are parsed by croniter (the ``pgjobs[cron]`` extra): five fields (minute hour day
month weekday), six with a seconds field first, or a nickname (``@hourly``, ``@daily``...). Ticks
are computed in the entry's time zone:

- A tick in the hour skipped by a spring-forward change runs once, at the first instant after the
  gap (a daily 02:30 in Europe/Berlin runs at 03:00 that day).
- In the hour repeated by an autumn change, a fixed-time entry (its minute and hour fields are
  not wildcards, as in ``30 2 * * *`` or ``@daily``) runs once, at the first of the two wall-clock
  times; an entry with a wildcard minute or hour (``0 * * * *``, ``*/30 * * * *``) follows real
  time and runs in both. This is the rule of Debian's cron.

:func:`due` decides which ticks to enqueue after the last one handled; the scheduler
(:mod:`pgjobs._scheduler`) runs it and the table keeps each tick to one job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._admin import Operation, Rows
from ._errors import ConfigError, ValidationError
from ._records import CronRecord, from_row
from ._sql import Queries
from ._validation import encode_arguments

if TYPE_CHECKING:
    from croniter import croniter as Croniter

    from ._job import Job

CatchUp: TypeAlias = Literal["latest", "none"] | timedelta
"""What to do with ticks missed while no worker ran (more than :data:`GRACE` late): ``"latest"``
enqueues the newest of them once, ``"none"`` none, a ``timedelta`` every one within it."""

GRACE = timedelta(seconds=60)
"""A tick at most this late is enqueued whatever the catch-up rule: it was delayed (a busy
worker), not missed while none ran."""

MAX_CATCH_UP = 1000
"""At most this many ticks (the newest) are enqueued at once under a catch-up window."""

FIELDS = {
    5: ("minute", "hour", "day", "month", "weekday"),
    6: ("second", "minute", "hour", "day", "month", "weekday"),
}
RANGES = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day": "1-31",
    "month": "1-12 or jan-dec",
    "weekday": "0-7 or sun-sat",
}
NICKNAMES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

ROW_COLUMNS = (
    "name",
    "job_name",
    "queue",
    "priority",
    "max_attempts",
    "args",
    "kwargs",
    "tick_kwarg",
    "expression",
    "timezone",
    "catch_up",
    "catch_up_window",
)
"""The definition columns of ``cron_entries``: what a worker's declaration writes."""

ENTRY_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


@dataclass(frozen=True)
class Schedule:
    """A parsed cron expression in a time zone. ``fixed_time``: its minute and hour fields are not
    wildcards, so it runs once in an hour repeated by a DST change."""

    expression: str
    zone: ZoneInfo
    fixed_time: bool

    def ticks_after(self, moment: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``moment``, in order, in UTC."""
        return self._ticks(moment, forward=True)

    def ticks_until(self, moment: datetime) -> Iterator[datetime]:
        """The ticks at or before ``moment``, newest first."""
        start = moment.replace(microsecond=0) + timedelta(seconds=1)
        return (tick for tick in self._ticks(start, forward=False) if tick <= moment)

    def _ticks(self, start: datetime, *, forward: bool) -> Iterator[datetime]:
        croniter = _croniter()
        six = len(self.expression.split()) == 6
        it = croniter(self.expression, start.astimezone(self.zone), second_at_beginning=six)
        step = it.get_next if forward else it.get_prev
        previous = None
        while True:
            local = step(datetime)
            if self.fixed_time and _second_of_repeated(local):
                continue
            # in UTC: aware datetimes that share a zone compare by wall-clock time, fold ignored
            tick = local.astimezone(UTC)
            if tick == previous:  # two wall-clock times mapped onto one instant by a DST gap
                continue
            previous = tick
            yield tick


@dataclass(frozen=True)
class CronEntry:
    """A periodic job declared in code: the job enqueued with ``args``/``kwargs`` at each tick of
    ``schedule``. ``tick_kwarg`` names a keyword parameter that receives the tick (ISO 8601)."""

    name: str
    job: Job[..., Any]
    schedule: Schedule
    timezone: str
    args_json: str
    kwargs_json: str
    catch_up: CatchUp
    tick_kwarg: str | None
    queue: str
    priority: int
    max_attempts: int

    def row(self) -> dict[str, Any]:
        """The definition columns of its ``cron_entries`` row."""
        window = self.catch_up if isinstance(self.catch_up, timedelta) else None
        return {
            "name": self.name,
            "job_name": self.job.name,
            "queue": self.queue,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "args": self.args_json,
            "kwargs": self.kwargs_json,
            "tick_kwarg": self.tick_kwarg,
            "expression": self.schedule.expression,
            "timezone": self.timezone,
            "catch_up": "window" if window is not None else self.catch_up,
            "catch_up_window": window,
        }


@dataclass(frozen=True)
class Due:
    """Ticks to enqueue now (oldest first), and the tick up to which the entry is then handled
    (``through``: the newest tick so far, enqueued or not)."""

    ticks: tuple[datetime, ...]
    through: datetime


def declare(
    job: Job[..., Any],
    *,
    cron: str,
    tz: str,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    catch_up: CatchUp = "latest",
    tick_kwarg: str | None = None,
) -> CronEntry:
    """Check an entry as declared in code; :class:`ConfigError` naming the entry and what to fix."""
    entry = name if name is not None else job.name
    if not isinstance(entry, str) or not ENTRY_NAME.fullmatch(entry):
        raise ConfigError(f"cron entry {entry!r}: a name is 1-200 letters, digits or _.:-")
    schedule = parse(entry, cron, tz)
    if isinstance(catch_up, timedelta):
        if catch_up <= timedelta(0):
            raise ConfigError(f"cron entry {entry!r}: catch_up window must be positive")
    elif catch_up not in ("latest", "none"):
        raise ConfigError(
            f"cron entry {entry!r}: catch_up {catch_up!r} must be 'latest', 'none' or a timedelta"
        )
    kwargs = kwargs or {}
    if tick_kwarg is not None and tick_kwarg in kwargs:
        raise ConfigError(f"cron entry {entry!r}: tick_kwarg {tick_kwarg!r} is also in kwargs")
    checked = {**kwargs, tick_kwarg: "tick"} if tick_kwarg is not None else dict(kwargs)
    try:
        job.check_arguments(tuple(args), checked)
        args_json, kwargs_json = encode_arguments(tuple(args), dict(kwargs))
    except (TypeError, ValidationError) as exc:
        raise ConfigError(f"cron entry {entry!r}: {exc}") from None
    return CronEntry(
        name=entry,
        job=job,
        schedule=schedule,
        timezone=tz,
        args_json=args_json,
        kwargs_json=kwargs_json,
        catch_up=catch_up,
        tick_kwarg=tick_kwarg,
        queue=job.queue,
        priority=job.priority,
        max_attempts=job.max_attempts,
    )


def parse(entry: str, expression: str, tz: str) -> Schedule:
    """``expression`` in zone ``tz``; :class:`ConfigError` naming the entry and the bad field."""
    croniter = _croniter()
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # OSError: a name too long
        shown = repr(tz) if not isinstance(tz, str) or len(tz) <= 60 else f"{tz[:40]!r}…"
        raise ConfigError(
            f"cron entry {entry!r}: unknown time zone {shown}; use an IANA name such as "
            "'Europe/Berlin' or 'UTC'"
        ) from None
    if not isinstance(expression, str):
        raise ConfigError(f"cron entry {entry!r}: the expression must be a string")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in NICKNAMES:
            raise ConfigError(
                f"cron entry {entry!r}: unknown nickname {text!r} (known: {', '.join(NICKNAMES)})"
            )
        text = text.lower()
        fixed_time = text != "@hourly"
    else:
        names = FIELDS.get(len(text.split()))
        if names is None:
            raise ConfigError(
                f"cron entry {entry!r}: {expression!r} has {len(text.split())} fields; expected 5"
                " (minute hour day month weekday) or 6 (second minute hour day month weekday)"
            )
        values = text.split()
        for position, (field_name, value) in enumerate(zip(names, values, strict=True)):
            probe = ["*"] * len(names)
            probe[position] = value
            if not croniter.is_valid(" ".join(probe), second_at_beginning=len(names) == 6):
                raise ConfigError(
                    f"cron entry {entry!r}: {field_name} field {value!r} is not valid: expected "
                    f"values {RANGES[field_name]} as a number, list, range or step (*/5)"
                )
        minute, hour = values[names.index("minute")], values[names.index("hour")]
        fixed_time = not minute.startswith("*") and not hour.startswith("*")
    schedule = Schedule(text, zone, fixed_time)
    try:
        next(schedule.ticks_after(datetime(2000, 1, 1, tzinfo=zone)))
    except (ValueError, StopIteration):  # croniter's error when no date ever matches
        raise ConfigError(f"cron entry {entry!r}: {expression!r} never matches a date") from None
    return schedule


def due(schedule: Schedule, last_tick: datetime, now: datetime, catch_up: CatchUp) -> Due | None:
    """The ticks to enqueue at ``now`` after ``last_tick`` (the newest handled), or ``None`` if
    no tick came since.

    Ticks at most :data:`GRACE` late are all enqueued. Older ones were missed while no worker
    ran: ``"latest"`` enqueues the newest of them when no recent tick does, ``"none"`` none, a
    window every one within it (at most :data:`MAX_CATCH_UP`, the newest).
    """
    newest = next(schedule.ticks_until(now))
    if newest <= last_tick:
        return None
    since = now - (max(catch_up, GRACE) if isinstance(catch_up, timedelta) else GRACE)
    ticks: list[datetime] = []
    for tick in schedule.ticks_until(now):
        if tick <= last_tick or tick <= since or len(ticks) == MAX_CATCH_UP:
            break
        ticks.append(tick)
    if not ticks and catch_up == "latest":
        ticks.append(newest)
    return Due(tuple(reversed(ticks)), newest)


def next_runs(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` ticks strictly after ``after``."""
    ticks = schedule.ticks_after(after)
    return [next(ticks) for _ in range(count)]


def describe(row: dict[str, Any], in_code: bool, now: datetime, count: int = 3) -> dict[str, Any]:
    """A ``cron_entries`` row with ``in_code`` (does the app's code declare it?) and
    ``next_runs`` (its next ``count`` ticks; none for an entry no code declares, which nothing
    enqueues)."""
    runs: list[datetime] = []
    if in_code:
        schedule = parse(row["name"], row["expression"], row["timezone"])
        last_tick = row["last_tick_at"]
        runs = next_runs(schedule, max(now, last_tick) if last_tick else now, count)
    return {**row, "in_code": in_code, "next_runs": runs}


def listing(
    rows: Sequence[dict[str, Any]], declared: Mapping[str, CronEntry], now: datetime
) -> list[CronRecord]:
    """The ``cron_entries`` rows and the ``declared`` entries that have none yet (no worker
    registered them), by name, each :func:`describe`-d and marked ``registered`` or not."""
    stored = {row["name"] for row in rows}
    entries = [describe({**row, "registered": True}, row["name"] in declared, now) for row in rows]
    entries += [
        describe(_unregistered(entry), True, now)
        for name, entry in declared.items()
        if name not in stored
    ]
    return sorted((from_row(CronRecord, entry) for entry in entries), key=lambda entry: entry.name)


def _unregistered(entry: CronEntry) -> dict[str, Any]:
    """A declared entry as a row of ``cron_entries`` would show it, had a worker stored it."""
    row = entry.row()
    never = ("last_tick_at", "last_job_id", "last_enqueued_at", "declared_at", "seen_at")
    return {
        **row,
        "args": json.loads(row["args"]),
        "kwargs": json.loads(row["kwargs"]),
        "paused": False,
        **dict.fromkeys(never),
        "last_job_kind": None,
        "registered": False,
    }


def tick_text(tick: datetime) -> str:
    """A tick as stored in a job's ``tick_kwarg``: ISO 8601 in UTC."""
    return tick.isoformat()


def encode_rows(entries: Sequence[CronEntry]) -> dict[str, list[Any]]:
    """UPSERT_CRON_ENTRIES' columns for ``entries``."""
    rows = [entry.row() for entry in entries]
    return {key: [row[key] for row in rows] for key in ROW_COLUMNS}


def _second_of_repeated(tick: datetime) -> bool:
    """``tick`` is the second of two instants with its wall-clock time (an autumn DST change)."""
    return tick.fold == 1 and tick.replace(fold=0).utcoffset() != tick.utcoffset()


def _croniter() -> type[Croniter]:
    """croniter, imported on first use: the base install runs without it."""
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigError("cron entries need croniter: pip install 'pgjobs[cron]'") from None
    return croniter


def register(queries: Queries, entries: Sequence[CronEntry]) -> Operation[None]:
    """Store the ``entries`` that have no row yet, as a worker's start would."""
    return Operation(queries.register_cron_entries, encode_rows(entries), _nothing)


def _nothing(rows: Rows) -> None:
    return None
