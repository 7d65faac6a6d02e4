"""Batches: groups of jobs whose callback jobs are enqueued once all of them have ended.

The database does the counting and fires the callbacks (migration 0008: triggers on ``jobs`` and
``settle_batch()``), so they are exact under any number of workers. This module holds the pure
part (checking callbacks and building each statement's parameters, as :class:`Operation` values)
and the :class:`Batch` / :class:`AsyncBatch` handles that run them through the client.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._admin import Operation, Rows
from ._encoding import insert_params
from ._errors import ValidationError
from ._sql import Queries

if TYPE_CHECKING:
    from ._client import Client
    from ._job import Job, JobCall


def callback_template(
    jobs: Mapping[str, Job[..., Any]],
    field: str,
    call: JobCall | None,
    trace_context: str | None = None,
) -> str | None:
    """The ``on_success`` / ``on_complete`` column for ``call``: the job to insert, as JSON text
    (``None`` for no callback), with the ``trace_context`` the callback job will carry.

    The callback runs with the arguments of ``call`` (already checked by ``Job.call``), and
    ``current_job().batch_id`` is its batch.

    Raises:
        ValidationError: the job is not registered in this app, or the call has a start time (a
            callback runs when its batch ends).
    """
    if call is None:
        return None
    job = call.job
    registered = jobs.get(job.name)
    if registered is None or registered.func is not job.func:
        raise ValidationError(
            field, f"job {job.name!r} is not registered in this app; register it with @app.job"
        )
    if call.options.at is not None or call.options.delay is not None:
        raise ValidationError(field, "a callback runs when its batch ends; drop at= / delay=")
    params = insert_params([call])
    template = {
        "name": job.name,
        "queue": params["queues"][0],
        "priority": params["priorities"][0],
        "max_attempts": params["max_attempts"][0],
        "args": json.loads(call.args_json),
        "kwargs": json.loads(call.kwargs_json),
    }
    if trace_context is not None:
        template["trace_context"] = json.loads(trace_context)
    return json.dumps(template)


def create(
    queries: Queries, description: str | None, on_success: str | None, on_complete: str | None
) -> Operation[int]:
    params = {"description": description, "on_success": on_success, "on_complete": on_complete}
    return Operation(queries.insert_batch, params, lambda rows: int(rows[0]["id"]))


def add(
    queries: Queries, batch_id: int, calls: Iterable[JobCall], trace_context: str | None = None
) -> Operation[list[int]]:
    """Raises :class:`ValidationError` for a unique job: its key would not be held (a batch's
    jobs are inserted by ADD_BATCH_JOBS, without ``ON CONFLICT``). Every job carries
    ``trace_context``."""
    calls = list(calls)
    for call in calls:
        if call.unique_key is not None:
            raise ValidationError(
                "unique_key", f"{call.job.name} is a unique job, which cannot join a batch"
            )

    def result(rows: Rows) -> list[int]:
        return added(batch_id, rows[0])

    return Operation(
        queries.add_batch_jobs,
        {**insert_params(calls, trace_context), "batch_id": batch_id},
        result,
    )


def added(batch_id: int, row: Mapping[str, Any]) -> list[int]:
    """The ids ADD_BATCH_JOBS inserted, or the reason it inserted none."""
    if not row["found"]:
        raise ValidationError("batch_id", f"there is no batch {batch_id}")
    if row["finished_at"] is not None:
        raise ValidationError(
            "batch_id",
            f"batch {batch_id} finished at {row['finished_at']:%Y-%m-%d %H:%M:%S%z} (its callbacks"
            " were enqueued); add the jobs to a new batch",
        )
    return list(row["ids"])


def seal(queries: Queries, batch_id: int) -> Operation[None]:
    def result(rows: Rows) -> None:
        if not rows[0]["found"]:
            raise ValidationError("batch_id", f"there is no batch {batch_id}")

    return Operation(queries.seal_batch, {"id": batch_id}, result)


def status(queries: Queries, batch_id: int) -> Operation[dict[str, Any] | None]:
    return Operation(queries.get_batch, {"id": batch_id}, lambda rows: rows[0] if rows else None)


def list_batches(queries: Queries, limit: int) -> Operation[Rows]:
    if limit < 1:
        raise ValidationError("limit", "must be at least 1")
    return Operation(queries.list_batches, {"limit": limit}, list)


class Batch:
    """A batch being built, from :meth:`App.batch <pgjobs.App.batch>`: add jobs, then seal it.

    Every call runs on the connection the batch was created with (``conn=``), so with a caller's
    connection the batch, its jobs and its sealing commit or roll back together; with ``None``
    each call commits at once on pgjobs' own pool. As a context manager it seals the batch when
    the block ends without an exception; after an exception it is left unsealed, and its
    callbacks never fire unless it is sealed later (:meth:`App.seal_batch`).
    """

    def __init__(self, client: Client, queries: Queries, batch_id: int, conn: Any) -> None:
        self._client = client
        self._queries = queries
        self._conn = conn
        self.id = batch_id

    def __repr__(self) -> str:
        return f"<pgjobs.Batch {self.id}>"

    def add(self, call: JobCall) -> int:
        """Enqueue one job in this batch (``job.call(...)``); returns its id."""
        return self.enqueue_many([call])[0]

    def enqueue_many(self, calls: Iterable[JobCall]) -> list[int]:
        """Enqueue jobs in this batch in one statement; returns their ids in order."""
        return self._client.add_to_batch(self.id, calls, self._conn)

    def seal(self) -> None:
        """No more jobs from the creating code: the callbacks fire once none is pending (at once
        if none is). Jobs of the batch may still add to it (:meth:`App.add_to_batch`)."""
        self._client.run(seal(self._queries, self.id), self._conn)

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.seal()


class AsyncBatch:
    """:class:`Batch` for async code, from :meth:`App.batch_async <pgjobs.App.batch_async>`."""

    def __init__(self, client: Client, queries: Queries, batch_id: int, conn: Any) -> None:
        self._client = client
        self._queries = queries
        self._conn = conn
        self.id = batch_id

    def __repr__(self) -> str:
        return f"<pgjobs.AsyncBatch {self.id}>"

    async def add(self, call: JobCall) -> int:
        """:meth:`Batch.add` for async code."""
        return (await self.enqueue_many([call]))[0]

    async def enqueue_many(self, calls: Iterable[JobCall]) -> list[int]:
        """:meth:`Batch.enqueue_many` for async code."""
        return await self._client.add_to_batch_async(self.id, calls, self._conn)

    async def seal(self) -> None:
        """:meth:`Batch.seal` for async code."""
        await self._client.run_async(seal(self._queries, self.id), self._conn)

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.seal()
