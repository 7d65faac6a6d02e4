"""The job registry (:class:`App`), job definitions (:class:`Job`) and enqueueing.

Sync and async enqueue share everything but the I/O: :func:`_insert_params` builds the one
statement's parameters in pure code; the sync and async methods only run it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import select
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, NamedTuple, ParamSpec, TypeVar, overload

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from . import _connection
from ._blockers import lock_wait_error
from ._errors import ConfigError, DatabaseError, SchemaError, UnknownJobError, ValidationError
from ._outcome import RetryPolicy, sidekiq_backoff
from ._settings import QUEUE_NAME, Settings, load_settings
from ._sql import Queries, queries_for
from ._validation import encode_arguments

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_ATTEMPTS = 25
PRIORITY_RANGE = range(-32768, 32768)
MAX_DELAY = 100 * 365.25 * 86400
COPY_THRESHOLD = 500
"""From this many jobs, ``enqueue_many`` uses COPY instead of one INSERT."""

COPY_PIECE = 1000
"""Rows per piece of COPY data."""


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-call options; ``None`` means "the job's default"."""

    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    at: datetime | None = None
    delay: float | None = None

    def checked(self) -> EnqueueOptions:
        if self.queue is not None and not QUEUE_NAME.fullmatch(self.queue):
            raise ValidationError(
                "queue", f"{self.queue!r} is not a queue name (letters, digits, _.-)"
            )
        if self.priority is not None and self.priority not in PRIORITY_RANGE:
            raise ValidationError("priority", "must be an integer from -32768 to 32767")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValidationError("max_attempts", "must be at least 1")
        if self.at is not None and self.at.utcoffset() is None:
            raise ValidationError(
                "at", "naive datetime; pass an aware one, e.g. datetime.now(timezone.utc)"
            )
        if self.delay is not None and not 0 <= self.delay <= MAX_DELAY:
            raise ValidationError("delay", f"must be from 0 to {MAX_DELAY:g} seconds (100 years)")
        if self.at is not None and self.delay is not None:
            raise ValidationError("at", "give either at= or a delay, not both")
        return self


class JobCall(NamedTuple):
    """One job to enqueue: the job, its validated JSON arguments and per-call options.

    Build with :meth:`Job.call`; pass to :meth:`App.enqueue_many`. (A named tuple: a bulk enqueue
    makes one per job, and a frozen dataclass costs several times more to build.)
    """

    job: Job[..., Any]
    args_json: str
    kwargs_json: str
    options: EnqueueOptions


