"""Turn job arguments into JSON text, refusing anything PostgreSQL's jsonb would reject or alter.

Checks run in Python before any SQL, so a bad argument never aborts the caller's transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import ValidationError

MAX_DEPTH = 64
"""Deepest nesting of lists and dicts accepted in job arguments."""

MAX_PAYLOAD_BYTES = 1024 * 1024
"""Largest accepted size of a job's arguments (args and kwargs together), and of its return
value (see :func:`encode_result`), in bytes of their text
as PostgreSQL prints ``jsonb`` (a space after each ``,`` and ``:``): the measure the database's
own check applies to plain SQL inserts too (migration ``0006``)."""


MAX_ATTEMPTS = 2**31 - 1
"""Largest ``max_attempts``: the column is a PostgreSQL ``integer``."""

MAX_PROGRESS_MESSAGE = 1000
"""Longest progress message, in characters (:meth:`JobContext.progress`)."""

MAX_NAME_LENGTH = 255
"""Longest job name, in characters (the ``jobs_name_check`` constraint)."""


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_encode_as_printed = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
"""The text of ``jsonb`` output, whose size the limit counts: ``", "`` and ``": "``."""


def encode_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """Validate ``args``/``kwargs`` and return them as JSON texts for the ``jsonb`` columns."""
    if not args and not kwargs:
        return "[]", "{}"
    positional = list(args)
    keywords = dict(kwargs)
    _check(positional, "args", 0)
    _check(keywords, "kwargs", 0)
    args_json = _encode(positional)
    kwargs_json = _encode(keywords)
    size = len(args_json.encode()) + len(kwargs_json.encode())
    if size > MAX_PAYLOAD_BYTES // 2:  # the spaces cannot double it: measure the printed text
        size = len(_encode_as_printed(positional).encode()) + len(
            _encode_as_printed(keywords).encode()
        )
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            "args",
            f"encoded arguments are {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit; "
            "store large data in your own table and pass its id",
        )
    return args_json, kwargs_json


def encode_meta(meta: Any, path: str = "meta") -> str | None:
    """Validate a job's ``meta`` (a dict with str keys, JSON inside, within the arguments' depth
    and size limits) and return its JSON text; ``None`` for an empty one, which stores ``{}``."""
    if not meta:
        if type(meta) is not dict:
            raise ValidationError(path, f"{type(meta).__name__} is not a dict; pass a dict")
        return None
    if type(meta) is not dict:
        raise ValidationError(path, f"{type(meta).__name__} is not a dict; pass a dict")
    _check(meta, path, 0)
    text = _encode(meta)
    size = len(_encode_as_printed(meta).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            path, f"is {size} bytes as JSON, over the {MAX_PAYLOAD_BYTES}-byte limit; keep it small"
        )
    return text


def encode_result(value: Any, job_name: str) -> str | None:
    """What job ``job_name`` returned, as JSON text for ``jobs.result``; ``None`` for ``None``.

    Raises:
        ValidationError: the value is not JSON (a set, an object, NaN...) or its text is over
            :data:`MAX_PAYLOAD_BYTES`, measured as for arguments; the message names the job.
    """
    if value is None:
        return None
    try:
        _check(value, "result", 0)
    except ValidationError as exc:
        raise ValidationError(
            exc.path, f"job {job_name} returned a value that is not JSON: {exc.problem}"
        ) from None
    text = _encode(value)
    size = len(text.encode())
    if size > MAX_PAYLOAD_BYTES // 2:  # the spaces cannot double it: measure the printed text
        size = len(_encode_as_printed(value).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            "result",
            f"job {job_name} returned {size} bytes of JSON, over the {MAX_PAYLOAD_BYTES}-byte "
            "limit; store large data in your own table and return its id",
        )
    return text


def check_progress(fraction: float, message: str | None) -> float:
    """``fraction`` as a float, once it and ``message`` are a progress report that can be stored."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise ValidationError(
            "fraction", f"{type(fraction).__name__} is not a number; pass a float from 0 to 1"
        )
    value = float(fraction)
    if not 0.0 <= value <= 1.0:  # false for NaN too
        raise ValidationError("fraction", f"{fraction!r} is not from 0 to 1 (0.4 means 40%)")
    if message is not None:
        if not isinstance(message, str):
            raise ValidationError(
                "message", f"{type(message).__name__} is not text; pass a str or None"
            )
        if len(message) > MAX_PROGRESS_MESSAGE:
            raise ValidationError(
                "message",
                f"{len(message)} characters, over {MAX_PROGRESS_MESSAGE}; keep it to a line",
            )
        check_text(message, "message")
    return value


def check_job_name(name: str) -> None:
    """Refuse a job name the ``jobs`` table cannot store, before any row is written."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValidationError(
            "name",
            f"{name[:40]!r}… is {len(name)} characters long; a job name has 1 to "
            f"{MAX_NAME_LENGTH}: pass a shorter name= to app.job",
        )
    check_text(name, "name")


def _check(value: Any, path: str, depth: int) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(path, f"{value!r} is not valid JSON; pass a finite number")
        return
    if isinstance(value, str):
        check_text(value, path)
        return
    if depth >= MAX_DEPTH:
        raise ValidationError(path, f"nested deeper than {MAX_DEPTH} levels")
    if type(value) is list:
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)
        return
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    path, f"dict key {key!r} is a {type(key).__name__}; JSON keys must be str"
                )
            check_text(key, f"{path} key {key!r}")
            _check(item, f"{path}[{json.dumps(key, ensure_ascii=False)}]", depth + 1)
        return
    raise ValidationError(
        path,
        f"{type(value).__name__} is not JSON; pass only None, bool, int, float, str, list "
        "and dict with str keys (convert tuples to lists, ids instead of objects)",
    )


def check_text(text: str, path: str) -> None:
    """Refuse text PostgreSQL cannot take (a NUL character, a lone surrogate), naming ``path``."""
    if "\x00" in text:
        raise ValidationError(
            path, "contains a NUL character (\\x00), which PostgreSQL cannot store"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(path, "contains a lone surrogate; it is not valid Unicode") from None
