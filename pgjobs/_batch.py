"""The handles of a batch being built (:class:`Batch`, :class:`AsyncBatch`): each call runs one
of :mod:`._batches`' operations through the client, on the connection the batch was created
with."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._admin import Operation
from ._batches import seal
from ._connection import AsyncConnection, Connection
from ._sql import Queries

if TYPE_CHECKING:
    from ._call import JobCall

T = TypeVar("T")


class Runner(Protocol):
    """What a batch runs its calls through: the app's client."""

    def add_to_batch(
        self, batch_id: int, calls: Iterable[JobCall], conn: Any = None
    ) -> list[int]: ...

    async def add_to_batch_async(
        self, batch_id: int, calls: Iterable[JobCall], conn: Any = None
    ) -> list[int]: ...

    def run(self, operation: Operation[T], conn: Any = None) -> T: ...

    async def run_async(self, operation: Operation[T], conn: Any = None) -> T: ...


class Batch:
    """A batch being built, from :meth:`App.batch <pgjobs.App.batch>`: add jobs, then seal it.

    Every call runs on the connection the batch was created with (``conn=``), so with a caller's
    connection the batch, its jobs and its sealing commit or roll back together; with ``None``
    each call commits at once on pgjobs' own pool. As a context manager it seals the batch when
    the block ends without an exception; after an exception it is left unsealed, and its
    callbacks never fire unless it is sealed later (:meth:`App.seal_batch`).
    """

    def __init__(self, client: Runner, queries: Queries, batch_id: int, conn: Connection) -> None:
        self._client = client
        self._queries = queries
        self._conn = conn
        self.id = batch_id

    def __repr__(self) -> str:
        return f"<pgjobs.Batch {self.id}>"

    def add(self, call: JobCall) -> int:
        """Enqueue one job in this batch (``job.call(...)``); returns its id."""
        return self.enqueue_many([call])[0]

    def enqueue_many(self, calls: Iterable[JobCall]) -> list[int]:
        """Enqueue jobs in this batch in one statement; returns their ids in order."""
        return self._client.add_to_batch(self.id, calls, self._conn)

    def seal(self) -> None:
        """No more jobs from the creating code: the callbacks fire once none is pending (at once
        if none is). Jobs of the batch may still add to it (:meth:`App.add_to_batch`)."""
        self._client.run(seal(self._queries, self.id), self._conn)

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.seal()


class AsyncBatch:
    """:class:`Batch` for async code, from :meth:`App.batch_async <pgjobs.App.batch_async>`."""

    def __init__(
        self, client: Runner, queries: Queries, batch_id: int, conn: AsyncConnection
    ) -> None:
        self._client = client
        self._queries = queries
        self._conn = conn
        self.id = batch_id

    def __repr__(self) -> str:
        return f"<pgjobs.AsyncBatch {self.id}>"

    async def add(self, call: JobCall) -> int:
        """:meth:`Batch.add` for async code."""
        return (await self.enqueue_many([call]))[0]

    async def enqueue_many(self, calls: Iterable[JobCall]) -> list[int]:
        """:meth:`Batch.enqueue_many` for async code."""
        return await self._client.add_to_batch_async(self.id, calls, self._conn)

    async def seal(self) -> None:
        """:meth:`Batch.seal` for async code."""
        await self._client.run_async(seal(self._queries, self.id), self._conn)

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.seal()
