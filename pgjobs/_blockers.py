"""Naming who holds a lock on the jobs table when pgjobs' bounded lock wait runs out.

pgjobs' own connections wait at most ``LOCK_TIMEOUT`` for a lock (see :mod:`pgjobs._connection`).
When that wait fails, the error the client raises and the line the worker logs say which
sessions hold a lock on the jobs table that keeps others from writing it: their pid,
application, how long their transaction has been open and the start of their statement.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ._connection import LOCK_TIMEOUT, connect
from ._errors import DatabaseError
from ._settings import Settings
from ._sql import Queries


def lock_wait_error(settings: Settings, queries: Queries) -> DatabaseError:
    """The error for a lock wait on pgjobs' own pool that timed out; nothing was written."""
    try:
        with connect(settings, "pgjobs-client", limits=True) as conn:
            holders = describe(conn.execute(queries.lock_holders).fetchall())
    except (psycopg.Error, DatabaseError) as exc:
        holders = f"who holds it could not be looked up ({str(exc).strip()})"
    return DatabaseError(
        f"waited {LOCK_TIMEOUT:g} s for a lock on the jobs table; {holders}. Nothing was written"
    )


async def lock_holders(conn: psycopg.AsyncConnection[Any], queries: Queries) -> str:
    """:func:`describe` the lock holders, looked up on ``conn``; never raises."""
    try:
        cur = await conn.execute(queries.lock_holders)
        return describe(await cur.fetchall())
    except psycopg.Error as exc:
        return f"who holds it could not be looked up ({str(exc).strip()})"


def describe(rows: list[tuple[Any, ...]]) -> str:
    """``lock_holders`` rows as words."""
    if not rows:
        return "no session holds a lock on it any more (it was a passing wait)"
    return "held by " + "; ".join(
        f"pid {pid} ({application or 'no application_name'}, {mode}, in a transaction open "
        f"{age:.1f} s"
        f"{f': {query!r}' if query else ''})"
        for pid, application, mode, age, query in rows
    )