class Job(Generic[P, R]):
    """A registered job. Calling it runs the function directly; ``enqueue`` runs it in a worker."""

    def __init__(
        self,
        app: App,
        func: Callable[P, R],
        *,
        name: str,
        queue: str,
        priority: int,
        max_attempts: int,
        retry: RetryPolicy,
        discard_on: tuple[type[BaseException], ...],
        on_exhausted: Callable[[BaseException], object] | None,
        timeout: float | None = None,
        options: EnqueueOptions | None = None,
    ) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.retry = retry
        self.discard_on = discard_on
        self.on_exhausted = on_exhausted
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(func)
        self._signature = inspect.signature(func)
        self._options = options or EnqueueOptions()
        self._takes_no_arguments = _accepts_no_arguments(self._signature)

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
    ) -> Job[P, R]:
        """A view of this job whose enqueues use these options instead of the defaults."""
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        changes = {
            "queue": queue,
            "priority": priority,
            "max_attempts": max_attempts,
            "at": at,
            "delay": seconds,
        }
        given: dict[str, Any] = {k: v for k, v in changes.items() if v is not None}
        merged = dataclasses.replace(self._options, **given).checked()
        view = copy.copy(self)
        view._options = merged
        return view

    def call(self, *args: P.args, **kwargs: P.kwargs) -> JobCall:
        """Check the arguments against the function's signature and as JSON; nothing is written.

        Raises:
            TypeError: the arguments do not fit the function.
            ValidationError: an argument cannot be stored as JSON (the message names it).
        """
        if not args and not kwargs and self._takes_no_arguments:
            return JobCall(self, "[]", "{}", self._options)  # nothing to bind or encode
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None
        args_json, kwargs_json = encode_arguments(args, kwargs)
        return JobCall(self, args_json, kwargs_json, self._options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue a run of this job; returns its id.

        Pass ``conn=`` (a psycopg ``Connection`` or SQLAlchemy ``Session``/``Connection``) to
        enqueue inside the caller's transaction: the job exists only if that transaction commits,
        and rolling back a savepoint removes the jobs enqueued inside it. Without ``conn`` the job
        is committed at once on pgjobs' own connection pool. ``conn`` is reserved for this; a job
        function cannot take a parameter of that name.
        """
        conn = kwargs.pop("conn", None)
        return self.app.enqueue_many([self.call(*args, **kwargs)], conn=conn)[0]

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """:meth:`enqueue` for async code: ``conn=`` takes a psycopg ``AsyncConnection`` or a
        SQLAlchemy ``AsyncSession``/``AsyncConnection``."""
        conn = kwargs.pop("conn", None)
        return (await self.app.enqueue_many_async([self.call(*args, **kwargs)], conn=conn))[0]

    def enqueue_in(self, delay: timedelta | float, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue to run ``delay`` (a timedelta or seconds) from now, by the database clock."""
        return self.options(delay=delay).enqueue(*args, **kwargs)

    def enqueue_at(self, at: datetime, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue to run at ``at``, an aware datetime (naive ones are refused)."""
        return self.options(at=at).enqueue(*args, **kwargs)


class App:
    """The registry of jobs, and the entry point to enqueue them.

    ``pgjobs worker --app module:attribute`` loads an ``App`` and runs its jobs. Settings given
    here win over every other source (files, environment, CLI flags).

    Example::

        app = pgjobs.App()

        @app.job(queue="mailers", max_attempts=5)
        def send_welcome_email(user_id: int) -> None: ...

        send_welcome_email.enqueue(42, conn=session)
    """

    def __init__(self, **settings: Any) -> None:
        self._explicit = settings
        self._flags: dict[str, Any] = {}
        self._settings: Settings | None = None
        self._jobs: dict[str, Job[..., Any]] = {}
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._async_pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings({**self._flags, **self._explicit})
        return self._settings

    def configure(self, **flags: Any) -> None:
        """Apply CLI-level settings (below the ones given to ``App(...)``); used by the CLI."""
        self._flags = flags
        self._settings = None

    @property
    def queries(self) -> Queries:
        return queries_for(self.settings.schema)

    @property
    def jobs(self) -> Mapping[str, Job[..., Any]]:
        """Registered jobs by name."""
        return dict(self._jobs)

    @overload
    def job(self, func: Callable[P, R], /) -> Job[P, R]: ...

    @overload
    def job(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry: RetryPolicy = sidekiq_backoff,
        discard_on: tuple[type[BaseException], ...] = (),
        on_exhausted: Callable[[BaseException], object] | None = None,
        timeout: timedelta | float | None = None,
    ) -> Callable[[Callable[P, R]], Job[P, R]]: ...

    def job(
        self,
        func: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry: RetryPolicy = sidekiq_backoff,
        discard_on: tuple[type[BaseException], ...] = (),
        on_exhausted: Callable[[BaseException], object] | None = None,
        timeout: timedelta | float | None = None,
    ) -> Job[P, R] | Callable[[Callable[P, R]], Job[P, R]]:
        """Register a function (``def`` or ``async def``) as a job.

        Args:
            name: the stable name stored in each row; defaults to ``module.qualname``. Keep it
                when you move the function, or queued jobs will no longer find it.
            queue, priority, max_attempts: defaults for each enqueue (lower priority runs first).
            retry: ``(attempt, exception) -> delay or None``; ``None`` discards. Defaults to
                Sidekiq's exponential backoff.
            discard_on: exception types that discard the job at once, without retries.
            on_exhausted: called with the last exception when the job is discarded.
            timeout: seconds an attempt may run (default: no limit). An ``async def`` job is
                cancelled at the deadline; a ``def`` job's thread cannot be stopped, so its
                attempt fails at the deadline and the worker retires once its other jobs end (see
                the guide). Either way the attempt fails with :class:`JobTimeout` and is retried
                per ``retry``.
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if seconds is not None and not seconds > 0:
            raise ConfigError("timeout: must be a positive number of seconds, or None")

        def register(f: Callable[P, R]) -> Job[P, R]:
            job_name = name or f"{f.__module__}.{f.__qualname__}"
            if job_name in self._jobs:
                raise ConfigError(f"a job named {job_name!r} is already registered")
            if "conn" in inspect.signature(f).parameters:
                raise ConfigError(
                    f"{job_name}: 'conn' is reserved for enqueue(conn=...); rename it"
                )
            options = EnqueueOptions(queue=queue, priority=priority, max_attempts=max_attempts)
            options.checked()
            job = Job(
                self,
                f,
                name=job_name,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                retry=retry,
                discard_on=discard_on,
                on_exhausted=on_exhausted,
                timeout=seconds,
            )
            self._jobs[job_name] = job
            return job

        return register(func) if func is not None else register

    def get(self, name: str) -> Job[..., Any]:
        """The job registered as ``name``; :class:`UnknownJobError` if there is none."""
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise UnknownJobError(f"no job named {name!r} is registered (known: {known})") from None

    def enqueue_many(self, calls: Iterable[JobCall], *, conn: Any = None) -> list[int]:
        """Enqueue many jobs in one statement; returns their ids in order.

        ``conn`` works as in :meth:`Job.enqueue`: all of the jobs commit or roll back with it.
        """
        params = _insert_params(calls)
        with self._connection_for(conn) as driver:
            return _run_insert(driver, self.queries, params, self._prepare)

    async def enqueue_many_async(self, calls: Iterable[JobCall], *, conn: Any = None) -> list[int]:
        """:meth:`enqueue_many` for async code."""
        params = _insert_params(calls)
        with self._translated_errors():
            if conn is not None:
                driver = await _connection.unwrap_async(conn)
                return await _run_insert_async(driver, self.queries, params, self._prepare)
            pool = await self._open_async_pool()
            with _lost_connection_errors(self.settings, self.queries):
                async with pool.connection(timeout=self.settings.connect_timeout) as own:
                    return await _run_insert_async(own, self.queries, params, self._prepare)

    def retry(self, job_id: int, *, conn: Any = None) -> bool:
        """Put a finished, discarded or waiting job back to run now; ``False`` if it does not exist.

        Raises:
            ValueError: the job is running; wait for it to finish.
        """
        with self._connection_for(conn) as driver:
            return _run_retry(driver, self.queries.retry_job, job_id)

    def cancel(self, job_id: int, *, conn: Any = None) -> str | None:
        """Cancel a job; returns what became of it, ``None`` if there is no such job.

        ``"cancelled"``: it was waiting (scheduled, available or retryable) and will never run.
        ``"cancelling"``: it is running; its worker is told at once (an ``async def`` job is
        cancelled, a ``def`` job sees ``current_job().cancelled``) and it ends ``cancelled``.
        ``"already completed"``, ``"already discarded"``, ``"already cancelled"``: it had ended
        and is left as it is. The same as ``SELECT pgjobs.cancel_job(id)`` in SQL.
        """
        with self._connection_for(conn) as driver:
            return _run_cancel(driver, self.queries.cancel_job, job_id)

    def list_jobs(
        self,
        *,
        states: Iterable[str] | None = None,
        queues: Iterable[str] | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Jobs, newest first, optionally only in some states and queues."""
        params = {
            "states": None if states is None else list(states),
            "queues": None if queues is None else list(queues),
            "limit": limit,
        }
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(self.queries.list_jobs, params).fetchall()

    @property
    def _prepare(self) -> bool | None:
        """``prepare=`` for statements on callers' connections: never behind a pooler that
        cannot keep them (``prepared_statements = false``), else psycopg's choice."""
        return None if self.settings.prepared_statements else False

    def list_workers(self) -> list[dict[str, Any]]:
        """The registered workers, oldest first, with their heartbeat age, leadership and number
        of running jobs."""
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(self.queries.list_workers).fetchall()

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: jobs}}`` from the ``queue_counts`` view."""
        counts: dict[str, dict[str, int]] = {}
        with self._connection() as conn:
            for queue, state, jobs in conn.execute(self.queries.queue_counts).fetchall():
                counts.setdefault(queue, {})[state] = jobs
        return counts

    def close(self) -> None:
        """Close pgjobs' own connection pool (the async one must be closed with ``aclose``)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def aclose(self) -> None:
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool_lock:
            if self._pool is None:
                kwargs = _connection.connect_kwargs(self.settings, "pgjobs-client", limits=True)
                self._pool = psycopg_pool.ConnectionPool(
                    kwargs.pop("conninfo"),
                    kwargs={**kwargs, "autocommit": True},
                    min_size=0,
                    max_size=4,
                    check=_check_pooled,
                    open=True,
                )
        with (
            self._translated_errors(),
            _lost_connection_errors(self.settings, self.queries),
            self._pool.connection(timeout=self.settings.connect_timeout) as conn,
        ):
            yield conn

    @contextmanager
    def _connection_for(self, conn: Any) -> Iterator[psycopg.Connection[Any]]:
        """The psycopg connection behind the caller's ``conn`` (its transaction), or one of
        pgjobs' own when ``conn`` is ``None``."""
        if conn is None:
            with self._connection() as own:
                yield own
        else:
            with self._translated_errors():
                yield _connection.unwrap_sync(conn)

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        """Driver errors that mean "fix your setup" become pgjobs errors saying how."""
        try:
            yield
        except psycopg_pool.PoolTimeout as exc:
            raise DatabaseError(
                f"could not get a database connection within {self.settings.connect_timeout:g} s;"
                " is the database at PGJOBS_DATABASE_URL up and reachable?"
            ) from exc
        except psycopg.errors.UndefinedTable as exc:
            raise SchemaError(
                f"pgjobs tables not found in schema {self.settings.schema!r}; "
                "run `pgjobs migrate` first"
            ) from exc

    async def _open_async_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        if self._async_pool is None:
            kwargs = _connection.connect_kwargs(self.settings, "pgjobs-client", limits=True)
            pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
                kwargs.pop("conninfo"),
                kwargs={**kwargs, "autocommit": True},
                min_size=0,
                max_size=4,
                check=_check_pooled_async,
                open=False,
            )
            await pool.open()
            self._async_pool = pool
        return self._async_pool


