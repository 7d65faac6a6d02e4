"""Records from rows, in pure code: each field read by its name, nothing else, nothing less."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

import pgjobs
from pgjobs._records import from_row

QUEUE_ROW = {
    "name": "mailers",
    "paused": False,
    "concurrency": 3,
    "rate_limit": None,
    "rate_period": None,
    "partition": None,
    "held_back": True,
    "available": 7,
    "running": 2,
}


def test_a_record_takes_each_field_from_its_column_and_leaves_other_columns() -> None:
    row = {"extra": "a column no field names", **QUEUE_ROW}

    record = from_row(pgjobs.QueueRecord, dict(reversed(row.items())))

    assert dataclasses.asdict(record) == QUEUE_ROW  # in the fields' order, without "extra"
    assert list(dataclasses.asdict(record)) == list(QUEUE_ROW)


def test_a_row_without_a_fields_column_is_refused_naming_it() -> None:
    row = {k: v for k, v in QUEUE_ROW.items() if k != "held_back"}
    with pytest.raises(KeyError, match="held_back"):
        from_row(pgjobs.QueueRecord, row)


def test_records_are_frozen() -> None:
    record = from_row(pgjobs.QueueRecord, QUEUE_ROW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.paused = True  # type: ignore[misc]


@pytest.mark.parametrize(
    "record",
    [
        pgjobs.JobRecord,
        pgjobs.QueueRecord,
        pgjobs.WorkerRecord,
        pgjobs.BatchRecord,
        pgjobs.CronRecord,
    ],
)
def test_every_field_of_every_record_is_documented(record: type) -> None:
    """Each field has its docstring in the source (what ``help()`` and the docs show)."""
    body = ast.parse(inspect.getsource(record)).body[0]
    assert isinstance(body, ast.ClassDef)
    documented = {
        target.target.id
        for target, after in zip(body.body, body.body[1:], strict=False)
        if isinstance(target, ast.AnnAssign)
        and isinstance(target.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
    }
    assert documented == {field.name for field in dataclasses.fields(record)}
