"""A worker's tally of the outcomes it wrote, for ``job_stats`` (migration 0013).

The acker counts each outcome the database accepted, with the run time the worker measured; the
worker adds the tally to its ``slot``'s rows every :data:`STATS_INTERVAL` and when it stops, in
one statement (``ADD_JOB_STATS``). Counting apart from the outcome writes keeps them as fast as
before: a row per minute updated once a second, not at every write. A worker killed outright
loses at most the last interval's counts, never an outcome.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from ._sql import DURATION_BUCKETS

STATS_INTERVAL = 1.0
"""Seconds between a worker's additions to ``job_stats``."""

STATS_LAST_TRY = 5.0
"""Seconds a stopping worker gives its last addition to ``job_stats``."""

STATS_SLOTS = 32
"""Rows of ``job_stats`` per minute, queue, name and outcome that workers spread over (each
picks one at start), so that two workers seldom update one row."""

OUTCOMES = {
    "completed": "completed",
    "retryable": "retried",
    "discarded": "discarded",
    "cancelled": "cancelled",
    "scheduled": "snoozed",
}
"""``job_stats.outcome`` for each state an attempt ends in."""


@dataclass
class _Count:
    runs: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))


class Tally:
    """Runs per ``(queue, job name, outcome)``: how many, their seconds, their buckets."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], _Count] = {}

    def __bool__(self) -> bool:
        return bool(self._counts)

    def add(self, queue: str, name: str, state: str, seconds: float) -> None:
        key = (queue, name, OUTCOMES[state])
        count = self._counts.get(key)
        if count is None:  # not a setdefault: that builds a _Count for every job counted
            count = self._counts[key] = _Count()
        count.runs += 1
        count.seconds += seconds
        count.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1

    def take(self) -> Tally:
        """Everything counted so far, leaving this tally empty."""
        taken = Tally()
        taken._counts, self._counts = self._counts, {}
        return taken

    def merge(self, other: Tally) -> None:
        """Add ``other`` back (a tally that could not be stored)."""
        for key, theirs in other._counts.items():
            mine = self._counts.setdefault(key, _Count())
            mine.runs += theirs.runs
            mine.seconds += theirs.seconds
            mine.buckets = [a + b for a, b in zip(mine.buckets, theirs.buckets, strict=True)]

    def params(self, slot: int) -> dict[str, Any]:
        """``ADD_JOB_STATS``' parameters."""
        keys = list(self._counts)
        counts = [self._counts[key] for key in keys]
        return {
            "slot": slot,
            "queues": [queue for queue, _, _ in keys],
            "names": [name for _, name, _ in keys],
            "outcomes": [outcome for _, _, outcome in keys],
            "runs": [c.runs for c in counts],
            "seconds": [c.seconds for c in counts],
            "buckets": ["{" + ",".join(map(str, c.buckets)) + "}" for c in counts],
        }
