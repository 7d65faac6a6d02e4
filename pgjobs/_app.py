"""The job registry (:class:`App`): jobs by name, settings, and the entry point to enqueue and
administer them through its :class:`~pgjobs._client.Client`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar, overload

from . import _admin, _batches, _cron, _middleware, _observers, _queues, _waiting
from ._batch import AsyncBatch, Batch
from ._call import EnqueueOptions, JobCall, Unique
from ._client import Client, Recorder
from ._connection import AsyncConnection, Connection
from ._context import JobContext
from ._cron import CatchUp, CronEntry
from ._errors import ConfigError, UnknownJobError, ValidationError
from ._job import ExhaustedHook, Job
from ._middleware import Seam
from ._outcome import RetryPolicy, sidekiq_backoff
from ._queues import QueueLimits, Rate
from ._records import BatchRecord, CronRecord, JobRecord, QueueRecord, WorkerRecord
from ._settings import QueueSpec, Settings, load_settings
from ._sql import Queries, queries_for
from ._unique import JobId
from ._validation import check_job_name

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
E = TypeVar("E", bound=Callable[[_middleware.Enqueuing], Any])
M = TypeVar("M", bound=Callable[[JobContext], Any])
H = TypeVar("H", bound=Callable[[JobContext, BaseException], Any])
StartObserver = TypeVar("StartObserver", bound=Callable[[JobContext], None])
EndObserver = TypeVar("EndObserver", bound=Callable[[JobContext, _observers.JobOutcome], None])

DEFAULT_MAX_ATTEMPTS = 25


class App:
    """The registry of jobs, and the entry point to enqueue them.

    ``pgjobs worker --app module:attribute`` loads an ``App`` and runs its jobs. Settings given
    here win over every other source (files, environment, CLI flags); a setting given as ``None``
    is not given, so ``App(database_url=os.environ.get("DATABASE_URL"))`` with the variable unset
    falls back to the other sources, and in the CLI to its embedded server.

    Example::

        app = pgjobs.App()

        @app.job(queue="mailers", max_attempts=5)
        def send_welcome_email(user_id: int) -> None: ...

        send_welcome_email.using(session).enqueue(42)
    """

    def __init__(self, **settings: Any) -> None:
        self._explicit = {name: value for name, value in settings.items() if value is not None}
        self._flags: dict[str, Any] = {}
        self._settings: Settings | None = None
        self._jobs: dict[str, Job[..., Any]] = {}
        self._cron: dict[str, CronEntry] = {}
        self._queue_limits: dict[str, QueueLimits] = {}
        self.seam = Seam()
        """The middleware, error handlers and observers registered on this app."""
        self._client = Client(lambda: self.settings, self.seam)

    @property
    def settings(self) -> Settings:
        """Every source merged (see :func:`load_settings`). Unless a source names the
        ``queues``, a worker of this app serves :attr:`declared_queues`, each as often first."""
        if self._settings is None:
            queues = str(QueueSpec.evenly(self.declared_queues))
            self._settings = load_settings(
                {**self._flags, **self._explicit}, defaults={"queues": queues}
            )
        return self._settings

    def configure(self, **flags: Any) -> None:
        """Apply CLI-level settings (below the ones given to ``App(...)``); used by the CLI."""
        self._flags = flags
        self._settings = None

    @property
    def _queries(self) -> Queries:
        return queries_for(self.settings.schema)

    @property
    def declared_queues(self) -> tuple[str, ...]:
        """``default`` and every queue this app's jobs and :meth:`queue` declarations name,
        sorted: the queues its workers serve unless told otherwise."""
        jobs = (job.queue for job in self._jobs.values())
        return tuple(sorted({"default", *jobs, *self._queue_limits}))

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
        on_exhausted: ExhaustedHook | None = None,
        timeout: timedelta | float | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        unique: Unique | bool = False,
        partition_by: str | None = None,
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
        on_exhausted: ExhaustedHook | None = None,
        timeout: timedelta | float | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        unique: Unique | bool = False,
        partition_by: str | None = None,
    ) -> Job[P, R] | Callable[[Callable[P, R]], Job[P, R]]:
        """Register a function (``def`` or ``async def``) as a job.

        Args:
            name: the stable name stored in each row; defaults to ``module.qualname``. Keep it
                when you move the function, or queued jobs will no longer find it.
            queue, priority, max_attempts: defaults for each enqueue (lower priority runs first).
            retry: ``(attempt, exception) -> delay or None``; ``None`` discards. Defaults to
                Sidekiq's exponential backoff.
            discard_on: exception types that discard the job at once, without retries.
            on_exhausted: called when the job is discarded, with ``(job, exc)`` (the
                :class:`JobContext` and the last exception) or with ``exc`` alone.
            timeout: seconds an attempt may run (default: no limit). An ``async def`` job is
                cancelled at the deadline; a ``def`` job's thread cannot be stopped, so its
                attempt fails at the deadline and the worker retires once its other jobs end (see
                the guide). Either way the attempt fails with :class:`JobTimeout` and is retried
                per ``retry``.
            cron, tz: enqueue the job (without arguments) at each tick of this cron expression in
                this IANA time zone; the same as :meth:`periodic` with its defaults.
            unique: a :class:`Unique` (``True`` for ``Unique()``): at most one job of this name
                and key exists while in the given states; a duplicate enqueue returns the
                existing job's id with ``duplicate=True`` (see the guide).
            partition_by: the name of a parameter whose argument is each run's partition key
                (a tenant, an account): the unit a queue's limits count in when the queue is
                partitioned by ``"key"`` (see :meth:`queue`).
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if seconds is not None and not seconds > 0:
            raise ConfigError("timeout: must be a positive number of seconds, or None")

        def register(f: Callable[P, R]) -> Job[P, R]:
            job_name = name or f"{f.__module__}.{f.__qualname__}"
            check_job_name(job_name)
            if job_name in self._jobs:
                raise ConfigError(f"a job named {job_name!r} is already registered")
            if "conn" in inspect.signature(f).parameters:
                raise ConfigError(
                    f"{job_name}: 'conn' is reserved for enqueue(conn=...); rename it"
                )
            if partition_by is not None and partition_by not in inspect.signature(f).parameters:
                raise ConfigError(
                    f"{job_name}: partition_by={partition_by!r} is not one of its parameters"
                )
            options = EnqueueOptions(queue=queue, priority=priority, max_attempts=max_attempts)
            options.checked()
            declared = (
                Unique() if unique is True else unique if isinstance(unique, Unique) else None
            )
            if declared is not None:
                declared._checked(job_name, inspect.signature(f))
            job = Job(
                self._client,
                f,
                name=job_name,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                retry=retry,
                discard_on=discard_on,
                on_exhausted=on_exhausted,
                timeout=seconds,
                unique=declared,
                partition_by=partition_by,
            )
            entry = None if cron is None else self._unique(_cron.declare(job, cron=cron, tz=tz))
            self._jobs[job_name] = job
            self._settings = None  # its queue may be new to the workers' default
            if entry is not None:
                self._cron[entry.name] = entry
            return job

        return register(func) if func is not None else register

    def enqueue_middleware(self, func: E, /) -> E:
        """Register an enqueue middleware: a generator function of one parameter, an
        :class:`Enqueuing`, called once for each job being enqueued; the insert happens at its
        ``yield``, which returns the job's :class:`JobId`. It may set the job's ``meta`` and
        options; raising before the yield refuses the whole enqueue call (nothing is written).
        An ``async def`` one is allowed, but only ``enqueue_async`` paths can run it. The first
        registered is the outermost (see the guide).

        Raises:
            ConfigError: ``func`` is not a generator function of exactly one positional
                parameter.
        """
        self.seam.enqueue += (_middleware.middleware(func, "enqueue"),)
        return func

    def run_middleware(self, func: M, /) -> M:
        """Register a run middleware: a generator function of one parameter, the running
        job's :class:`JobContext`; the job runs at its ``yield``, where its exception is thrown
        in. Returning before the yield skips the job (it completes without running); catching
        the job's exception and ending normally completes the attempt; raising (say,
        :class:`Snooze`) makes that the attempt's outcome. For a ``def`` job a ``def``
        middleware runs in the job's thread; ``async def`` ones run on the event loop.

        Raises:
            ConfigError: ``func`` is not a generator function of exactly one positional
                parameter.
        """
        self.seam.add_run(_middleware.middleware(func, "run"))
        return func

    def on_error(self, func: H, /) -> H:
        """Register a handler ``(job, exc)`` (``def`` or ``async def``) called after every
        failed attempt, retried or discarded (not a snooze or cancel). It runs within the job's
        timeout, or 30 s; its failure is logged and never changes the outcome."""
        self.seam.on_error += (_middleware.handler(func, "on_error"),)
        return func

    def on_death(self, func: H, /) -> H:
        """Register a handler ``(job, exc)`` called once when a job is discarded, after its
        ``on_exhausted`` hook; bounded and contained as :meth:`on_error`'s."""
        self.seam.on_death += (_middleware.handler(func, "on_death"),)
        return func

    def on_job_start(self, func: StartObserver, /) -> StartObserver:
        """Register an observer ``(job)`` called in the worker as each attempt begins, before
        the run middleware, with the job's :class:`JobContext`. It runs on the worker's event
        loop: it must be quick and must not block (a ``def``; ``async def`` is refused). One
        that raises is logged with its name and changes nothing.

        Raises:
            ConfigError: ``func`` is not a plain function of one positional parameter.
        """
        self.seam.on_job_start += (_observers.observer(func, "on_job_start", 1),)
        return func

    def on_job_end(self, func: EndObserver, /) -> EndObserver:
        """Register an observer ``(job, outcome)`` called in the worker once each attempt's
        :class:`JobOutcome` is decided (its state, delay, error and run time), before it is
        written: for metrics and logs of your own. Quick, non-blocking and contained as
        :meth:`on_job_start`'s.

        Example::

            @app.on_job_end
            def count(job: pgjobs.JobContext, outcome: pgjobs.JobOutcome) -> None:
                statsd.timing(f"jobs.{job.name}.{outcome.state}", outcome.seconds * 1000)

        Raises:
            ConfigError: ``func`` is not a plain function of two positional parameters.
        """
        self.seam.on_job_end += (_observers.observer(func, "on_job_end", 2),)
        return func

    def periodic(
        self,
        job: Job[..., Any],
        *,
        cron: str,
        tz: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        catch_up: CatchUp = "latest",
        tick_kwarg: str | None = None,
    ) -> None:
        """Enqueue ``job(*args, **kwargs)`` at each tick of ``cron`` in time zone ``tz``.

        Every worker (but a ``--burst`` one) schedules the entries of its code, and each tick is
        enqueued exactly once however many run: the ``cron_entries`` table keeps one row per
        entry, and its last tick. Needs ``pip install 'pgjobs[cron]'``.

        Args:
            cron: five fields (minute hour day month weekday), six with a seconds field first
                (``*/10 * * * * *``: every 10 s), or ``@hourly``, ``@daily``, ``@weekly``,
                ``@monthly``, ``@yearly``.
            tz: an IANA zone (``Europe/Berlin``); ticks follow its daylight saving time.
            name: the entry's name (unique; defaults to the job's), for ``pgjobs cron``.
            catch_up: ticks missed while no worker ran: ``"latest"`` enqueues the newest once,
                ``"none"`` none, a ``timedelta`` every one within it. Ticks at most 60 s late
                are always enqueued.
            tick_kwarg: a keyword parameter of the job that receives the tick, as ISO 8601 text.

        Raises:
            ConfigError: a malformed expression (naming the field), an unknown zone, a name
                already used, arguments that do not fit the job or are not JSON.
        """
        if self._jobs.get(job.name) is not job:
            raise ConfigError(
                f"cron entry {name or job.name!r}: {job.name!r} is not a job of this app; "
                "register it with @app.job first"
            )
        entry = _cron.declare(
            job,
            name=name,
            cron=cron,
            tz=tz,
            args=args,
            kwargs=kwargs,
            catch_up=catch_up,
            tick_kwarg=tick_kwarg,
        )
        self._cron[self._unique(entry).name] = entry

    def _unique(self, entry: CronEntry) -> CronEntry:
        """``entry``, unless another entry has its name."""
        if entry.name in self._cron:
            raise ConfigError(f"a cron entry named {entry.name!r} is already declared")
        return entry

    @property
    def cron_entries(self) -> Mapping[str, CronEntry]:
        """Declared cron entries by name."""
        return dict(self._cron)

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: Rate | None = None,
        partition_by: str | None = None,
    ) -> None:
        """Declare queue ``name`` and its limits; workers that consume it store them at start.
        The app's workers serve it unless told which queues to serve (see :attr:`settings`).

        Args:
            concurrency: at most this many of its jobs run at once, across every worker and
                host (per partition, when partitioned).
            rate: ``(starts, period)``: at most ``starts`` jobs start in any ``period`` (a
                timedelta or seconds), e.g. ``(100, timedelta(minutes=1))``. Jobs over the limit
                wait; they do not fail or use an attempt.
            partition_by: ``None`` (the limits hold for the whole queue), ``"job"`` (per job
                name), ``"key"`` (per partition key: see ``partition_by`` of :meth:`job` and
                ``partition_key`` of :meth:`Job.options`) or ``"job,key"``.

        Raises:
            ConfigError: a limit below 1, a bad period or partition, or a bad queue name.
        """
        try:
            _queues.check_queue_name(name)
            self._queue_limits[name] = _queues.check_limits(concurrency, rate, partition_by)
        except ValidationError as exc:
            raise ConfigError(f"queue {name!r}: {exc}") from None
        self._settings = None  # the workers' default queues include it

    @property
    def queue_limits(self) -> Mapping[str, QueueLimits]:
        """The limits declared with :meth:`queue`, by queue name."""
        return dict(self._queue_limits)

    def pause_queue(self, name: str, *, conn: Connection = None) -> None:
        """Pause queue ``name``: from the next claim on, no worker on any host starts its jobs;
        running ones finish. The state is stored, so it survives restarts. Same as
        ``SELECT pgjobs.pause_queue('name')``."""
        self._client.run(_queues.pause(self._queries, name), conn)

    async def pause_queue_async(self, name: str, *, conn: AsyncConnection = None) -> None:
        """:meth:`pause_queue` for async code."""
        await self._client.run_async(_queues.pause(self._queries, name), conn)

    def resume_queue(self, name: str, *, conn: Connection = None) -> None:
        """Resume a paused queue (nothing happens to one that is not paused); its workers are
        woken at once."""
        self._client.run(_queues.resume(self._queries, name), conn)

    async def resume_queue_async(self, name: str, *, conn: AsyncConnection = None) -> None:
        """:meth:`resume_queue` for async code."""
        await self._client.run_async(_queues.resume(self._queries, name), conn)

    def set_queue_limits(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: Rate | str | None = None,
        partition_by: str | None = None,
        conn: Connection = None,
    ) -> None:
        """Set queue ``name``'s limits now, as :meth:`queue` declares them (``None`` clears
        one; a rate may also be text such as ``"100/1m"``). Workers learn of it at once. A
        worker that starts later stores its app's declared limits again.

        Raises:
            ValidationError: a limit below 1, a bad rate or partition; nothing is written.
        """
        limits = _queues.check_limits(concurrency, rate, partition_by)
        self._client.run(_queues.set_limits(self._queries, name, limits), conn)

    async def set_queue_limits_async(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: Rate | str | None = None,
        partition_by: str | None = None,
        conn: AsyncConnection = None,
    ) -> None:
        """:meth:`set_queue_limits` for async code."""
        limits = _queues.check_limits(concurrency, rate, partition_by)
        await self._client.run_async(_queues.set_limits(self._queries, name, limits), conn)

    def list_queues(self, *, conn: Connection = None) -> list[QueueRecord]:
        """Every configured queue and every queue with waiting or running jobs, by name: its
        settings (paused, limits), whether the latest claim held jobs back under its concurrency
        limit, and its available and running jobs (see :class:`QueueRecord`)."""
        return self._client.run(_queues.list_queues(self._queries), conn)

    async def list_queues_async(self, *, conn: AsyncConnection = None) -> list[QueueRecord]:
        """:meth:`list_queues` for async code."""
        return await self._client.run_async(_queues.list_queues(self._queries), conn)

    def get(self, name: str) -> Job[..., Any]:
        """The job registered as ``name``; :class:`UnknownJobError` if there is none."""
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise UnknownJobError(f"no job named {name!r} is registered (known: {known})") from None

    def enqueue_many(self, calls: Iterable[JobCall], *, conn: Connection = None) -> list[JobId]:
        """Enqueue many jobs in one statement; returns their ids in order.

        A unique job's id says whether it was a ``duplicate``: of a job that held its key, or of
        an earlier call with the same key in ``calls`` (with ``replace``, of the last one).

        ``conn`` works as in :meth:`Job.using`: all of the jobs commit or roll back with it.
        """
        return self._client.enqueue_many(calls, conn)

    async def enqueue_many_async(
        self, calls: Iterable[JobCall], *, conn: AsyncConnection = None
    ) -> list[JobId]:
        """:meth:`enqueue_many` for async code."""
        return await self._client.enqueue_many_async(calls, conn)

    def get_job(self, job_id: int, *, conn: Connection = None) -> JobRecord | None:
        """Job ``job_id`` as a :class:`JobRecord` of its columns (``errors``, ``result`` and
        ``progress`` included), ``None`` if there is no such job.

        ``conn`` (here and in every admin method) is the caller's connection or session, as in
        :meth:`Job.using`: the call then sees and joins its transaction. Without it the call runs
        on pgjobs' own connection pool, and its change, if any, is committed at once.
        """
        return self._client.run(_admin.get_job(self._queries, job_id), conn)

    async def get_job_async(self, job_id: int, *, conn: AsyncConnection = None) -> JobRecord | None:
        """:meth:`get_job` for async code."""
        return await self._client.run_async(_admin.get_job(self._queries, job_id), conn)

    def get_result(self, job_id: int, *, conn: Connection = None) -> Any:
        """What completed job ``job_id`` returned, as JSON gives it back (``None`` when it
        returned ``None``, or once its result is past ``result_retention``).

        Raises:
            ValueError: there is no such job, or it has not completed (the message names its
                state: wait for it with :meth:`wait_for`).
        """
        return self._client.run(_admin.get_result(self._queries, job_id), conn)

    async def get_result_async(self, job_id: int, *, conn: AsyncConnection = None) -> Any:
        """:meth:`get_result` for async code."""
        return await self._client.run_async(_admin.get_result(self._queries, job_id), conn)

    def wait_for(self, job_id: int, timeout: float) -> JobRecord:
        """Wait until job ``job_id`` has ended (completed, discarded or cancelled) and return
        its final :class:`JobRecord`, as :meth:`get_job` gives it: ``state``, ``result``,
        ``errors``...

        Woken by a notification as the job ends, on a connection of its own (behind a
        transaction pooler, set ``listen_database_url``; else it reads the job every
        ``poll_interval``). Blocks the calling thread: in async code use :meth:`wait_for_async`.

        Example::

            job_id = resize.enqueue(image_id)
            record = app.wait_for(job_id, timeout=30)
            if record.state == "completed":
                print(record.result)

        Raises:
            ValueError: there is no such job (at once), or it was deleted while waited for.
            TimeoutError: it has not ended within ``timeout`` seconds; the message names its
                state.
            ValidationError: ``timeout`` is not a positive number of seconds.
        """
        with self._client.translated_errors():
            return _waiting.wait_for(self.settings, self._queries, job_id, timeout)

    async def wait_for_async(self, job_id: int, timeout: float) -> JobRecord:
        """:meth:`wait_for` for async code."""
        with self._client.translated_errors():
            return await _waiting.wait_for_async(self.settings, self._queries, job_id, timeout)

    def list_jobs(
        self,
        *,
        states: Iterable[str] | None = None,
        queues: Iterable[str] | None = None,
        limit: int = 50,
        conn: Connection = None,
    ) -> list[JobRecord]:
        """Jobs (:class:`JobRecord`), newest first, optionally only in some states and
        queues."""
        return self._client.run(_admin.list_jobs(self._queries, states, queues, limit), conn)

    async def list_jobs_async(
        self,
        *,
        states: Iterable[str] | None = None,
        queues: Iterable[str] | None = None,
        limit: int = 50,
        conn: AsyncConnection = None,
    ) -> list[JobRecord]:
        """:meth:`list_jobs` for async code."""
        operation = _admin.list_jobs(self._queries, states, queues, limit)
        return await self._client.run_async(operation, conn)

    def retry(self, job_id: int, *, conn: Connection = None) -> bool:
        """Put a finished, discarded or waiting job back to run now; ``False`` if it does not exist.

        Raises:
            ValueError: the job is running (wait for it to finish), or it is unique and another
                job holds its key now.
        """
        return self._client.run(_admin.retry(self._queries, job_id), conn)

    async def retry_async(self, job_id: int, *, conn: AsyncConnection = None) -> bool:
        """:meth:`retry` for async code."""
        return await self._client.run_async(_admin.retry(self._queries, job_id), conn)

    def retry_all(
        self,
        *,
        states: Iterable[str] = ("discarded",),
        queues: Iterable[str] | None = None,
        names: Iterable[str] | None = None,
        conn: Connection = None,
    ) -> int:
        """Put every job in ``states`` (by default the discarded ones), optionally only of some
        queues and job names, back to run now; returns how many.

        Running jobs are never touched, nor a job a worker claims while this runs. Each job gets
        one more attempt if it had used them all, as with :meth:`retry`. A unique job whose key
        another job holds stays as it is; of unique jobs that share a key, one runs again.

        Raises:
            ValidationError: no state, an unknown one, or ``running``.
        """
        operation = _admin.retry_all(self._queries, states, queues, names)
        return self._client.run(operation, conn)

    async def retry_all_async(
        self,
        *,
        states: Iterable[str] = ("discarded",),
        queues: Iterable[str] | None = None,
        names: Iterable[str] | None = None,
        conn: AsyncConnection = None,
    ) -> int:
        """:meth:`retry_all` for async code."""
        operation = _admin.retry_all(self._queries, states, queues, names)
        return await self._client.run_async(operation, conn)

    def cancel(self, job_id: int, *, conn: Connection = None) -> str | None:
        """Cancel a job; returns what became of it, ``None`` if there is no such job.

        ``"cancelled"``: it was waiting (scheduled, available or retryable) and will never run.
        ``"cancelling"``: it is running; its worker is told at once (an ``async def`` job is
        cancelled, a ``def`` job sees ``current_job().cancelled``) and it ends ``cancelled``.
        ``"already completed"``, ``"already discarded"``, ``"already cancelled"``: it had ended
        and is left as it is. The same as ``SELECT pgjobs.cancel_job(id)`` in SQL.
        """
        return self._client.run(_admin.cancel(self._queries, job_id), conn)

    async def cancel_async(self, job_id: int, *, conn: AsyncConnection = None) -> str | None:
        """:meth:`cancel` for async code."""
        return await self._client.run_async(_admin.cancel(self._queries, job_id), conn)

    def delete_job(self, job_id: int, *, conn: Connection = None) -> bool:
        """Delete a job that is not running; ``False`` if there is no such job.

        Raises:
            ValueError: the job is running, or it belongs to a batch and has not ended (the
                batch's counts wait for it): cancel it instead.
        """
        return self._client.run(_admin.delete_job(self._queries, job_id), conn)

    async def delete_job_async(self, job_id: int, *, conn: AsyncConnection = None) -> bool:
        """:meth:`delete_job` for async code."""
        return await self._client.run_async(_admin.delete_job(self._queries, job_id), conn)

    def run_job_now(self, job_id: int, *, conn: Connection = None) -> bool:
        """Make a scheduled or retryable job available now (an idle worker starts it at once);
        ``False`` if there is no such job. Its attempt is not changed.

        Raises:
            ValueError: the job is neither scheduled nor retryable.
        """
        return self._client.run(_admin.run_job_now(self._queries, job_id), conn)

    async def run_job_now_async(self, job_id: int, *, conn: AsyncConnection = None) -> bool:
        """:meth:`run_job_now` for async code."""
        return await self._client.run_async(_admin.run_job_now(self._queries, job_id), conn)

    def list_workers(self, *, conn: Connection = None) -> list[WorkerRecord]:
        """The registered workers (:class:`WorkerRecord`), oldest first, with their heartbeat
        age, leadership and number of running jobs."""
        return self._client.run(_admin.list_workers(self._queries), conn)

    async def list_workers_async(self, *, conn: AsyncConnection = None) -> list[WorkerRecord]:
        """:meth:`list_workers` for async code."""
        return await self._client.run_async(_admin.list_workers(self._queries), conn)

    def queue_counts(self, *, conn: Connection = None) -> dict[str, dict[str, int]]:
        """``{queue: {state: jobs}}`` from the ``queue_counts`` view."""
        return self._client.run(_admin.queue_counts(self._queries), conn)

    async def queue_counts_async(
        self, *, conn: AsyncConnection = None
    ) -> dict[str, dict[str, int]]:
        """:meth:`queue_counts` for async code."""
        return await self._client.run_async(_admin.queue_counts(self._queries), conn)

    def batch(
        self,
        *,
        on_success: JobCall | None = None,
        on_complete: JobCall | None = None,
        description: str | None = None,
        conn: Connection = None,
    ) -> Batch:
        """Create a batch: a group of jobs with callback jobs enqueued once all have ended.

        ``on_complete`` runs once every job of the batch has ended, whatever the outcome;
        ``on_success`` once every one has completed (if some were discarded or cancelled, it runs
        when they are retried and complete). Each callback is enqueued exactly once, and finds
        its batch in ``pgjobs.current_job().batch_id``. Nothing fires before the batch is
        sealed: at the end of the ``with`` block, or by :meth:`Batch.seal`.

        ``conn`` works as in :meth:`Job.using`: the batch, the jobs added through it and its
        sealing commit or roll back with the caller's transaction.

        Example::

            with app.batch(on_success=report.call("import"), conn=session) as batch:
                batch.enqueue_many(import_row.call(row_id) for row_id in row_ids)

        Raises:
            ValidationError: a callback's job is not registered in this app, or has a start
                time; nothing was written.
        """
        if self._client.recorder is not None:
            return self._client.recorder.batch(on_success, on_complete, description, conn)
        return Batch(
            self._client,
            self._queries,
            self._client.run(self._create(on_success, on_complete, description), conn),
            conn,
        )

    async def batch_async(
        self,
        *,
        on_success: JobCall | None = None,
        on_complete: JobCall | None = None,
        description: str | None = None,
        conn: AsyncConnection = None,
    ) -> AsyncBatch:
        """:meth:`batch` for async code: ``async with await app.batch_async(...) as batch:``."""
        if self._client.recorder is not None:
            return await self._client.recorder.batch_async(
                on_success, on_complete, description, conn
            )
        operation = self._create(on_success, on_complete, description)
        batch_id = await self._client.run_async(operation, conn)
        return AsyncBatch(self._client, self._queries, batch_id, conn)

    def _create(
        self, on_success: JobCall | None, on_complete: JobCall | None, description: str | None
    ) -> _admin.Operation[int]:
        trace_context = self._client.trace_context()
        return _batches.create(
            self._queries,
            description,
            _batches.callback_template(self._jobs, "on_success", on_success, trace_context),
            _batches.callback_template(self._jobs, "on_complete", on_complete, trace_context),
        )

    def add_to_batch(
        self, batch_id: int, calls: Iterable[JobCall], *, conn: Connection = None
    ) -> list[int]:
        """Enqueue jobs in batch ``batch_id``, sealed or not (e.g. from a job of the batch, with
        ``pgjobs.current_job().batch_id``); returns their ids. Its callbacks wait for them.

        Raises:
            ValidationError: no such batch, or it has finished (its callbacks were enqueued);
                nothing was written and the caller's transaction is usable.
        """
        return self._client.add_to_batch(batch_id, calls, conn)

    async def add_to_batch_async(
        self, batch_id: int, calls: Iterable[JobCall], *, conn: AsyncConnection = None
    ) -> list[int]:
        """:meth:`add_to_batch` for async code."""
        return await self._client.add_to_batch_async(batch_id, calls, conn)

    def seal_batch(self, batch_id: int, *, conn: Connection = None) -> None:
        """Seal batch ``batch_id`` (as :meth:`Batch.seal`): for a batch whose creating code
        failed before sealing it. The same as ``SELECT pgjobs.seal_batch(id)`` in SQL."""
        self._client.run(_batches.seal(self._queries, batch_id), conn)

    async def seal_batch_async(self, batch_id: int, *, conn: AsyncConnection = None) -> None:
        """:meth:`seal_batch` for async code."""
        await self._client.run_async(_batches.seal(self._queries, batch_id), conn)

    def batch_status(self, batch_id: int, *, conn: Connection = None) -> BatchRecord | None:
        """Batch ``batch_id`` (:class:`BatchRecord`): its counters (``total``, ``pending``,
        ``succeeded``, ``failed``), ``sealed``, its callback jobs' ids once enqueued,
        ``created_at``, ``sealed_at`` and ``finished_at``; ``None`` if there is no such
        batch."""
        return self._client.run(_batches.status(self._queries, batch_id), conn)

    async def batch_status_async(
        self, batch_id: int, *, conn: AsyncConnection = None
    ) -> BatchRecord | None:
        """:meth:`batch_status` for async code."""
        return await self._client.run_async(_batches.status(self._queries, batch_id), conn)

    def batch_results(self, batch_id: int, *, conn: Connection = None) -> dict[int, Any]:
        """``{job id: result}`` for every completed job of batch ``batch_id`` (its callbacks
        left out), in id order: what its ``on_success`` callback gathers. Jobs that have not
        completed are missing; an unknown batch gives ``{}``."""
        return self._client.run(_admin.batch_results(self._queries, batch_id), conn)

    async def batch_results_async(
        self, batch_id: int, *, conn: AsyncConnection = None
    ) -> dict[int, Any]:
        """:meth:`batch_results` for async code."""
        return await self._client.run_async(_admin.batch_results(self._queries, batch_id), conn)

    def list_batches(self, *, limit: int = 50, conn: Connection = None) -> list[BatchRecord]:
        """Batches as :meth:`batch_status` gives them, newest first."""
        return self._client.run(_batches.list_batches(self._queries, limit), conn)

    async def list_batches_async(
        self, *, limit: int = 50, conn: AsyncConnection = None
    ) -> list[BatchRecord]:
        """:meth:`list_batches` for async code."""
        return await self._client.run_async(_batches.list_batches(self._queries, limit), conn)

    def list_cron(self, *, conn: Connection = None) -> list[CronRecord]:
        """Every row of ``cron_entries`` and every entry this app declares
        (:class:`CronRecord`), by name, with
        ``in_code`` (this app declares it: entries no running code declares are never
        enqueued), ``registered`` (it has a row: a worker, or a call below, stored it; a worker
        schedules the entries of its code at start) and ``next_runs`` (its next three ticks).
        ``last_job_kind`` says whether a ``"tick"`` or a ``"run now"`` enqueued the last job
        (``None``: no job yet, or it was deleted since). Reads only."""
        return self._client.run(_admin.list_cron(self._queries, self._describe_cron), conn)

    async def list_cron_async(self, *, conn: AsyncConnection = None) -> list[CronRecord]:
        """:meth:`list_cron` for async code."""
        operation = _admin.list_cron(self._queries, self._describe_cron)
        return await self._client.run_async(operation, conn)

    def pause_cron(self, name: str, *, conn: Connection = None) -> None:
        """Stop enqueuing cron entry ``name``: its ticks pass without a job, and resuming does
        not replay them. The same as ``SELECT pgjobs.pause_cron(name)``. An entry this app
        declares is stored first if no worker has yet (here and in :meth:`resume_cron` and
        :meth:`run_cron`).

        Raises:
            ValidationError: there is no such entry.
        """
        self._register_cron(name, conn)
        self._client.run(_admin.pause_cron(self._queries, name), conn)

    async def pause_cron_async(self, name: str, *, conn: AsyncConnection = None) -> None:
        """:meth:`pause_cron` for async code."""
        await self._register_cron_async(name, conn)
        await self._client.run_async(_admin.pause_cron(self._queries, name), conn)

    def resume_cron(self, name: str, *, conn: Connection = None) -> None:
        """Enqueue cron entry ``name`` again from its next tick on
        (``SELECT pgjobs.resume_cron(name)``)."""
        self._register_cron(name, conn)
        self._client.run(_admin.resume_cron(self._queries, name), conn)

    async def resume_cron_async(self, name: str, *, conn: AsyncConnection = None) -> None:
        """:meth:`resume_cron` for async code."""
        await self._register_cron_async(name, conn)
        await self._client.run_async(_admin.resume_cron(self._queries, name), conn)

    def run_cron(self, name: str, *, conn: Connection = None) -> int:
        """Enqueue cron entry ``name``'s job now, paused or not, outside its ticks; returns the
        job's id (``SELECT pgjobs.run_cron(name)``). A ``tick_kwarg`` gets the current time. The
        entry's last run is then this job, a ``"run now"`` (see :meth:`list_cron`)."""
        self._register_cron(name, conn)
        return self._client.run(_admin.run_cron(self._queries, name), conn)

    async def run_cron_async(self, name: str, *, conn: AsyncConnection = None) -> int:
        """:meth:`run_cron` for async code."""
        await self._register_cron_async(name, conn)
        return await self._client.run_async(_admin.run_cron(self._queries, name), conn)

    def _register_cron(self, name: str, conn: Connection) -> None:
        """Store entry ``name`` as a worker's start would, if this app declares it and it has no
        row yet: so that the CLI can pause or run it before any worker ran."""
        entry = self._cron.get(name)
        if entry is not None:
            self._client.run(_cron.register(self._queries, [entry]), conn)

    async def _register_cron_async(self, name: str, conn: AsyncConnection) -> None:
        entry = self._cron.get(name)
        if entry is not None:
            await self._client.run_async(_cron.register(self._queries, [entry]), conn)

    def _describe_cron(self, rows: list[dict[str, Any]]) -> list[CronRecord]:
        return _cron.listing(rows, self._cron, datetime.now(UTC))

    def _run(self, operation: _admin.Operation[T]) -> T:
        """Run ``operation`` on pgjobs' own pool: for the modules of pgjobs that read what the
        App's admin calls do not give (metrics)."""
        return self._client.run(operation)

    async def _read_async(
        self, *statements: tuple[str, Mapping[str, Any]]
    ) -> list[list[dict[str, Any]]]:
        """The rows of each statement, run one after another in one transaction on pgjobs' own
        pool, never prepared: the dashboard's page reads (see :meth:`Client.read_async
        <pgjobs._client.Client.read_async>`)."""
        return await self._client.read_async(statements)

    def _record_enqueues(self, recorder: Recorder | None) -> None:
        """Hand every enqueue, batch and batch addition to ``recorder`` instead of the database
        (``None``: write them again). For :mod:`pgjobs.testing`."""
        self._client.recorder = recorder

    def close(self) -> None:
        """Close pgjobs' own connection pool (the async one must be closed with ``aclose``)."""
        self._client.close()

    async def aclose(self) -> None:
        await self._client.aclose()
