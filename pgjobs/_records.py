"""What the admin calls of :class:`~pgjobs.App` return: one frozen record per row, built in
pure code from the row's columns by field name (a new column is one new field here and one in
its statement).

``dataclasses.asdict(record)`` gives the row as a dict, in the order of the columns, which is
what ``pgjobs ... --json`` prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


R = TypeVar("R", bound="DataclassInstance")

_names: dict[type[Any], tuple[str, ...]] = {}
"""The fields of each record, by record type."""


def from_row(record: type[R], row: Mapping[str, Any]) -> R:
    """The ``record`` (a dataclass of this module) of a row that has a column for each of its
    fields (and perhaps more)."""
    names = _names.get(record)
    if names is None:
        names = _names[record] = tuple(field.name for field in fields(record))
    return record(**{name: row[name] for name in names})


@dataclass(frozen=True)
class JobRecord:
    """A job, from :meth:`App.get_job <pgjobs.App.get_job>` and :meth:`App.list_jobs
    <pgjobs.App.list_jobs>`: the columns of ``jobs`` (docs/schema.md) as they were read."""

    id: int
    """The job's id, as ``enqueue`` returned it."""
    queue: str
    """Its queue."""
    name: str
    """The registered job name a worker looks up."""
    state: str
    """``scheduled``, ``available``, ``running``, ``retryable``, ``completed``, ``discarded``
    or ``cancelled``."""
    priority: int
    """Lower runs first within a queue."""
    attempt: int
    """Attempts started so far."""
    max_attempts: int
    """Attempts allowed before the job is discarded."""
    args: list[Any]
    """Positional arguments, as stored (JSON)."""
    kwargs: dict[str, Any]
    """Keyword arguments, as stored (JSON)."""
    scheduled_at: datetime
    """When the job may run (for a retry: when its next attempt may run)."""
    inserted_at: datetime
    """When it was enqueued."""
    attempted_at: datetime | None
    """When its latest attempt was claimed; ``None`` before the first."""
    finished_at: datetime | None
    """When it became ``completed``, ``discarded`` or ``cancelled``; ``None`` before."""
    worker_id: str | None
    """The worker running it (a UUID's text), exactly while it is ``running``."""
    cancel_requested_at: datetime | None
    """When its cancellation was asked while it ran; ``None`` otherwise."""
    unique_key: str | None
    """A unique job's key (see the guide); ``None`` for a plain job."""
    batch_id: int | None
    """The batch it belongs to, or whose callback it is; ``None`` for none."""
    partition_key: str | None
    """The partition a queue's limits count it in, if it has one."""
    errors: list[dict[str, Any]]
    """One dict per failed attempt: ``attempt``, ``at``, ``class``, ``message``,
    ``traceback`` (and ``middleware``, naming the run middleware that failed it); oldest
    first."""
    meta: dict[str, Any]
    """What its enqueue stored for middleware and the job (``current_job().meta``); ``{}``
    for none."""
    result: Any
    """What it returned once ``completed`` (JSON); ``None`` before, for ``None``, and past
    ``result_retention``."""
    progress: float | None
    """The latest fraction (0 to 1) its running attempt reported; ``None`` for none."""
    progress_message: str | None
    """The text of that report."""
    progress_at: datetime | None
    """When that report was stored."""


@dataclass(frozen=True)
class QueueRecord:
    """A queue, from :meth:`App.list_queues <pgjobs.App.list_queues>`: every queue with settings
    and every queue with available or running jobs."""

    name: str
    """The queue's name."""
    paused: bool
    """No worker starts its jobs while it is paused."""
    concurrency: int | None
    """At most this many of its jobs run at once (per partition); ``None``: no limit."""
    rate_limit: int | None
    """At most this many starts in any :attr:`rate_period` (per partition); ``None``: no
    rate."""
    rate_period: float | None
    """The rate's window, in seconds; set exactly when :attr:`rate_limit` is."""
    partition: str | None
    """What the limits count per: ``None`` (the whole queue), ``"job"``, ``"key"`` or
    ``"job,key"``."""
    held_back: bool
    """The latest claim left jobs waiting for room under :attr:`concurrency`."""
    available: int
    """Its jobs waiting for a worker."""
    running: int
    """Its jobs running now."""


