"""Queues whose claims the database refuses, set aside so that the other queues run.

A claim is one statement for many queues, and the database refuses all of it for what one queue
holds: a setting out of range, written before the table checked it or past its checks, or a job
whose row the claim cannot update. The worker then claims queue by queue, sets aside each queue
refused on its own, and claims the others as before (nothing it claimed is left behind). A queue
set aside is tried again when its settings change, and after a poll interval in any case. Its
refusal is logged when it begins, and again only if the problem changes; its end when the queue
is claimed again. Pure bookkeeping: the worker does the claims.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Refusal:
    """Why a queue's claim was refused, and when (loop time)."""

    problem: str
    at: float


class Refusals:
    """The queues set aside, each with its refusal; tried again ``retry_after`` seconds after
    their latest one, or at once after :meth:`retry`."""

    def __init__(self, retry_after: float) -> None:
        self._retry_after = retry_after
        self._refused: dict[str, Refusal] = {}

    def __bool__(self) -> bool:
        return bool(self._refused)

    def skipped(self, now: float) -> frozenset[str]:
        """The queues to leave out of a claim at loop time ``now``."""
        return frozenset(
            queue for queue, r in self._refused.items() if now - r.at < self._retry_after
        )

    def refuse(self, queue: str, problem: str, now: float) -> bool:
        """Set ``queue`` aside for ``problem``; True if that is news (to log), False if the
        queue was already refused for it."""
        before = self._refused.get(queue)
        self._refused[queue] = Refusal(problem, now)
        return before is None or before.problem != problem

    def claimed(self, queues: Iterable[str]) -> list[str]:
        """``queues`` were claimed from without a refusal: those of them that had been set
        aside, which are not any more."""
        back = [queue for queue in queues if queue in self._refused]
        for queue in back:
            del self._refused[queue]
        return back

    def retry(self) -> None:
        """Try every queue set aside at the next claim (settings changed)."""
        for refusal in self._refused.values():
            refusal.at = float("-inf")
