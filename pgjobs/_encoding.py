"""Enqueue encoding: jobs to enqueue turned into the insert statements' parameters, in pure code.

:func:`insert_params` builds the columns of INSERT_JOBS, :func:`single` the parameters of
INSERT_JOB for one row, and :func:`copy_text` the data of COPY_JOBS for large batches. The client
only runs them, sync or async.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from itertools import repeat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._call import JobCall

COPY_THRESHOLD = 500
"""From this many jobs, ``enqueue_many`` uses COPY instead of one INSERT."""

COPY_PIECE = 1000
"""Rows per piece of COPY data."""


def insert_params(calls: Iterable[JobCall], trace_context: str | None = None) -> dict[str, Any]:
    """The columns of ``calls``, and the ``trace_context`` (JSON text) every one of them carries:
    their enqueue's, or ``None`` when it is not traced."""
    columns: dict[str, Any] = {
        "queues": [],
        "names": [],
        "args": [],
        "kwargs": [],
        "priorities": [],
        "max_attempts": [],
        "ats": [],
        "delays": [],
        "partition_keys": [],
        "metas": [],
    }
    for call in calls:
        options = call.options
        columns["queues"].append(call.queue)
        columns["names"].append(call.name)
        columns["args"].append(call.args_json)
        columns["kwargs"].append(call.kwargs_json)
        columns["priorities"].append(call.priority)
        columns["max_attempts"].append(call.max_attempts)
        columns["ats"].append(options.at)
        columns["delays"].append(options.delay or 0.0)
        columns["partition_keys"].append(options.partition_key)
        columns["metas"].append(call.meta)
    columns["trace_context"] = trace_context
    return columns


def single(params: Mapping[str, Any]) -> dict[str, Any]:
    """INSERT_JOB's parameters from the one-row columns of :func:`insert_params`."""
    return {
        "queue": params["queues"][0],
        "name": params["names"][0],
        "args": params["args"][0],
        "kwargs": params["kwargs"][0],
        "priority": params["priorities"][0],
        "max_attempts": params["max_attempts"][0],
        "at": params["ats"][0],
        "delay": params["delays"][0],
        "partition_key": params["partition_keys"][0],
        "trace_context": params["trace_context"],
        "meta": params["metas"][0],
    }


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
"""The characters COPY's text format escapes, for job names."""
_NULL = "\\N"
"""COPY's text for NULL: a job without a partition key."""
_BACKSLASH, _ESCAPED_BACKSLASH = "\\", "\\\\"
"""JSON text escapes every control character, so only its backslashes need escaping for COPY."""


def copy_text(
    ids: list[int], now: datetime, params: Mapping[str, Any], with_meta: bool = False
) -> Iterator[bytes]:
    """The COPY data for ``params`` in COPY's text format (COPY_JOBS_WITH_META's columns if
    ``with_meta``, else COPY_JOBS'), :data:`COPY_PIECE` rows at a time (so
    that the server stores one piece while the next is formatted): the columns INSERT_JOBS
    computes in SQL, computed here from the database's ``now``.

    Formatted here rather than row by row through psycopg's adapters, which cost more than the
    rest of an enqueue: most jobs in a batch share their name, queue and start time, so those are
    escaped and formatted once."""
    start_times: dict[tuple[datetime | None, float], str] = {}  # "scheduled_at\tstate"
    trace = params["trace_context"]
    trace_text = _NULL if trace is None else trace.replace(_BACKSLASH, _ESCAPED_BACKSLASH)
    names: dict[str, str] = {}
    lines = []
    for job_id, queue, name, args, kwargs, priority, max_attempts, at, delay, key, meta in zip(
        ids,
        params["queues"],
        params["names"],
        params["args"],
        params["kwargs"],
        params["priorities"],
        params["max_attempts"],
        params["ats"],
        params["delays"],
        params["partition_keys"],
        params["metas"] if with_meta else repeat(None, len(ids)),
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
            f"{start}\t{_NULL if key is None else key.translate(_COPY_ESCAPES)}\t{trace_text}"
            f"{_meta_field(meta) if with_meta else ''}\n"
        )
        if len(lines) == COPY_PIECE:
            yield "".join(lines).encode()
            lines.clear()
    if lines:
        yield "".join(lines).encode()


def _meta_field(meta: str | None) -> str:
    """A job's meta column in COPY_JOBS_WITH_META's data (``{}`` for none: it is NOT NULL)."""
    return "\t{}" if meta is None else "\t" + meta.replace(_BACKSLASH, _ESCAPED_BACKSLASH)
