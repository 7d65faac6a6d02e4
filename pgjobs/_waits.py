"""Waiting: for an event with a time limit, and between retries with a doubling back-off."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that arrives just as
    the event is set (cpython#86296), and a stopping worker would then wait forever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
            return True
    return False


class Backoff:
    """A delay that doubles from ``first`` up to ``longest`` each time it is taken."""

    def __init__(self, first: float, longest: float) -> None:
        self._first = first
        self._longest = longest
        self.delay = first
        """The delay the next :meth:`take` returns."""

    def take(self) -> float:
        """The delay to wait now; the next one doubles."""
        delay = self.delay
        self.delay = min(delay * 2, self._longest)
        return delay

    async def sleep(self) -> None:
        await asyncio.sleep(self.take())

    def reset(self) -> None:
        self.delay = self._first
