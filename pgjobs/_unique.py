"""Unique jobs in pure code: the :class:`Unique` declaration, the key a call holds, the plan of a
batch, and the statements a unique enqueue runs, as a generator the client drives sync or async.

The database enforces uniqueness (migration 0007's partial unique index); nothing here looks a
key up before inserting. A period's bucket is appended to the key in SQL, from the database
clock, so every enqueuer agrees on it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._call import Unique
from ._encoding import COPY_PIECE, insert_params, single
from ._errors import DatabaseError, ValidationError
from ._validation import MAX_DEPTH

if TYPE_CHECKING:
    from ._call import JobCall
    from ._sql import Queries

MAX_ROUNDS = 5
"""Insert-then-read rounds for keys whose holder leaves its states between the two statements."""


class JobId(int):
    """A job's id, as enqueue returns it: an ``int`` that also says whether the enqueue was a
    ``duplicate`` of a unique job, whose id it then is (nothing new was written)."""

    duplicate: bool = False

    def __repr__(self) -> str:
        return f"JobId({int(self)}, duplicate={self.duplicate})"

    def __str__(self) -> str:  # int's own, as printed and formatted, not the repr
        return int.__repr__(self)


def job_id(value: int, duplicate: bool) -> JobId:
    """``value`` as a :class:`JobId`; only a duplicate carries an attribute of its own."""
    result = JobId(value)
    if duplicate:
        result.duplicate = True
    return result


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False).encode


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text (sorted keys, no spaces); :class:`ValidationError` naming
    ``unique_key`` when it is not JSON or is nested too deep to encode."""
    if _deeper_than(value, MAX_DEPTH):
        raise ValidationError(
            "unique_key",
            f"nested too deep to encode as JSON (over {MAX_DEPTH} levels); pass a flatter value",
        )
    try:
        return _canonical(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            "unique_key",
            f"{value!r} is not JSON ({exc}); pass str, int, float, bool, None, list or dict",
        ) from None


def _deeper_than(value: Any, levels: int) -> bool:
    """Whether lists, tuples and dicts nest in ``value`` deeper than ``levels`` (measured
    without recursing past it, whatever the interpreter's recursion limit)."""
    if isinstance(value, list | tuple):
        items: Any = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return False
    return levels == 0 or any(_deeper_than(item, levels - 1) for item in items)


