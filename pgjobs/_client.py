"""The client: pgjobs' own connection pools, the caller's connections, error translation, and the
statements run on them (enqueue and the admin operations).

Sync and async share everything but the I/O: :mod:`._encoding` builds the insert statements'
parameters and :mod:`._admin` the admin operations in pure code; :func:`_run_insert` and
:meth:`Client.run`, and their async twins, only run them.
"""

from __future__ import annotations

import contextlib
import operator
import select
import threading
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from . import _batches, _connection, _middleware, _observers
from ._admin import Operation
from ._blockers import lock_wait_error
from ._encoding import COPY_THRESHOLD, copy_text, insert_params, single
from ._errors import DatabaseError, SchemaError
from ._middleware import Seam
from ._settings import Settings
from ._sql import Queries, queries_for
from ._unique import (
    JobId,
    Step,
    insert_unique,
    plan_batch,
    resolve,
    unique_copy_text,
    unique_params,
)

if TYPE_CHECKING:
    from ._batch import AsyncBatch, Batch
    from ._call import JobCall

T = TypeVar("T")

_unique_key = operator.attrgetter("unique_key")
"""A call's unique key (a non-empty text) or ``None``, read for each call of a batch in C."""


class Recorder(Protocol):
    """Takes enqueues instead of the client (:mod:`pgjobs.testing`: fake mode records them,
    inline mode writes them and runs them): set with ``App._record_enqueues``."""

    def enqueue(self, calls: list[JobCall], conn: Any) -> list[JobId]: ...

    async def enqueue_async(self, calls: list[JobCall], conn: Any) -> list[JobId]: ...

    def add_to_batch(self, batch_id: int, calls: list[JobCall], conn: Any) -> list[int]: ...

    async def add_to_batch_async(
        self, batch_id: int, calls: list[JobCall], conn: Any
    ) -> list[int]: ...

    def batch(
        self,
        on_success: JobCall | None,
        on_complete: JobCall | None,
        description: str | None,
        conn: Any,
    ) -> Batch: ...

    async def batch_async(
        self,
        on_success: JobCall | None,
        on_complete: JobCall | None,
        description: str | None,
        conn: Any,
    ) -> AsyncBatch: ...


