"""What of a job the dashboard shows when hooks hide some of it, decided without I/O.

The ``redact`` hook gives the arguments to show. A value it hides often appears again in what
the job's attempts left behind (an error message that quotes it, a traceback's last line), so
each hidden value is blanked out of those texts too, and the ``redact_error`` hook, if given,
then sees each error text for what no argument holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

Redact = Callable[[str, Any, Any], "tuple[Any, Any]"]
"""A hook ``(job name, args, kwargs) -> (args, kwargs)`` giving the arguments to show."""

RedactError = Callable[[str, str], str]
"""A hook ``(job name, text) -> text`` giving what to show of an error message or traceback."""

MASK = "***"
"""What a hidden value is replaced with in the texts of a job."""

MIN_HIDDEN = 4
"""Characters of a hidden value, at least, for it to be blanked out of texts: a shorter one
would blank out parts of words and line numbers, and is no secret."""

_ERROR_TEXTS = ("message", "traceback")
"""The texts of each error of ``errors``."""

_TEXTS = ("last_error", "unique_key", "partition_key", "progress_message")
"""A job's own texts that may repeat its arguments."""


def hidden(given: tuple[Any, Any], shown: tuple[Any, Any]) -> list[str]:
    """The values (text of strings and numbers) of the ``given`` arguments that the ``shown``
    ones no longer hold, of :data:`MIN_HIDDEN` characters or more, the longest first."""
    kept = set(_values(shown))
    gone = {value for value in _values(given) if value not in kept and len(value) >= MIN_HIDDEN}
    return sorted(gone, key=lambda value: (-len(value), value))


def blanked(text: str, values: list[str]) -> str:
    """``text`` with every one of ``values`` (the longest first) replaced by :data:`MASK`."""
    for value in values:
        text = text.replace(value, MASK)
    return text


def redacted(
    job: Mapping[str, Any], redact: Redact | None, redact_error: RedactError | None
) -> dict[str, Any]:
    """``job`` (a row of the jobs table: ``name``, ``args``, ``kwargs``, and perhaps ``errors``,
    ``result``, ``meta`` and the texts of :data:`_TEXTS`) as the hooks let it be seen: the hidden
    argument values are blanked out of the texts and of the result's and meta's strings too."""
    shown = dict(job)
    values: list[str] = []
    if redact is not None:
        args, kwargs = redact(job["name"], job["args"], job["kwargs"])
        values = hidden((job["args"], job["kwargs"]), (args, kwargs))
        shown.update(args=args, kwargs=kwargs)

    def text(value: Any, error: bool) -> Any:
        if not isinstance(value, str):
            return value
        value = blanked(value, values)
        return redact_error(job["name"], value) if error and redact_error else value

    for key in _TEXTS:
        if key in shown:
            shown[key] = text(shown[key], error=key == "last_error")
    for key in ("result", "meta"):
        if values and shown.get(key):
            shown[key] = _blanked_json(shown[key], values)
    if isinstance(shown.get("errors"), list):
        shown["errors"] = [
            {k: text(v, error=True) if k in _ERROR_TEXTS else v for k, v in error.items()}
            if isinstance(error, Mapping)
            else error
            for error in shown["errors"]
        ]
    return shown


def _blanked_json(value: Any, values: list[str]) -> Any:
    """A JSON value (a job's result) with ``values`` blanked out of each of its strings."""
    if isinstance(value, str):
        return blanked(value, values)
    if isinstance(value, Mapping):
        return {key: _blanked_json(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_blanked_json(item, values) for item in value]
    return value


def _values(value: Any) -> Iterator[str]:
    """The text of every string and number in a JSON value (not its keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _values(item)
