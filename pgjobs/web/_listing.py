"""Pages of jobs, decided without I/O: which index order a state is listed in, what a filter
and a cursor may hold, and which scanned jobs make the page.

A page is keyset-paginated: its link to the next page carries the keys of the last job it read
(a cursor), never an offset, so page 10,000 costs what page 1 does. With a filter, a page reads
at most :data:`SCAN` jobs of the state and shows those that match; when none of them do, it says
how far it looked and links on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._admin import STATES
from .._settings import QUEUE_NAME

PAGE = 50
"""Jobs per page."""

SCAN = 2000
"""Jobs a filtered page reads at most."""

MAX_SEARCH = 200
"""Characters of a search over arguments."""

BIGINT = 2**63 - 1

MAX_CURSOR = 512
"""Characters of a cursor: its keys are a queue name, numbers and a time."""

MAX_NAME = 255


def job_id(text: str) -> int | None:
    """The job id that a path's ``text`` names: 1 to 19 ASCII digits within a ``bigint``;
    ``None`` if it names none."""
    if _JOB_ID.fullmatch(text) is None:
        return None
    number = int(text)
    return number if number <= BIGINT else None


_JOB_ID = re.compile(r"[0-9]{1,19}")


class BadRequest(ValueError):
    """A query string or form the dashboard cannot take: its message says what to fix."""


@dataclass(frozen=True)
class Order:
    """How the jobs of some states are listed: the statement pair of ``WebQueries`` and the
    types of its keys (the last of them the job id)."""

    scan: str
    keys: tuple[type, ...]


ORDERS: Mapping[str, Order] = {
    "available": Order("scan_available", (str, int, datetime, int)),
    "scheduled": Order("scan_waiting", (datetime, int)),
    "retryable": Order("scan_waiting", (datetime, int)),
    "running": Order("scan_running", (datetime, int)),
    "completed": Order("scan_finished", (datetime, int)),
    "discarded": Order("scan_finished", (datetime, int)),
    "cancelled": Order("scan_finished", (datetime, int)),
}
assert set(ORDERS) == set(STATES)


@dataclass(frozen=True)
class Listing:
    """What a jobs page was asked for."""

    state: str
    queue: str | None = None
    name: str | None = None
    search: str | None = None
    after: tuple[Any, ...] | None = None

    @property
    def filtered(self) -> bool:
        return (self.queue, self.name, self.search) != (None, None, None)

    def params(self) -> dict[str, Any]:
        """The parameters of the scan statement."""
        params: dict[str, Any] = {
            "state": self.state,
            "queue": self.queue,
            "name": self.name,
            "search": self.search,
            "scan": SCAN if self.filtered else PAGE + 1,
        }
        for i, key in enumerate(self.after or ()):
            params[f"after{i}"] = key
        return params

    def filters(self) -> dict[str, str]:
        """The filters given, for a query string."""
        given = {"queue": self.queue, "name": self.name, "search": self.search}
        return {key: value for key, value in given.items() if value is not None}

    def query(self, after: tuple[Any, ...] | None) -> dict[str, str]:
        """The query string of this listing from ``after`` on."""
        query = {"state": self.state, **self.filters()}
        if after is not None:
            query["after"] = encode_cursor(after)
        return query


def listing(query: Mapping[str, str], *, searchable: bool = True) -> Listing:
    """The listing a jobs page's query string asks for.

    Raises:
        BadRequest: an unknown state, a queue or job name that cannot be one, a search too long
            (or any search when ``searchable`` is false), a cursor that was not made here.
    """
    state = query.get("state") or "available"
    if state not in ORDERS:
        raise BadRequest(f"state must be one of {', '.join(STATES)}; not {state!r}")
    queue, name = filters(query)
    search = query.get("search") or None
    if search is not None:
        if not searchable:
            raise BadRequest("arguments are redacted here, so they cannot be searched")
        if len(search) > MAX_SEARCH or "\x00" in search:
            raise BadRequest(f"a search is at most {MAX_SEARCH} characters of text")
    after = query.get("after")
    cursor = None if not after else decode_cursor(after, ORDERS[state].keys)
    return Listing(state, queue, name, search, cursor)


def filters(given: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The queue and job name that a query string or form filters by (empty: none).

    Raises:
        BadRequest: a queue or job name that cannot be one.
    """
    queue = given.get("queue") or None
    if queue is not None and not QUEUE_NAME.fullmatch(queue):
        raise BadRequest(f"{queue!r} is not a queue name (letters, digits, _.-)")
    name = given.get("name") or None
    if name is not None and (len(name) > MAX_NAME or "\x00" in name):
        raise BadRequest(f"a job name is at most {MAX_NAME} characters of text")
    return queue, name


def encode_cursor(keys: Sequence[Any]) -> str:
    return json.dumps(
        [k.isoformat() if isinstance(k, datetime) else k for k in keys], separators=(",", ":")
    )


def decode_cursor(text: str, types: tuple[type, ...]) -> tuple[Any, ...]:
    """The keys a cursor made by :func:`encode_cursor` holds, checked against ``types``."""
    bad = BadRequest("the page link is damaged: start from the first page")
    if len(text) > MAX_CURSOR:
        raise bad
    try:
        values = json.loads(text)
    except (ValueError, RecursionError):  # nested too deep for the parser, in fewer characters
        raise bad from None
    if not isinstance(values, list) or len(values) != len(types):
        raise bad
    keys: list[Any] = []
    for value, kind in zip(values, types, strict=True):
        if (kind is int and type(value) is int and -BIGINT - 1 <= value <= BIGINT) or (
            kind is str and isinstance(value, str) and QUEUE_NAME.fullmatch(value)
        ):
            keys.append(value)
        elif kind is datetime and isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                raise bad from None
            if moment.tzinfo is None:
                raise bad
            keys.append(moment)
        else:
            raise bad
    return tuple(keys)


@dataclass(frozen=True)
class Page:
    """The ids of a page's jobs, in order, and the cursor of the next page (``None``: the end)."""

    ids: list[int]
    next: tuple[Any, ...] | None
    scanned: int


def page(rows: Sequence[Sequence[Any]], listing: Listing) -> Page:
    """The page made of scanned ``rows`` (their keys, then whether they match)."""
    limit = SCAN if listing.filtered else PAGE + 1
    hits = [row for row in rows if row[-1]]
    if len(hits) > PAGE:
        shown = hits[:PAGE]
        return Page([row[-2] for row in shown], tuple(shown[-1][:-1]), len(rows))
    more = len(rows) == limit  # a filtered scan that stopped at SCAN: look on from its last row
    return Page([row[-2] for row in hits], tuple(rows[-1][:-1]) if more else None, len(rows))
