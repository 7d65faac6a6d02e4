"""Counts that cost the same at any size: exact up to :data:`CAP`, estimated beyond."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CAP = 10_000
"""Jobs counted one by one at most, per state or queue."""


@dataclass(frozen=True)
class Count:
    """How many jobs; ``estimated`` when there were :data:`CAP` or more."""

    jobs: int
    estimated: bool = False

    def __str__(self) -> str:
        return f"≈{self.jobs:,}" if self.estimated else f"{self.jobs:,}"

    def __bool__(self) -> bool:
        return self.jobs > 0


def counted(exact: int, estimate: float | None = None) -> Count:
    """The count to show for ``exact`` jobs counted up to :data:`CAP`, and the planner's
    ``estimate`` (asked for only when the count reached the cap)."""
    if exact < CAP:
        return Count(exact)
    return Count(max(CAP, round(estimate or 0)), estimated=True)


def plan_rows(explained: Any) -> float:
    """The rows that ``EXPLAIN (FORMAT JSON)`` expects."""
    return float(explained[0]["Plan"]["Plan Rows"])
