"""The job registry (:class:`App`): jobs by name, settings, and the entry point to enqueue and
administer them through its :class:`~pgjobs._client.Client`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from . import _admin, _queues
from ._client import Client
from ._errors import ConfigError, UnknownJobError, ValidationError
from ._job import EnqueueOptions, Job, JobCall
from ._outcome import RetryPolicy, sidekiq_backoff
from ._queues import QueueLimits, Rate
from ._settings import Settings, load_settings
from ._sql import Queries, queries_for
from ._validation import check_job_name

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_ATTEMPTS = 25


class App:
    """The registry of jobs, and the entry point to enqueue them.

    ``pgjobs worker --app module:attribute`` loads an ``App`` and runs its jobs. Settings given
    here win over every other source (files, environment, CLI flags).

    Example::

        app = pgjobs.App()

        @app.job(queue="mailers", max_attempts=5)
        def send_welcome_email(user_id: int) -> None: ...

        send_welcome_email.using(session).enqueue(42)
    """

    def __init__(self, **settings: Any) -> None:
        self._explicit = settings
        self._flags: dict[str, Any] = {}
        self._settings: Settings | None = None
        self._jobs: dict[str, Job[..., Any]] = {}
        self._queue_limits: dict[str, QueueLimits] = {}
        self._client = Client(lambda: self.settings)

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
        on_exhausted: Callable[[BaseException], object] | None = None,
        timeout: timedelta | float | None = None,
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
            on_exhausted: called with the last exception when the job is discarded.
            timeout: seconds an attempt may run (default: no limit). An ``async def`` job is
                cancelled at the deadline; a ``def`` job's thread cannot be stopped, so its
                attempt fails at the deadline and the worker retires once its other jobs end (see
                the guide). Either way the attempt fails with :class:`JobTimeout` and is retried
                per ``retry``.
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
                partition_by=partition_by,
            )
            self._jobs[job_name] = job
            return job

        return register(func) if func is not None else register

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: Rate | None = None,
        partition_by: str | None = None,
    ) -> None:
        """Declare limits for queue ``name``; workers that consume it store them at start.

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

    @property
    def queue_limits(self) -> Mapping[str, QueueLimits]:
        """The limits declared with :meth:`queue`, by queue name."""
        return dict(self._queue_limits)

    def pause_queue(self, name: str, *, conn: Any = None) -> None:
        """Pause queue ``name``: from the next claim on, no worker on any host starts its jobs;
        running ones finish. The state is stored, so it survives restarts. Same as
        ``SELECT pgjobs.pause_queue('name')``."""
        self._client.run(_queues.pause(self.queries, name), conn)

    async def pause_queue_async(self, name: str, *, conn: Any = None) -> None:
        """:meth:`pause_queue` for async code."""
        await self._client.run_async(_queues.pause(self.queries, name), conn)

    def resume_queue(self, name: str, *, conn: Any = None) -> None:
        """Resume a paused queue (nothing happens to one that is not paused); its workers are
        woken at once."""
        self._client.run(_queues.resume(self.queries, name), conn)

    async def resume_queue_async(self, name: str, *, conn: Any = None) -> None:
        """:meth:`resume_queue` for async code."""
        await self._client.run_async(_queues.resume(self.queries, name), conn)

    def set_queue_limits(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: Rate | str | None = None,
        partition_by: str | None = None,
        conn: Any = None,
    ) -> None:
        """Set queue ``name``'s limits now, as :meth:`queue` declares them (``None`` clears
        one; a rate may also be text such as ``"100/1m"``). Workers learn of it at once. A
        worker that starts later stores its app's declared limits again.

        Raises:
            ValidationError: a limit below 1, a bad rate or partition; nothing is written.
        """
        limits = _queues.check_limits(concurrency, rate, partition_by)
        self._client.run(_queues.set_limits(self.queries, name, limits), conn)

    async def set_queue_limits_async(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: Rate | str | None = None,
        partition_by: str | None = None,
        conn: Any = None,
    ) -> None:
        """:meth:`set_queue_limits` for async code."""
        limits = _queues.check_limits(concurrency, rate, partition_by)
        await self._client.run_async(_queues.set_limits(self.queries, name, limits), conn)

    def list_queues(self, *, conn: Any = None) -> list[dict[str, Any]]:
        """Every configured queue and every queue with waiting or running jobs: ``name``,
        ``paused``, ``concurrency``, ``rate_limit``, ``rate_period`` (seconds), ``partition``,
        ``available`` and ``running`` jobs."""
        return self._client.run(_queues.list_queues(self.queries), conn)

    async def list_queues_async(self, *, conn: Any = None) -> list[dict[str, Any]]:
        """:meth:`list_queues` for async code."""
        return await self._client.run_async(_queues.list_queues(self.queries), conn)

    def get(self, name: str) -> Job[..., Any]:
        """The job registered as ``name``; :class:`UnknownJobError` if there is none."""
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise UnknownJobError(f"no job named {name!r} is registered (known: {known})") from None

    def enqueue_many(self, calls: Iterable[JobCall], *, conn: Any = None) -> list[int]:
        """Enqueue many jobs in one statement; returns their ids in order.

        ``conn`` works as in :meth:`Job.using`: all of the jobs commit or roll back with it.
        """
        return self._client.enqueue_many(calls, conn)

    async def enqueue_many_async(self, calls: Iterable[JobCall], *, conn: Any = None) -> list[int]:
        """:meth:`enqueue_many` for async code."""
        return await self._client.enqueue_many_async(calls, conn)

    def get_job(self, job_id: int, *, conn: Any = None) -> dict[str, Any] | None:
        """Job ``job_id`` as a dict of its columns (``errors`` included), ``None`` if there is
        no such job.

        ``conn`` (here and in every admin method) is the caller's connection or session, as in
        :meth:`Job.using`: the call then sees and joins its transaction. Without it the call runs
        on pgjobs' own connection pool, and its change, if any, is committed at once.
        """
        return self._client.run(_admin.get_job(self.queries, job_id), conn)

    async def get_job_async(self, job_id: int, *, conn: Any = None) -> dict[str, Any] | None:
        """:meth:`get_job` for async code."""
        return await self._client.run_async(_admin.get_job(self.queries, job_id), conn)

    def list_jobs(
        self,
        *,
        states: Iterable[str] | None = None,
        queues: Iterable[str] | None = None,
        limit: int = 50,
        conn: Any = None,
    ) -> list[dict[str, Any]]:
        """Jobs, newest first, optionally only in some states and queues."""
        return self._client.run(_admin.list_jobs(self.queries, states, queues, limit), conn)

    async def list_jobs_async(
        self,
        *,
        states: Iterable[str] | None = None,
        queues: Iterable[str] | None = None,
        limit: int = 50,
        conn: Any = None,
    ) -> list[dict[str, Any]]:
        """:meth:`list_jobs` for async code."""
        operation = _admin.list_jobs(self.queries, states, queues, limit)
        return await self._client.run_async(operation, conn)

    def retry(self, job_id: int, *, conn: Any = None) -> bool:
        """Put a finished, discarded or waiting job back to run now; ``False`` if it does not exist.

        Raises:
            ValueError: the job is running; wait for it to finish.
        """
        return self._client.run(_admin.retry(self.queries, job_id), conn)

    async def retry_async(self, job_id: int, *, conn: Any = None) -> bool:
        """:meth:`retry` for async code."""
        return await self._client.run_async(_admin.retry(self.queries, job_id), conn)

    def retry_all(
        self,
        *,
        states: Iterable[str] = ("discarded",),
        queues: Iterable[str] | None = None,
        names: Iterable[str] | None = None,
        conn: Any = None,
    ) -> int:
        """Put every job in ``states`` (by default the discarded ones), optionally only of some
        queues and job names, back to run now; returns how many.

        Running jobs are never touched, nor a job a worker claims while this runs. Each job gets
        one more attempt if it had used them all, as with :meth:`retry`.

        Raises:
            ValidationError: no state, an unknown one, or ``running``.
        """
        operation = _admin.retry_all(self.queries, states, queues, names)
        return self._client.run(operation, conn)

    async def retry_all_async(
        self,
        *,
        states: Iterable[str] = ("discarded",),
        queues: Iterable[str] | None = None,
        names: Iterable[str] | None = None,
        conn: Any = None,
    ) -> int:
        """:meth:`retry_all` for async code."""
        operation = _admin.retry_all(self.queries, states, queues, names)
        return await self._client.run_async(operation, conn)

    def cancel(self, job_id: int, *, conn: Any = None) -> str | None:
        """Cancel a job; returns what became of it, ``None`` if there is no such job.

        ``"cancelled"``: it was waiting (scheduled, available or retryable) and will never run.
        ``"cancelling"``: it is running; its worker is told at once (an ``async def`` job is
        cancelled, a ``def`` job sees ``current_job().cancelled``) and it ends ``cancelled``.
        ``"already completed"``, ``"already discarded"``, ``"already cancelled"``: it had ended
        and is left as it is. The same as ``SELECT pgjobs.cancel_job(id)`` in SQL.
        """
        return self._client.run(_admin.cancel(self.queries, job_id), conn)

    async def cancel_async(self, job_id: int, *, conn: Any = None) -> str | None:
        """:meth:`cancel` for async code."""
        return await self._client.run_async(_admin.cancel(self.queries, job_id), conn)

    def list_workers(self, *, conn: Any = None) -> list[dict[str, Any]]:
        """The registered workers, oldest first, with their heartbeat age, leadership and number
        of running jobs."""
        return self._client.run(_admin.list_workers(self.queries), conn)

    async def list_workers_async(self, *, conn: Any = None) -> list[dict[str, Any]]:
        """:meth:`list_workers` for async code."""
        return await self._client.run_async(_admin.list_workers(self.queries), conn)

    def queue_counts(self, *, conn: Any = None) -> dict[str, dict[str, int]]:
        """``{queue: {state: jobs}}`` from the ``queue_counts`` view."""
        return self._client.run(_admin.queue_counts(self.queries), conn)

    async def queue_counts_async(self, *, conn: Any = None) -> dict[str, dict[str, int]]:
        """:meth:`queue_counts` for async code."""
        return await self._client.run_async(_admin.queue_counts(self.queries), conn)

    def close(self) -> None:
        """Close pgjobs' own connection pool (the async one must be closed with ``aclose``)."""
        self._client.close()

    async def aclose(self) -> None:
        await self._client.aclose()