def key_value(
    signature: inspect.Signature,
    by: tuple[str, ...] | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """The value a call is keyed on: its arguments by parameter name, defaults applied, all of
    them or those named in ``by``. (The arguments already fit the signature.)"""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    if by is None:
        return dict(bound.arguments)
    return {name: bound.arguments[name] for name in by}


def unique_key(job_name: str, key_json: str) -> str:
    """The key stored in ``jobs.unique_key`` (before a period's bucket): the job's name and the
    SHA-256 of the key value's canonical JSON, so keys have one short size whatever the value."""
    return f"{job_name}:{hashlib.sha256(key_json.encode()).hexdigest()}"


class Plan(NamedTuple):
    """How a batch of calls is written: positions of plain calls, of unique calls kept on
    conflict and of unique calls that replace, and for each call sharing its key with another
    one of the batch, the position of the call that stands for it (keep: the first; replace:
    the last, as an UPDATE that two rows of a batch match takes either one)."""

    plain: list[int]
    keep: list[int]
    replace: list[int]
    stands_for: dict[int, int]

    @property
    def kinds(self) -> int:
        """How many of plain, keep and replace the batch has: each is written apart."""
        return bool(self.plain) + bool(self.keep) + bool(self.replace)


def plan_batch(calls: Sequence[JobCall]) -> Plan:
    """The :class:`Plan` of ``calls``; nothing is written."""
    plain: list[int] = []
    keep: dict[str, int] = {}
    replace: dict[str, int] = {}
    stands_for: dict[int, int] = {}
    for position, call in enumerate(calls):
        key = call.unique_key
        if key is None:
            plain.append(position)
        elif call.unique is not None and call.unique.replace:
            if key in replace:
                stands_for[replace[key]] = position
            replace[key] = position
        elif key in keep:
            stands_for[position] = keep[key]
        else:
            keep[key] = position
    # a replace chain a -> b -> c resolves to its last call
    for position, later in list(stands_for.items()):
        while later in stands_for:
            later = stands_for[later]
        stands_for[position] = later
    return Plan(plain, list(keep.values()), sorted(replace.values()), stands_for)


def resolve(plan: Plan, written: Mapping[int, JobId], count: int) -> list[JobId]:
    """The id for each of ``count`` calls: its own row's, or as a duplicate, its stand-in's."""
    result = []
    for position in range(count):
        stand_in = plan.stands_for.get(position)
        if stand_in is None:
            result.append(written[position])
        else:
            result.append(job_id(written[stand_in], True))
    return result


def unique_params(calls: Sequence[JobCall], trace_context: str | None = None) -> dict[str, Any]:
    """INSERT_UNIQUE_JOBS' columns: INSERT_JOBS' and each job's key, unique states and period."""
    params = insert_params(calls, trace_context)
    params["keys"] = [call.unique_key for call in calls]
    params["states"] = []
    params["periods"] = []
    for call in calls:
        unique = call.unique or Unique()
        params["states"].append(",".join(unique.states))
        params["periods"].append(unique.seconds)
    return params


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
"""The characters COPY's text format escapes."""


def unique_copy_text(params: Mapping[str, Any]) -> Iterator[bytes]:
    """The rows of ``params`` (:func:`unique_params`) for COPY_UNIQUE_ROWS, in COPY's text
    format, :data:`COPY_PIECE` rows at a time; each row's position counts from 1."""
    lines = []
    columns = zip(
        params["queues"],
        params["names"],
        params["args"],
        params["kwargs"],
        params["priorities"],
        params["max_attempts"],
        params["ats"],
        params["delays"],
        params["keys"],
        params["states"],
        params["periods"],
        params["partition_keys"],
        params["metas"],
        strict=True,
    )
    for position, row in enumerate(columns, 1):
        queue, name, args, kwargs, priority, max_attempts, at, delay, key, states, period, part = (
            row[:-1]
        )
        meta = row[-1]
        fields = (
            queue,
            name.translate(_COPY_ESCAPES),
            args.translate(_COPY_ESCAPES),
            kwargs.translate(_COPY_ESCAPES),
            str(priority),
            str(max_attempts),
            "\\N" if at is None else at.isoformat(),
            repr(float(delay)),
            key.translate(_COPY_ESCAPES),
            states,
            "\\N" if period is None else repr(float(period)),
            "\\N" if part is None else part.translate(_COPY_ESCAPES),
            "\\N" if meta is None else meta.translate(_COPY_ESCAPES),
            str(position),
        )
        lines.append("\t".join(fields) + "\n")
        if len(lines) == COPY_PIECE:
            yield "".join(lines).encode()
            lines.clear()
    if lines:
        yield "".join(lines).encode()


def single_unique(params: Mapping[str, Any]) -> dict[str, Any]:
    """INSERT_UNIQUE_JOB's parameters from the one-row columns of :func:`unique_params`."""
    return {
        **single(params),
        "key": params["keys"][0],
        "states": params["states"][0],
        "period": params["periods"][0],
    }


Step = tuple[str, Mapping[str, Any]]
"""A statement to run and its parameters; the driver sends back the rows it returned."""


def insert_unique(
    queries: Queries,
    calls: Sequence[JobCall],
    positions: Sequence[int],
    replace: bool,
    copied: bool = False,
    trace_context: str | None = None,
) -> Generator[Step, list[tuple[Any, ...]], dict[int, JobId]]:
    """Insert the calls at ``positions`` (one per key) and return their ids by position.

    Keys already held are, with ``replace``, replaced in their holder if it has not started,
    then read back by a last statement: each runs only for the keys still unresolved. A holder
    may leave its states before it is read (it completes), and then the insert is tried again;
    an uncommitted holder is waited for by the insert itself (``ON CONFLICT``).

    ``copied``: the driver has copied the calls' rows (:func:`unique_copy_text`) for the first
    insert. ``trace_context``: the enqueue's, for every job written (a replaced holder keeps its
    own).
    """
    found: dict[int, JobId] = {}
    pending = list(positions)
    for round_ in range(MAX_ROUNDS):
        if copied and round_ == 0:
            rows = yield queries.insert_copied_unique_jobs, {"trace_context": trace_context}
        elif len(pending) == 1:
            rows = yield (
                queries.insert_unique_job,
                single_unique(unique_params([calls[pending[0]]], trace_context)),
            )
        else:
            rows = yield (
                queries.insert_unique_jobs,
                unique_params([calls[p] for p in pending], trace_context),
            )
        held: dict[str, int] = {}
        for ordinal, held_key, written_id in rows:
            position = pending[ordinal - 1]
            if written_id is None:
                held[held_key] = position
            else:
                found[position] = job_id(written_id, False)
        if held and replace:
            params = {
                **insert_params([calls[p] for p in held.values()]),
                "held_keys": list(held),
                "jobs_channel": queries.jobs_channel,
                "scheduled_channel": queries.scheduled_channel,
            }
            for held_key, holder_id in (yield queries.replace_unique_jobs, params):
                found[held.pop(held_key)] = job_id(holder_id, True)
        if held:
            for held_key, holder_id in (yield queries.find_unique_holders, {"keys": list(held)}):
                found[held.pop(held_key)] = job_id(holder_id, True)
        if not held:
            return found
        pending = sorted(held.values())
    raise DatabaseError(
        f"unique keys kept changing hands during {MAX_ROUNDS} tries to enqueue; try again"
    )
