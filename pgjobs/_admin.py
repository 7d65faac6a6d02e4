"""Admin operations as data: each is an :class:`Operation` holding its statement, its parameters
and a pure function turning the rows into the result.

Nothing here does I/O. :meth:`Client.run <pgjobs._client.Client.run>` and
:meth:`Client.run_async <pgjobs._client.Client.run_async>` execute any operation on pgjobs' own
pool or on a caller's connection, so every operation has a sync and an async form without a
second copy. Arguments are checked when the operation is built, before any SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import ValidationError
from ._records import CronRecord, JobRecord, WorkerRecord, from_row
from ._sql import Queries
from ._validation import check_text

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
R = TypeVar("R", bound="DataclassInstance")

Rows = list[dict[str, Any]]

STATES = ("scheduled", "available", "running", "retryable", "completed", "discarded", "cancelled")
"""Every state a job can be in (docs/schema.md)."""


@dataclass(frozen=True)
class Operation(Generic[T]):
    """One admin statement: ``result(rows)`` is what the caller gets."""

    statement: str
    params: Mapping[str, Any]
    result: Callable[[Rows], T]


def get_job(queries: Queries, job_id: int) -> Operation[JobRecord | None]:
    def result(rows: Rows) -> JobRecord | None:
        return from_row(JobRecord, rows[0]) if rows else None

    return Operation(queries.get_job, {"id": job_id}, result)


def get_result(queries: Queries, job_id: int) -> Operation[Any]:
    def result(rows: Rows) -> Any:
        if not rows:
            raise ValueError(f"job {job_id} does not exist (or was pruned)")
        if rows[0]["state"] != "completed":
            raise ValueError(
                f"job {job_id} is {rows[0]['state']}: only a completed job has a result; "
                "wait for it with wait_for()"
            )
        return rows[0]["result"]

    return Operation(queries.get_result, {"id": job_id}, result)


def batch_results(queries: Queries, batch_id: int) -> Operation[dict[int, Any]]:
    def result(rows: Rows) -> dict[int, Any]:
        return {row["id"]: row["result"] for row in rows}

    return Operation(queries.batch_results, {"batch_id": batch_id}, result)


def list_jobs(
    queries: Queries,
    states: Iterable[str] | None,
    queues: Iterable[str] | None,
    limit: int,
) -> Operation[list[JobRecord]]:
    params = {
        "states": _texts(states, "states"),
        "queues": _texts(queues, "queues"),
        "limit": limit,
    }
    return Operation(queries.list_jobs, params, records_of(JobRecord))


def retry(queries: Queries, job_id: int) -> Operation[bool]:
    def result(rows: Rows) -> bool:
        if not rows:
            return False
        row = rows[0]
        if row["key_held_by"] is not None:
            raise ValueError(
                f"job {job_id} is unique and job {row['key_held_by']} holds its key now; retry "
                "it once that job ends, or cancel that job first"
            )
        if not row["retried"]:
            raise ValueError(
                f"job {job_id} is {row['previous_state']}; it can be retried once it ends"
            )
        return True

    return Operation(queries.retry_job, {"id": job_id, "channel": queries.jobs_channel}, result)


def retry_all(
    queries: Queries,
    states: Iterable[str],
    queues: Iterable[str] | None,
    names: Iterable[str] | None,
) -> Operation[int]:
    chosen = list(states)
    if not chosen:
        raise ValidationError("states", "name at least one state")
    for state in chosen:
        if state == "running":
            raise ValidationError("states", "running jobs cannot be retried; cancel them first")
        if state not in STATES:
            raise ValidationError("states", f"{state!r} is not a state ({', '.join(STATES)})")
    params = {
        "states": chosen,
        "queues": _texts(queues, "queues"),
        "names": _texts(names, "names"),
        "channel": queries.jobs_channel,
    }
    return Operation(queries.retry_jobs, params, lambda rows: int(rows[0]["retried"]))


def cancel(queries: Queries, job_id: int) -> Operation[str | None]:
    def result(rows: Rows) -> str | None:
        outcome: str | None = rows[0]["outcome"]
        return outcome

    return Operation(queries.cancel_job, {"id": job_id}, result)


def delete_job(queries: Queries, job_id: int) -> Operation[bool]:
    def result(rows: Rows) -> bool:
        if not rows:
            return False
        if not rows[0]["deleted"]:
            raise ValueError(
                f"job {job_id} is {rows[0]['state']}"
                + (" in a batch that waits for it" if rows[0]["batch_id"] else "")
                + ": cancel it instead"
            )
        return True

    return Operation(queries.delete_job, {"id": job_id}, result)


def run_job_now(queries: Queries, job_id: int) -> Operation[bool]:
    def result(rows: Rows) -> bool:
        if not rows:
            return False
        if not rows[0]["moved"]:
            raise ValueError(
                f"job {job_id} is {rows[0]['state']}: only a scheduled or retryable job can be "
                "run now"
            )
        return True

    params = {"id": job_id, "channel": queries.jobs_channel}
    return Operation(queries.run_job_now, params, result)


def list_workers(queries: Queries) -> Operation[list[WorkerRecord]]:
    return Operation(queries.list_workers, {}, records_of(WorkerRecord))


def queue_counts(queries: Queries) -> Operation[dict[str, dict[str, int]]]:
    def result(rows: Rows) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(row["queue"], {})[row["state"]] = row["jobs"]
        return counts

    return Operation(queries.queue_counts, {}, result)


def pause_cron(queries: Queries, name: str) -> Operation[None]:
    check_text(name, "name")
    return Operation(queries.pause_cron, {"name": name}, _found_entry(name))


def resume_cron(queries: Queries, name: str) -> Operation[None]:
    check_text(name, "name")
    return Operation(queries.resume_cron, {"name": name}, _found_entry(name))


def run_cron(queries: Queries, name: str) -> Operation[int]:
    def result(rows: Rows) -> int:
        job_id: int | None = rows[0]["job_id"]
        if job_id is None:
            raise ValidationError("name", f"no cron entry named {name!r} (see `pgjobs cron`)")
        return job_id

    check_text(name, "name")
    return Operation(queries.run_cron, {"name": name}, result)


def list_cron(
    queries: Queries, describe: Callable[[Rows], list[CronRecord]]
) -> Operation[list[CronRecord]]:
    """Every row of ``cron_entries``, passed through ``describe`` (which adds what the app's
    code knows: the entries it declares that have no row yet, whether it declares each, their
    next runs)."""
    return Operation(queries.list_cron, {}, describe)


def _texts(values: Iterable[str] | None, path: str) -> list[str] | None:
    """``values`` as a list (``None`` stays ``None``), each text one PostgreSQL can take."""
    if values is None:
        return None
    chosen = list(values)
    for value in chosen:
        if isinstance(value, str):
            check_text(value, path)
    return chosen


def _found_entry(name: str) -> Callable[[Rows], None]:
    def result(rows: Rows) -> None:
        if not rows[0]["found"]:
            raise ValidationError("name", f"no cron entry named {name!r} (see `pgjobs cron`)")

    return result


def records_of(record: type[R]) -> Callable[[Rows], list[R]]:
    """The result of an operation that lists rows: a ``record`` of each."""

    def result(rows: Rows) -> list[R]:
        return [from_row(record, row) for row in rows]

    return result
