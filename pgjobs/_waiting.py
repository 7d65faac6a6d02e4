"""Waiting for a job to end (:meth:`App.wait_for`), woken by a notification, not by polling.

The waiter opens a connection of its own, LISTENs on the schema's results channel, then marks
the job awaited with ``await_job()``, which returns the job's state (migration 0020 explains why
no wake-up can be lost in between). Until the job has ended it waits for a notification carrying
the job's id, and reads the state again: a notification is anyone's word, so only the table is
believed. It also reads the state every ``poll_interval`` whatever it hears, and behind a
transaction pooler (``poll_only`` without ``listen_database_url``) that is all it does. The mark
stays when a wait times out: the job's end then notifies nobody in particular, once.

:class:`Wait` holds the decisions; :func:`wait_for` and :func:`wait_for_async` only do the I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ._connection import connect, connect_async
from ._errors import ValidationError
from ._records import JobRecord, from_row
from ._settings import Settings
from ._sql import Queries

ENDED = ("completed", "discarded", "cancelled")
"""The states a job ends in: a wait returns once its job is in one of them."""


class Wait:
    """One wait for job ``job_id``: what to do with each state read, and how long to pause."""

    def __init__(self, settings: Settings, queries: Queries, job_id: int, timeout: float) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ValidationError("timeout", "pass a number of seconds")
        if not 0 < timeout < math.inf:  # false for NaN too
            raise ValidationError("timeout", f"{timeout!r} is not a positive number of seconds")
        self.job_id = job_id
        self.timeout = float(timeout)
        self.queries = queries
        self.listens = settings.listen_database_url is not None or not settings.poll_only
        """Whether notifications can be relied on (not behind a transaction pooler)."""
        if settings.listen_database_url is not None:
            settings = dataclasses.replace(settings, database_url=settings.listen_database_url)
        self.settings = settings
        self.poll_interval = settings.poll_interval
        self._deadline = time.monotonic() + self.timeout
        self.state: str | None = None

    @property
    def listen(self) -> sql.Composed:
        return sql.SQL("LISTEN {}").format(sql.Identifier(self.queries.results_channel))

    def ended(self, state: str | None) -> bool:
        """Whether job ``job_id``, now in ``state``, has ended.

        Raises:
            ValueError: there is no such job (deleted, if it was seen before).
        """
        if state is None:
            seen = self.state is not None
            raise ValueError(
                f"job {self.job_id} "
                + ("was deleted while waited for" if seen else "does not exist")
            )
        self.state = state
        return state in ENDED

    def pause(self) -> float:
        """Seconds to wait for a notification before reading the state again.

        Raises:
            TimeoutError: the timeout has passed, naming the job and its state.
        """
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"job {self.job_id} is still {self.state} after {self.timeout:g} s; wait longer, "
                "or look at it with `pgjobs job ID`"
            )
        return min(left, self.poll_interval)

    def woken(self, notify: psycopg.Notify) -> bool:
        return notify.channel == self.queries.results_channel and notify.payload == str(self.job_id)

    @property
    def params(self) -> dict[str, Any]:
        return {"id": self.job_id}


def wait_for(settings: Settings, queries: Queries, job_id: int, timeout: float) -> JobRecord:
    """Wait until job ``job_id`` has ended; its final record (:meth:`App.get_job`)."""
    wait = Wait(settings, queries, job_id, timeout)
    with connect(wait.settings, "pgjobs-waiter", limits=True) as conn:
        if wait.listens:
            conn.execute(wait.listen)
        state = conn.execute(queries.await_job, wait.params).fetchone()
        while not wait.ended(state[0] if state else None):
            pause = wait.pause()
            if wait.listens:
                for notify in conn.notifies(timeout=pause):
                    if wait.woken(notify):
                        break
            else:
                time.sleep(pause)
            state = conn.execute(queries.get_result, wait.params).fetchone()
        record = conn.cursor(row_factory=dict_row).execute(queries.get_job, wait.params).fetchone()
    return _final(wait, record)


async def wait_for_async(
    settings: Settings, queries: Queries, job_id: int, timeout: float
) -> JobRecord:
    """:func:`wait_for` for async code."""
    wait = Wait(settings, queries, job_id, timeout)
    async with await connect_async(wait.settings, "pgjobs-waiter", limits=True) as conn:
        if wait.listens:
            await conn.execute(wait.listen)
        state = await (await conn.execute(queries.await_job, wait.params)).fetchone()
        while not wait.ended(state[0] if state else None):
            pause = wait.pause()
            if wait.listens:
                async for notify in conn.notifies(timeout=pause):
                    if wait.woken(notify):
                        break
            else:
                await asyncio.sleep(pause)
            state = await (await conn.execute(queries.get_result, wait.params)).fetchone()
        cur = conn.cursor(row_factory=dict_row)
        record = await (await cur.execute(queries.get_job, wait.params)).fetchone()
    return _final(wait, record)


def _final(wait: Wait, row: dict[str, Any] | None) -> JobRecord:
    if row is None:  # deleted in the moment since it ended
        raise ValueError(f"job {wait.job_id} ended {wait.state} and was deleted at once")
    return from_row(JobRecord, row)