@contextmanager
def _lost_connection_errors(settings: Settings, queries: Queries) -> Iterator[None]:
    """On pgjobs' own connections, a connection lost mid-call is a :class:`DatabaseError`, and
    so is a lock wait past their ``lock_timeout`` (naming who holds the lock) or a statement
    past their ``statement_timeout``.

    (On a caller's connection the driver's error stands: the caller's transaction failed.)
    """
    try:
        yield
    except psycopg_pool.PoolTimeout:
        raise  # no connection at all: _translated_errors says so
    except psycopg.errors.LockNotAvailable:
        raise lock_wait_error(settings, queries) from None
    except psycopg.errors.QueryCanceled as exc:
        raise DatabaseError(f"the database canceled the call ({str(exc).strip()})") from None
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"the database connection failed during the call ({str(exc).strip()}); if it was an "
            "enqueue, it may or may not have been committed"
        ) from exc


def _server_spoke(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection's socket has something to read: a closed connection (the
    server restarted or ended the session) or a message to look at. Costs no round trip."""
    if conn.closed:
        return True
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return bool(readable)


def _check_pooled(conn: psycopg.Connection[Any]) -> None:
    """Pool check: drop a connection the server closed while it sat idle, so the first enqueue
    after a database restart gets a fresh one instead of an error."""
    if _server_spoke(conn):
        psycopg_pool.ConnectionPool.check_connection(conn)


async def _check_pooled_async(conn: psycopg.AsyncConnection[Any]) -> None:
    if _server_spoke(conn):
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)


def _insert_params(calls: Iterable[JobCall]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {
        "queues": [],
        "names": [],
        "args": [],
        "kwargs": [],
        "priorities": [],
        "max_attempts": [],
        "ats": [],
        "delays": [],
    }
    for call in calls:
        job, options = call.job, call.options
        columns["queues"].append(options.queue or job.queue)
        columns["names"].append(job.name)
        columns["args"].append(call.args_json)
        columns["kwargs"].append(call.kwargs_json)
        columns["priorities"].append(job.priority if options.priority is None else options.priority)
        columns["max_attempts"].append(options.max_attempts or job.max_attempts)
        columns["ats"].append(options.at)
        columns["delays"].append(options.delay or 0.0)
    return columns


def _run_insert(
    conn: psycopg.Connection[Any], queries: Queries, params: Mapping[str, Any], prepare: bool | None
) -> list[int]:
    count = len(params["names"])
    if not count:
        return []
    with conn.cursor() as cur:
        if count == 1:
            cur.execute(queries.insert_job, _single(params), prepare=prepare)
            return [row[0] for row in cur.fetchall()]
        if count < COPY_THRESHOLD:
            cur.execute(queries.insert_jobs, params, prepare=prepare)
            return [row[0] for row in cur.fetchall()]
        row = cur.execute(queries.reserve_job_ids, {"count": count}, prepare=prepare).fetchone()
        assert row is not None
        now, ids = row
        with cur.copy(queries.copy_jobs) as copy:
            for data in _copy_text(ids, now, params):
                copy.write(data)
        return list(ids)


async def _run_insert_async(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    params: Mapping[str, Any],
    prepare: bool | None,
) -> list[int]:
    count = len(params["names"])
    if not count:
        return []
    async with conn.cursor() as cur:
        if count == 1:
            await cur.execute(queries.insert_job, _single(params), prepare=prepare)
            return [row[0] for row in await cur.fetchall()]
        if count < COPY_THRESHOLD:
            await cur.execute(queries.insert_jobs, params, prepare=prepare)
            return [row[0] for row in await cur.fetchall()]
        await cur.execute(queries.reserve_job_ids, {"count": count}, prepare=prepare)
        row = await cur.fetchone()
        assert row is not None
        now, ids = row
        async with cur.copy(queries.copy_jobs) as copy:
            for data in _copy_text(ids, now, params):
                await copy.write(data)
        return list(ids)


def _accepts_no_arguments(signature: inspect.Signature) -> bool:
    try:
        signature.bind()
    except TypeError:
        return False
    return True


def _single(params: Mapping[str, Any]) -> dict[str, Any]:
    """INSERT_JOB's parameters from the one-row columns of :func:`_insert_params`."""
    return {
        "queue": params["queues"][0],
        "name": params["names"][0],
        "args": params["args"][0],
        "kwargs": params["kwargs"][0],
        "priority": params["priorities"][0],
        "max_attempts": params["max_attempts"][0],
        "at": params["ats"][0],
        "delay": params["delays"][0],
    }


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
"""The characters COPY's text format escapes, for job names."""
_BACKSLASH, _ESCAPED_BACKSLASH = "\\", "\\\\"
"""JSON text escapes every control character, so only its backslashes need escaping for COPY."""