class Client:
    """Runs pgjobs' statements on its own pools or on a caller's connection.

    ``settings`` is read when a pool opens or a statement runs, so settings applied after the
    client was made (``App.configure``) hold. The pools open on first use and stay open until
    :meth:`close` / :meth:`aclose`.
    """

    def __init__(self, settings: Callable[[], Settings], seam: Seam | None = None) -> None:
        self._settings = settings
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._async_pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self.seam = seam or Seam()
        """The app's middleware and observers, around every enqueue."""
        self.recorder: Recorder | None = None
        """Set by ``App._record_enqueues``: enqueues go to it (past the enqueue middleware),
        not to the database."""

    @property
    def settings(self) -> Settings:
        return self._settings()

    @property
    def queries(self) -> Queries:
        return queries_for(self.settings.schema)

    @property
    def prepare(self) -> bool | None:
        """``prepare=`` for statements on callers' connections: never behind a pooler that
        cannot keep them (``prepared_statements = false``), else psycopg's choice."""
        return None if self.settings.prepared_statements else False

    def enqueue_many(self, calls: Iterable[JobCall], conn: Any = None) -> list[JobId]:
        batch = calls if isinstance(calls, list) else list(calls)
        if self.seam.enqueue and batch:
            return _middleware.around_enqueue(
                self.seam, batch, lambda called: self._enqueue_traced(called, conn)
            )
        return self._enqueue_traced(batch, conn)

    def _enqueue_traced(self, batch: list[JobCall], conn: Any) -> list[JobId]:
        if self.recorder is not None:
            return self.recorder.enqueue(batch, conn)
        observers = self.seam.around_send
        if not observers or not batch:
            return self._enqueue_many(batch, conn, None)
        return _observers.around_send(
            observers, batch, None, lambda context: self._enqueue_many(batch, conn, context)
        )

    def _enqueue_many(
        self, batch: list[JobCall], conn: Any, trace_context: str | None
    ) -> list[JobId]:
        if any(map(_unique_key, batch)):
            with self.connection_for(conn) as driver:
                own = conn is None
                return _run_unique(driver, self.queries, batch, self.prepare, own, trace_context)
        params = insert_params(batch, trace_context)
        with self.connection_for(conn) as driver:
            return list(map(JobId, _run_insert(driver, self.queries, params, self.prepare)))

    async def enqueue_many_async(self, calls: Iterable[JobCall], conn: Any = None) -> list[JobId]:
        batch = calls if isinstance(calls, list) else list(calls)
        if self.seam.enqueue and batch:
            return await _middleware.around_enqueue_async(
                self.seam, batch, lambda called: self._enqueue_traced_async(called, conn)
            )
        return await self._enqueue_traced_async(batch, conn)

    async def _enqueue_traced_async(self, batch: list[JobCall], conn: Any) -> list[JobId]:
        if self.recorder is not None:
            return await self.recorder.enqueue_async(batch, conn)
        observers = self.seam.around_send
        if not observers or not batch:
            return await self._enqueue_many_async(batch, conn, None)
        return await _observers.around_send_async(
            observers, batch, None, lambda context: self._enqueue_many_async(batch, conn, context)
        )

    async def _enqueue_many_async(
        self, batch: list[JobCall], conn: Any, trace_context: str | None
    ) -> list[JobId]:
        if any(map(_unique_key, batch)):
            async with self.connection_for_async(conn) as driver:
                own = conn is None
                return await _run_unique_async(
                    driver, self.queries, batch, self.prepare, own, trace_context
                )
        params = insert_params(batch, trace_context)
        async with self.connection_for_async(conn) as driver:
            ids = await _run_insert_async(driver, self.queries, params, self.prepare)
            return list(map(JobId, ids))

    def add_to_batch(self, batch_id: int, calls: Iterable[JobCall], conn: Any = None) -> list[int]:
        """Enqueue ``calls`` in batch ``batch_id`` (see :func:`._batches.add`), inside the
        enqueue middleware."""
        batch = list(calls)
        if self.seam.enqueue and batch:
            return _middleware.around_enqueue(
                self.seam, batch, lambda called: self._add_traced(batch_id, called, conn)
            )
        return self._add_traced(batch_id, batch, conn)

    def _add_traced(self, batch_id: int, batch: list[JobCall], conn: Any) -> list[Any]:
        if self.recorder is not None:
            return self.recorder.add_to_batch(batch_id, batch, conn)
        observers = self.seam.around_send
        if not observers or not batch:
            return self.run(_batches.add(self.queries, batch_id, batch), conn)
        return _observers.around_send(
            observers,
            batch,
            batch_id,
            lambda context: self.run(_batches.add(self.queries, batch_id, batch, context), conn),
        )

    async def add_to_batch_async(
        self, batch_id: int, calls: Iterable[JobCall], conn: Any = None
    ) -> list[int]:
        """:meth:`add_to_batch` for async code."""
        batch = list(calls)
        if self.seam.enqueue and batch:
            return await _middleware.around_enqueue_async(
                self.seam, batch, lambda called: self._add_traced_async(batch_id, called, conn)
            )
        return await self._add_traced_async(batch_id, batch, conn)

    async def _add_traced_async(self, batch_id: int, batch: list[JobCall], conn: Any) -> list[Any]:
        if self.recorder is not None:
            return await self.recorder.add_to_batch_async(batch_id, batch, conn)
        observers = self.seam.around_send
        if not observers or not batch:
            return await self.run_async(_batches.add(self.queries, batch_id, batch), conn)
        return await _observers.around_send_async(
            observers,
            batch,
            batch_id,
            lambda context: self.run_async(
                _batches.add(self.queries, batch_id, batch, context), conn
            ),
        )

    def trace_context(self) -> str | None:
        """The caller's current trace context as JSON text, for jobs inserted later on its
        behalf (a batch's callbacks); ``None`` when not traced."""
        carrier = self.seam.carrier
        return None if carrier is None else carrier()

    def run(self, operation: Operation[T], conn: Any = None) -> T:
        """Run an admin operation on ``conn`` (the caller's transaction) or pgjobs' pool."""
        with self.connection_for(conn) as driver, driver.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(operation.statement, operation.params, prepare=self.prepare)
            return operation.result(rows.fetchall())

    async def run_async(self, operation: Operation[T], conn: Any = None) -> T:
        """:meth:`run` for async code."""
        async with (
            self.connection_for_async(conn) as driver,
            driver.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(operation.statement, operation.params, prepare=self.prepare)
            return operation.result(await cur.fetchall())

    async def read_async(
        self, statements: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[list[dict[str, Any]]]:
        """The rows of each statement (none for one that returns none, such as a ``SET
        LOCAL``), run one after another in one transaction on pgjobs' own pool, never prepared:
        a generic plan could not use the partial index that a parameter selects."""
        results: list[list[dict[str, Any]]] = []
        async with (
            self.connection_for_async(None) as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            for statement, params in statements:
                await cur.execute(statement, params, prepare=False)
                results.append(await cur.fetchall() if cur.description is not None else [])
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def aclose(self) -> None:
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None
        self.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """One of pgjobs' own connections (autocommit), errors translated."""
        with self._pool_lock:
            if self._pool is None:
                _connection.check_connection(self.settings, "pgjobs-client")
                conninfo, options = self._pool_options()
                self._pool = psycopg_pool.ConnectionPool(
                    conninfo, **options, check=_check_pooled, open=True
                )
        with (
            self.translated_errors(),
            _lost_connection_errors(self.settings, self.queries),
            self._pool.connection(timeout=self.settings.connect_timeout) as conn,
        ):
            yield conn

    @contextmanager
    def connection_for(self, conn: Any) -> Iterator[psycopg.Connection[Any]]:
        """The psycopg connection behind the caller's ``conn`` (its transaction), or one of
        pgjobs' own when ``conn`` is ``None``."""
        if conn is None:
            with self.connection() as own:
                yield own
        else:
            with self.translated_errors():
                yield _connection.unwrap_sync(conn)

    @asynccontextmanager
    async def connection_for_async(self, conn: Any) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """:meth:`connection_for` for async code: ``conn`` is a psycopg ``AsyncConnection`` or a
        SQLAlchemy ``AsyncSession``/``AsyncConnection``."""
        with self.translated_errors():
            if conn is not None:
                yield await _connection.unwrap_async(conn)
                return
            pool = await self._open_async_pool()
            with _lost_connection_errors(self.settings, self.queries):
                async with pool.connection(timeout=self.settings.connect_timeout) as own:
                    yield own

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Driver errors that mean "fix your setup" become pgjobs errors saying how."""
        try:
            yield
        except psycopg_pool.PoolTimeout as exc:
            raise DatabaseError(
                f"could not get a database connection within {self.settings.connect_timeout:g} s;"
                " is the database at PGJOBS_DATABASE_URL up and reachable?"
            ) from exc
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            reason = exc.diag.message_primary or _connection.one_line(exc)
            raise DatabaseError(
                f"the database refused to write: {reason}; nothing was changed. It is read-only"
                " (a standby, or default_transaction_read_only is on): connect to one that takes"
                " writes"
            ) from exc
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise SchemaError(
                f"pgjobs tables not found in schema {self.settings.schema!r}; "
                "run `pgjobs migrate` first"
            ) from exc

    def _pool_options(self) -> tuple[str, dict[str, Any]]:
        """The conninfo and options of pgjobs' own pools, sync and async: autocommit
        connections with pgjobs' own time limits, opened as needed, four at most."""
        kwargs = _connection.connect_kwargs(self.settings, "pgjobs-client", limits=True)
        conninfo = kwargs.pop("conninfo")
        return conninfo, {"kwargs": {**kwargs, "autocommit": True}, "min_size": 0, "max_size": 4}

    async def _open_async_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        if self._async_pool is None:
            await _connection.check_connection_async(self.settings, "pgjobs-client")
            conninfo, options = self._pool_options()
            pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
                conninfo, **options, check=_check_pooled_async, open=False
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
        raise  # no connection at all: translated_errors says so
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


def _run_insert(
    conn: psycopg.Connection[Any], queries: Queries, params: Mapping[str, Any], prepare: bool | None
) -> list[int]:
    count = len(params["names"])
    if not count:
        return []
    with conn.cursor() as cur:
        if count == 1:
            cur.execute(queries.insert_job, single(params), prepare=prepare)
            return [row[0] for row in cur.fetchall()]
        if count < COPY_THRESHOLD:
            cur.execute(queries.insert_jobs, params, prepare=prepare)
            return [row[0] for row in cur.fetchall()]
        row = cur.execute(queries.reserve_job_ids, {"count": count}, prepare=prepare).fetchone()
        assert row is not None
        now, ids = row
        with_meta = any(params["metas"])
        with cur.copy(queries.copy_jobs_with_meta if with_meta else queries.copy_jobs) as copy:
            for data in copy_text(ids, now, params, with_meta):
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
            await cur.execute(queries.insert_job, single(params), prepare=prepare)
            return [row[0] for row in await cur.fetchall()]
        if count < COPY_THRESHOLD:
            await cur.execute(queries.insert_jobs, params, prepare=prepare)
            return [row[0] for row in await cur.fetchall()]
        await cur.execute(queries.reserve_job_ids, {"count": count}, prepare=prepare)
        row = await cur.fetchone()
        assert row is not None
        now, ids = row
        with_meta = any(params["metas"])
        async with cur.copy(
            queries.copy_jobs_with_meta if with_meta else queries.copy_jobs
        ) as copy:
            for data in copy_text(ids, now, params, with_meta):
                await copy.write(data)
        return list(ids)


UniqueSteps = Generator[Step, list[tuple[Any, ...]], dict[int, JobId]]


def _run_unique(
    conn: psycopg.Connection[Any],
    queries: Queries,
    calls: Sequence[JobCall],
    prepare: bool | None,
    own: bool,
    trace_context: str | None = None,
) -> list[JobId]:
    """A batch with unique jobs: its plain jobs as usual, its unique ones by their steps, copied
    first when there are many. On pgjobs' own (autocommit) connection, a batch of more than one
    kind is written in one transaction, so that it commits whole; one kind alone is written by
    one statement (and a second only if a holder leaves its states while its key is read)."""
    plan = plan_batch(calls)
    if own and plan.kinds > 1:
        with conn.transaction():
            return _run_unique(conn, queries, calls, prepare, False, trace_context)
    written: dict[int, JobId] = {}
    if plan.plain:
        plain = insert_params([calls[p] for p in plan.plain], trace_context)
        ids = _run_insert(conn, queries, plain, prepare)
        written.update(zip(plan.plain, map(JobId, ids), strict=True))
    with conn.cursor() as cur:
        for positions, replace in ((plan.keep, False), (plan.replace, True)):
            if not positions:
                continue
            if len(positions) < COPY_THRESHOLD:
                steps: UniqueSteps = insert_unique(
                    queries, calls, positions, replace, trace_context=trace_context
                )
                written.update(_drive(cur, steps, prepare))
                continue
            # the copied rows live in a temporary table dropped at commit: one transaction
            with conn.transaction() if _autocommitting(conn) else contextlib.nullcontext():
                cur.execute(queries.create_unique_rows).nextset()  # to the second statement's
                jit = cur.fetchall()[0][0]
                with cur.copy(queries.copy_unique_rows) as copy:
                    for data in unique_copy_text(unique_params([calls[p] for p in positions])):
                        copy.write(data)
                steps = insert_unique(queries, calls, positions, replace, True, trace_context)
                written.update(_drive(cur, steps, prepare))
                cur.execute(queries.drop_unique_rows)
                cur.execute(queries.restore_jit, {"jit": jit}, prepare=prepare)
    return resolve(plan, written, len(calls))


def _drive(cur: psycopg.Cursor[Any], steps: UniqueSteps, prepare: bool | None) -> dict[int, JobId]:
    """Run each statement ``steps`` asks for, sending it the rows; return what it returns."""
    try:
        statement, params = next(steps)
        while True:
            rows = cur.execute(statement, params, prepare=prepare).fetchall()
            statement, params = steps.send(rows)
    except StopIteration as done:
        found: dict[int, JobId] = done.value
        return found


def _autocommitting(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether each statement on ``conn`` commits on its own (no transaction is open)."""
    return conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE


async def _run_unique_async(
    conn: psycopg.AsyncConnection[Any],
    queries: Queries,
    calls: Sequence[JobCall],
    prepare: bool | None,
    own: bool,
    trace_context: str | None = None,
) -> list[JobId]:
    """:func:`_run_unique` for async code."""
    plan = plan_batch(calls)
    if own and plan.kinds > 1:
        async with conn.transaction():
            return await _run_unique_async(conn, queries, calls, prepare, False, trace_context)
    written: dict[int, JobId] = {}
    if plan.plain:
        plain = insert_params([calls[p] for p in plan.plain], trace_context)
        ids = await _run_insert_async(conn, queries, plain, prepare)
        written.update(zip(plan.plain, map(JobId, ids), strict=True))
    async with conn.cursor() as cur:
        for positions, replace in ((plan.keep, False), (plan.replace, True)):
            if not positions:
                continue
            if len(positions) < COPY_THRESHOLD:
                steps: UniqueSteps = insert_unique(
                    queries, calls, positions, replace, trace_context=trace_context
                )
                written.update(await _drive_async(cur, steps, prepare))
                continue
            async with conn.transaction() if _autocommitting(conn) else contextlib.nullcontext():
                await cur.execute(queries.create_unique_rows)
                cur.nextset()
                jit = (await cur.fetchall())[0][0]
                async with cur.copy(queries.copy_unique_rows) as copy:
                    for data in unique_copy_text(unique_params([calls[p] for p in positions])):
                        await copy.write(data)
                steps = insert_unique(queries, calls, positions, replace, True, trace_context)
                written.update(await _drive_async(cur, steps, prepare))
                await cur.execute(queries.drop_unique_rows)
                await cur.execute(queries.restore_jit, {"jit": jit}, prepare=prepare)
    return resolve(plan, written, len(calls))


async def _drive_async(
    cur: psycopg.AsyncCursor[Any], steps: UniqueSteps, prepare: bool | None
) -> dict[int, JobId]:
    """:func:`_drive` for async code."""
    try:
        statement, params = next(steps)
        while True:
            await cur.execute(statement, params, prepare=prepare)
            statement, params = steps.send(await cur.fetchall())
    except StopIteration as done:
        found: dict[int, JobId] = done.value
        return found
