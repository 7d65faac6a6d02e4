"""Inline mode: jobs are written as usual and run here once their transaction has committed.

A job enqueued on pgjobs' own pool commits at once, so it runs before ``enqueue`` returns; one
enqueued on a SQLAlchemy ``Session`` runs when that session commits (its ``after_commit``
event); one enqueued on any other connection runs at :meth:`Inline.wait` (and at the end of the
block). Each run is :func:`~pgjobs.testing.drain`: a burst worker, which claims only committed
jobs, so a job whose transaction or savepoint rolled back never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._app import App
from .._batch import AsyncBatch, Batch
from .._call import JobCall
from .._unique import JobId
from ._real import drain, drain_async

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class Inline:
    """``app`` in inline mode, from :func:`inline`."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._sessions: set[int] = set()
        """Sessions (by id) with enqueues whose commit has not come yet."""
        self._running = False

    # -- the recorder: write as usual, then run what committed ------------------------------

    def enqueue(self, calls: list[JobCall], conn: Any) -> list[JobId]:
        with self._writing():
            ids = self.app.enqueue_many(calls, conn=conn)
        self._after_write(conn)
        return ids

    async def enqueue_async(self, calls: list[JobCall], conn: Any) -> list[JobId]:
        with self._writing():
            ids = await self.app.enqueue_many_async(calls, conn=conn)
        await self._after_write_async(conn)
        return ids

    def add_to_batch(self, batch_id: int, calls: list[JobCall], conn: Any) -> list[int]:
        with self._writing():
            ids = self.app.add_to_batch(batch_id, calls, conn=conn)
        self._after_write(conn)
        return ids

    async def add_to_batch_async(self, batch_id: int, calls: list[JobCall], conn: Any) -> list[int]:
        with self._writing():
            ids = await self.app.add_to_batch_async(batch_id, calls, conn=conn)
        await self._after_write_async(conn)
        return ids

    def batch(
        self,
        on_success: JobCall | None,
        on_complete: JobCall | None,
        description: str | None,
        conn: Any,
    ) -> Batch:
        with self._writing():
            return self.app.batch(
                on_success=on_success, on_complete=on_complete, description=description, conn=conn
            )

    async def batch_async(
        self,
        on_success: JobCall | None,
        on_complete: JobCall | None,
        description: str | None,
        conn: Any,
    ) -> AsyncBatch:
        with self._writing():
            return await self.app.batch_async(
                on_success=on_success, on_complete=on_complete, description=description, conn=conn
            )

    # -- running -----------------------------------------------------------------------------

    def wait(self) -> None:
        """Run every committed job that is due, and the jobs they enqueue."""
        if self._running:
            return  # a job's enqueue: the drain running it takes it too
        self._running = True
        try:
            drain(self.app)
        finally:
            self._running = False

    async def wait_async(self) -> None:
        """:meth:`wait` for async tests."""
        if self._running:
            return
        self._running = True
        try:
            await drain_async(self.app)
        finally:
            self._running = False

    def _after_write(self, conn: Any) -> None:
        from sqlalchemy.orm import Session

        if conn is None and not _in_event_loop():
            self.wait()
        elif isinstance(conn, Session):
            self._sessions.add(id(conn))

    async def _after_write_async(self, conn: Any) -> None:
        if conn is None:
            await self.wait_async()

    def _after_commit(self, session: Session) -> None:
        if id(session) in self._sessions:
            self._sessions.discard(id(session))
            if not _in_event_loop():  # an AsyncSession's: its test awaits wait_async()
                self.wait()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The app writes its enqueues itself meanwhile."""
        self.app._record_enqueues(None)
        try:
            yield
        finally:
            self.app._record_enqueues(self)

    # -- the block ----------------------------------------------------------------------------

    def __enter__(self) -> Inline:
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        self.app._record_enqueues(self)
        event.listen(Session, "after_commit", self._after_commit)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()
        if exc_type is None:
            self.wait()

    async def __aenter__(self) -> Inline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()
        if exc_type is None:
            await self.wait_async()

    def _stop(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        self.app._record_enqueues(None)
        event.remove(Session, "after_commit", self._after_commit)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def inline(app: App) -> Inline:
    """Run ``app``'s jobs here as soon as their enqueue has committed (see the module)::

    with pgjobs.testing.inline(app):
        client.post("/users", json={"email": "ada@example.com"})  # commits: the job runs
    """
    return Inline(app)
