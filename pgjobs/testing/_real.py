"""Real mode: jobs on the test's database, run in this process by the worker itself."""

from __future__ import annotations

import asyncio

from .._app import App
from .._worker import Worker


def drain(app: App) -> None:
    """Run ``app``'s due jobs through the real worker path (a burst :class:`~pgjobs.Worker` in
    this process) until none is available: the jobs they enqueue too. Jobs due later (a start
    time, a retry's back-off) stay waiting; :class:`~pgjobs.testing.Clock` makes them due.

    Call it from the main thread (a worker handles SIGTERM and SIGINT while it runs).

    Raises:
        RuntimeError: called from a running event loop; use :func:`drain_async`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(drain_async(app))
    else:
        raise RuntimeError("drain() called from a running event loop: await drain_async(app)")


async def drain_async(app: App) -> None:
    """:func:`drain` for async tests, on the running loop."""
    await Worker(app, burst=True).run()
