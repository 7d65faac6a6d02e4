"""Batches' operations: groups of jobs whose callback jobs are enqueued once all of them have
ended.

The database does the counting and fires the callbacks (migration 0008: triggers on ``jobs`` and
``settle_batch()``), so they are exact under any number of workers. This module holds the pure
part: checking callbacks and building each statement's parameters, as :class:`Operation` values.
The handles that run them through the client are in :mod:`._batch`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ._admin import Operation, Rows, records_of
from ._encoding import insert_params
from ._errors import ValidationError
from ._records import BatchRecord, from_row
from ._sql import Queries

if TYPE_CHECKING:
    from ._call import JobCall


class Registered(Protocol):
    """A job as an app registered it (:class:`~pgjobs.Job`): its function."""

    @property
    def func(self) -> Callable[..., Any]: ...


def callback_template(
    jobs: Mapping[str, Registered],
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
    registered = jobs.get(call.name)
    if registered is None or registered.func is not call.func:
        raise ValidationError(
            field, f"job {call.name!r} is not registered in this app; register it with @app.job"
        )
    if call.options.at is not None or call.options.delay is not None:
        raise ValidationError(field, "a callback runs when its batch ends; drop at= / delay=")
    template = {
        "name": call.name,
        "queue": call.queue,
        "priority": call.priority,
        "max_attempts": call.max_attempts,
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
                "unique_key", f"{call.name} is a unique job, which cannot join a batch"
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


def status(queries: Queries, batch_id: int) -> Operation[BatchRecord | None]:
    def result(rows: Rows) -> BatchRecord | None:
        return from_row(BatchRecord, rows[0]) if rows else None

    return Operation(queries.get_batch, {"id": batch_id}, result)


def list_batches(queries: Queries, limit: int) -> Operation[list[BatchRecord]]:
    if limit < 1:
        raise ValidationError("limit", "must be at least 1")
    return Operation(queries.list_batches, {"limit": limit}, records_of(BatchRecord))