def _copy_text(ids: list[int], now: datetime, params: Mapping[str, Any]) -> Iterator[bytes]:
    """The COPY data for ``params`` in COPY's text format, :data:`COPY_PIECE` rows at a time (so
    that the server stores one piece while the next is formatted): the columns INSERT_JOBS
    computes in SQL, computed here from the database's ``now``.

    Formatted here rather than row by row through psycopg's adapters, which cost more than the
    rest of an enqueue: most jobs in a batch share their name, queue and start time, so those are
    escaped and formatted once."""
    start_times: dict[tuple[datetime | None, float], str] = {}  # "scheduled_at\tstate"
    names: dict[str, str] = {}
    lines = []
    for job_id, queue, name, args, kwargs, priority, max_attempts, at, delay in zip(
        ids,
        params["queues"],
        params["names"],
        params["args"],
        params["kwargs"],
        params["priorities"],
        params["max_attempts"],
        params["ats"],
        params["delays"],
        strict=True,
    ):
        start = start_times.get((at, delay))
        if start is None:
            run_at = at if at is not None else now + timedelta(seconds=delay)
            state = "scheduled" if run_at > now else "available"
            start = start_times[at, delay] = f"{run_at.isoformat()}\t{state}"
        escaped_name = names.get(name)
        if escaped_name is None:
            escaped_name = names[name] = name.translate(_COPY_ESCAPES)
        lines.append(
            f"{job_id}\t{queue}\t{escaped_name}\t{args.replace(_BACKSLASH, _ESCAPED_BACKSLASH)}\t"
            f"{kwargs.replace(_BACKSLASH, _ESCAPED_BACKSLASH)}\t{priority}\t{max_attempts}\t"
            f"{start}\n"
        )
        if len(lines) == COPY_PIECE:
            yield "".join(lines).encode()
            lines.clear()
    if lines:
        yield "".join(lines).encode()


def _run_retry(conn: psycopg.Connection[Any], statement: str, job_id: int) -> bool:
    with conn.cursor() as cur:
        row = cur.execute(statement, {"id": job_id}).fetchone()
    if row is None:
        return False
    previous_state, retried = row
    if not retried:
        raise ValueError(f"job {job_id} is {previous_state}; it can be retried once it ends")
    return True


def _run_cancel(conn: psycopg.Connection[Any], statement: str, job_id: int) -> str | None:
    with conn.cursor() as cur:
        row = cur.execute(statement, {"id": job_id}).fetchone()
    return None if row is None else row[0]
