"""Confirming the starts of rate-limited jobs once their code has begun.

A claim records each start in a rate-limited queue as pending (``queue_starts.job_id``), and a
pending start counts in every window of its queue whatever its age. The worker confirms the
starts of a claim's jobs (CONFIRM_STARTS) once each of them has begun: its ``def`` function has
been entered in its thread, its ``async def`` one has run up to its first ``await`` (which it does
as soon as its task first runs), or it has ended (a job that never reaches its code, as when its
arguments no longer fit). The database stamps the confirmed starts with its own clock, after the
start each job saw, and counts them for one period from that stamp. So a start that a window
admits comes at least one period after the start it replaces, as the jobs see them, on any host,
however late a claim landed or a job started after it. A start never confirmed (its worker
stopped first, or died) is stamped by a later claim of its queue once its job no longer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

import psycopg

from ._errors import DatabaseError
from ._link import LAST_TRY, Link
from ._sql import Queries

P = ParamSpec("P")
T = TypeVar("T")


class Starts:
    """Confirms the starts of rate-limited jobs, a claim's at a time, on ``link``."""

    def __init__(self, link: Link, queries: Queries) -> None:
        self._link = link
        self._queries = queries
        self._confirming: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[None]] = set()
        """Those whose jobs have not all begun."""

    def watch(self, ids: Sequence[int]) -> Callable[[int], None]:
        """Confirm the starts of jobs ``ids`` once each has begun. Returns ``begun(id)``, to call
        on the loop as each job's code begins; calling it again for a job does nothing."""
        left = set(ids)
        everyone = asyncio.Event()

        def begun(job_id: int) -> None:
            left.discard(job_id)
            if not left:
                everyone.set()

        task = asyncio.create_task(self._confirm(list(ids), everyone), name="pgjobs-starts")
        for tasks in (self._confirming, self._waiting):
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return begun

    async def _confirm(self, ids: list[int], everyone: asyncio.Event) -> None:
        await everyone.wait()
        self._waiting.discard(asyncio.current_task())
        # refused or given up (the worker stops): the starts stay pending, which holds a window
        # longer, never shorter, and a later claim stamps them once their jobs have ended
        with contextlib.suppress(DatabaseError, psycopg.Error):
            await self._link.fetch(self._queries.confirm_starts, {"ids": ids})

    async def stop(self) -> None:
        """Give up the confirmations whose jobs never began (they were handed back), and let
        those under way try once more (the stopping worker's link gives up after one try):
        cancelling a statement would wait for the server to confirm the cancel."""
        for task in self._waiting:
            task.cancel()
        if self._confirming:
            await asyncio.wait(self._confirming, timeout=2 * LAST_TRY)
        for task in self._confirming:
            task.cancel()
        await asyncio.gather(*self._confirming, return_exceptions=True)


class Entering(Executor):
    """The worker's thread pool for one ``def`` job: ``entered()`` is called in the thread just
    before each call it runs, when the job's code begins (its ``on_exhausted`` hook calls it
    again, which :meth:`Starts.watch`'s ``begun`` ignores)."""

    def __init__(self, threads: Executor, entered: Callable[[], object]) -> None:
        self._threads = threads
        self._entered = entered

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        entered = self._entered

        def call() -> T:
            entered()
            return fn(*args, **kwargs)

        return self._threads.submit(call)