@dataclass(frozen=True)
class WorkerRecord:
    """A registered worker process, from :meth:`App.list_workers <pgjobs.App.list_workers>`."""

    id: str
    """The worker's id (a UUID's text), new at every start: the ``worker_id`` of its jobs."""
    hostname: str
    """The host it runs on."""
    pid: int
    """Its process id there."""
    queues: str
    """The queues it serves, as it was started with them."""
    concurrency: int
    """Jobs it runs at once, at most."""
    started_at: datetime
    """When it started."""
    heartbeat_at: datetime
    """Its latest heartbeat (database time)."""
    heartbeat_age: float
    """Seconds since :attr:`heartbeat_at`, when read."""
    leader: bool
    """It holds the leader's lease (it runs the maintenance: rescue, pruning)."""
    running: int
    """Jobs it is running."""


@dataclass(frozen=True)
class BatchRecord:
    """A batch, from :meth:`App.batch_status <pgjobs.App.batch_status>` and
    :meth:`App.list_batches <pgjobs.App.list_batches>`."""

    id: int
    """The batch's id (``current_job().batch_id`` in its jobs)."""
    description: str | None
    """The text given at creation."""
    total: int
    """Jobs in the batch."""
    pending: int
    """Its jobs that have not ended."""
    succeeded: int
    """Its jobs that completed."""
    failed: int
    """Its jobs discarded or cancelled."""
    sealed: bool
    """No more jobs come from the creating code; callbacks fire only once it is."""
    success_job_id: int | None
    """The ``on_success`` callback job, once enqueued."""
    complete_job_id: int | None
    """The ``on_complete`` callback job, once enqueued."""
    created_at: datetime
    """When it was created."""
    sealed_at: datetime | None
    """When it was sealed; ``None`` before."""
    finished_at: datetime | None
    """When a sealed batch first had no pending job (its callbacks were enqueued); jobs can no
    longer be added after."""


@dataclass(frozen=True)
class CronRecord:
    """A cron entry, from :meth:`App.list_cron <pgjobs.App.list_cron>`: every entry stored in
    ``cron_entries`` and every entry the app declares."""

    name: str
    """The entry's name."""
    job_name: str
    """The job each tick enqueues."""
    queue: str
    """Its queue."""
    priority: int
    """Its priority."""
    max_attempts: int
    """Its attempts allowed."""
    args: list[Any]
    """Its positional arguments."""
    kwargs: dict[str, Any]
    """Its keyword arguments."""
    tick_kwarg: str | None
    """The keyword argument that receives the tick (ISO 8601, UTC), if any."""
    expression: str
    """The cron expression."""
    timezone: str
    """The IANA time zone its ticks follow."""
    catch_up: str
    """``"latest"``, ``"none"`` or ``"window"`` (ticks missed within
    :attr:`catch_up_window`)."""
    catch_up_window: timedelta | None
    """The window of ``catch_up="window"``."""
    paused: bool
    """Its ticks pass without a job."""
    last_tick_at: datetime | None
    """The newest tick handled; ``None`` for an entry not yet registered."""
    last_job_id: int | None
    """The latest job enqueued for it."""
    last_enqueued_at: datetime | None
    """When that job was enqueued."""
    declared_at: datetime | None
    """When it was first stored; ``None`` for an entry not yet registered."""
    seen_at: datetime | None
    """When a starting worker last declared it."""
    last_job_kind: str | None
    """Whether a ``"tick"`` or a ``"run now"`` enqueued the latest job (``None``: no job yet,
    or it was deleted since)."""
    registered: bool
    """It has a row: a worker, or a call of the App, stored it."""
    in_code: bool
    """This app declares it (entries no running code declares are never enqueued)."""
    next_runs: list[datetime]
    """Its next three ticks (none if the app does not declare it)."""
