"""Job definitions: :class:`Job` (a registered function and its defaults) and :class:`BoundJob` (a
job bound to the caller's connection). A job makes a :class:`~pgjobs._call.JobCall` for each run
to enqueue.

A job enqueues through the :class:`~pgjobs._client.Client` it was registered with; it knows
nothing of the registry.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._call import EnqueueOptions, JobCall, Unique
from ._connection import AsyncConnection, Connection
from ._outcome import RetryPolicy
from ._queues import partition_key_of
from ._unique import JobId, canonical_json, key_value, unique_key
from ._validation import encode_arguments, encode_meta

if TYPE_CHECKING:
    from ._client import Client
    from ._context import JobContext

P = ParamSpec("P")
R = TypeVar("R")

ExhaustedHook = Callable[["JobContext", BaseException], object] | Callable[[BaseException], object]
"""``on_exhausted``: ``(job, exc)`` or, as before, ``(exc)``."""


SHAPES_KEPT = 64
"""How many shapes of arguments that fit a job's function it remembers (the rest are bound every
time: a job called with ever new keywords cannot grow the worker's memory)."""


class Job(Generic[P, R]):
    """A registered job. Calling it runs the function directly; ``enqueue`` runs it in a worker."""

    def __init__(
        self,
        client: Client,
        func: Callable[P, R],
        *,
        name: str,
        queue: str,
        priority: int,
        max_attempts: int,
        retry: RetryPolicy,
        discard_on: tuple[type[BaseException], ...],
        on_exhausted: ExhaustedHook | None,
        timeout: float | None = None,
        options: EnqueueOptions | None = None,
        unique: Unique | None = None,
        partition_by: str | None = None,
    ) -> None:
        self._client = client
        self.func = func
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.retry = retry
        self.discard_on = discard_on
        self.on_exhausted = on_exhausted
        self.timeout = timeout
        self.unique = unique
        self.is_async = inspect.iscoroutinefunction(func)
        self._signature = inspect.signature(func)
        self._options = options or EnqueueOptions()
        self._takes_no_arguments = _accepts_no_arguments(self._signature)
        self._fitting_shapes: set[tuple[int, tuple[str, ...]]] = set()
        """``(positional count, keyword names)`` of arguments seen to bind: checked once each."""
        self.partition_by = partition_by
        """The parameter whose argument is each run's partition key (see :meth:`options`)."""
        self._resolve()

    def _resolve(self) -> None:
        """The queue, priority and attempts each call carries: the options over the defaults
        (worked out once here, not at every call)."""
        options = self._options
        self._queue = options.queue or self.queue
        self._priority = self.priority if options.priority is None else options.priority
        self._max_attempts = options.max_attempts or self.max_attempts

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<pgjobs.Job {self.name!r} queue={self.queue!r}>"

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        at: datetime | None = None,
        delay: timedelta | float | None = None,
        unique_key: Any = None,
        partition_key: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Job[P, R]:
        """A view of this job whose enqueues use these options instead of the defaults.

        ``unique_key`` is any JSON value to key the job on instead of its arguments; a job not
        declared unique is then unique with :class:`Unique`'s defaults. ``partition_key`` names
        the partition (a tenant, an account) that the limits of a queue partitioned by key count
        this run in; it wins over the job's ``partition_by``. ``meta`` is a dict of JSON values
        stored with each run (``jobs.meta``), that run middleware and the job read as
        ``current_job().meta``; enqueue middleware may add to it.

        Raises:
            ValidationError: an option is out of range, or ``unique_key`` or ``meta`` is not
                JSON.
        """
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        changes = {
            "queue": queue,
            "priority": priority,
            "max_attempts": max_attempts,
            "at": at,
            "delay": seconds,
            "unique_key": None if unique_key is None else canonical_json(unique_key),
            "partition_key": partition_key,
            "meta": None if meta is None else encode_meta(dict(meta)),
        }
        given: dict[str, Any] = {k: v for k, v in changes.items() if v is not None}
        merged = dataclasses.replace(self._options, **given).checked()
        view = copy.copy(self)
        view._options = merged
        view._resolve()
        if unique_key is not None and view.unique is None:
            view.unique = Unique()
        return view

    def call(self, *args: P.args, **kwargs: P.kwargs) -> JobCall:
        """Check the arguments against the function's signature and as JSON; nothing is written.

        Raises:
            TypeError: the arguments do not fit the function.
            ValidationError: an argument cannot be stored as JSON (the message names it).
        """
        if not args and not kwargs and self._takes_no_arguments:
            args_json, kwargs_json = "[]", "{}"  # nothing to bind or encode
        else:
            self.check_arguments(args, kwargs)
            args_json, kwargs_json = encode_arguments(args, kwargs)
        options = self._options
        if self.partition_by is not None and options.partition_key is None:
            key = partition_key_of(self._signature, self.partition_by, args, kwargs)
            options = dataclasses.replace(options, partition_key=key)
        if self.unique is None:
            return JobCall(
                self.name,
                self._queue,
                self._priority,
                self._max_attempts,
                args_json,
                kwargs_json,
                options,
                None,
                options.meta,
                None,
                self.func,
            )
        key_json = options.unique_key
        if key_json is None:
            key_json = canonical_json(key_value(self._signature, self.unique.by, args, kwargs))
        key = unique_key(self.name, key_json)
        return JobCall(
            self.name,
            self._queue,
            self._priority,
            self._max_attempts,
            args_json,
            kwargs_json,
            options,
            key,
            options.meta,
            self.unique,
            self.func,
        )

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` (naming the job) unless the function accepts these arguments: at
        enqueue, and in the worker for the stored ones, which a later deploy may no longer fit."""
        if not args and not kwargs and self._takes_no_arguments:
            return
        # whether arguments bind depends on their number and keywords alone, never their values
        shape = (len(args), tuple(kwargs))
        if shape in self._fitting_shapes:
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None
        if len(self._fitting_shapes) < SHAPES_KEPT:
            self._fitting_shapes.add(shape)

    def using(self, conn: Connection | AsyncConnection) -> BoundJob[P, R]:
        """This job bound to the caller's connection: ``job.using(conn).enqueue(...)`` enqueues
        inside ``conn``'s transaction, with the job's arguments type-checked as for
        :meth:`enqueue`.

        ``conn`` is a psycopg ``Connection`` or a SQLAlchemy ``Session``/``Connection`` (for
        :meth:`BoundJob.enqueue_async`, a psycopg ``AsyncConnection`` or a SQLAlchemy
        ``AsyncSession``/``AsyncConnection``), using the psycopg 3 driver. The job exists only if
        that transaction commits, and rolling back a savepoint removes the jobs enqueued inside
        it. Nothing is committed for you. ``None`` means pgjobs' own pool, as without ``using``.

        Example::

            with Session(engine) as session, session.begin():
                session.add(user)
                session.flush()
                send_welcome_email.using(session).enqueue(user.id)
        """
        return BoundJob(self, conn)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobId:
        """Enqueue a run of this job on pgjobs' own connection pool, committed at once; returns
        its id, a :class:`JobId` (for a unique job whose key is held: the holder's id, with
        ``duplicate`` true). To enqueue inside your transaction, use :meth:`using`.

        ``enqueue(..., conn=conn)`` is the older spelling of ``using(conn).enqueue(...)``: it
        still works but does not type-check, and it is why a job function cannot take a
        parameter called ``conn``.
        """
        conn: Any = kwargs.pop("conn", None)  # unchecked: the older spelling
        return self.using(conn).enqueue(*args, **kwargs)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> JobId:
        """:meth:`enqueue` for async code, on pgjobs' own async pool."""
        conn: Any = kwargs.pop("conn", None)
        return await self.using(conn).enqueue_async(*args, **kwargs)

    def enqueue_in(self, delay: timedelta | float, *args: P.args, **kwargs: P.kwargs) -> JobId:
        """Enqueue to run ``delay`` (a timedelta or seconds) from now, by the database clock."""
        return self.options(delay=delay).enqueue(*args, **kwargs)

    def enqueue_at(self, at: datetime, *args: P.args, **kwargs: P.kwargs) -> JobId:
        """Enqueue to run at ``at``, an aware datetime (naive ones are refused)."""
        return self.options(at=at).enqueue(*args, **kwargs)


class BoundJob(Generic[P, R]):
    """A job bound to the caller's connection, from :meth:`Job.using`: each enqueue joins that
    connection's transaction. The methods take the job's own arguments, checked by type checkers
    as the job function's."""

    __slots__ = ("_conn", "_job")

    def __init__(self, job: Job[P, R], conn: Connection | AsyncConnection) -> None:
        self._job = job
        self._conn = conn

    def __repr__(self) -> str:
        return f"<pgjobs.BoundJob {self._job.name!r} using {type(self._conn).__name__}>"

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobId:
        """Enqueue a run of the job in the connection's transaction; returns its id."""
        call = self._job.call(*args, **kwargs)
        return self._job._client.enqueue_many([call], self._conn)[0]

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> JobId:
        """:meth:`enqueue` on an async connection or session."""
        call = self._job.call(*args, **kwargs)
        return (await self._job._client.enqueue_many_async([call], self._conn))[0]

    def enqueue_in(self, delay: timedelta | float, *args: P.args, **kwargs: P.kwargs) -> JobId:
        """Enqueue to run ``delay`` (a timedelta or seconds) from now, by the database clock."""
        return self._job.options(delay=delay).using(self._conn).enqueue(*args, **kwargs)

    def enqueue_at(self, at: datetime, *args: P.args, **kwargs: P.kwargs) -> JobId:
        """Enqueue to run at ``at``, an aware datetime (naive ones are refused)."""
        return self._job.options(at=at).using(self._conn).enqueue(*args, **kwargs)


def _accepts_no_arguments(signature: inspect.Signature) -> bool:
    try:
        signature.bind()
    except TypeError:
        return False
    return True
