"""The overview's graph of runs per minute, drawn as SVG polylines without I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

MINUTES = 60
WIDTH = 600
HEIGHT = 120


@dataclass(frozen=True)
class Graph:
    """Two polylines over the last :data:`MINUTES` minutes, the latest on the right."""

    completed: str
    failed: str
    peak: int
    """The most runs of one minute, which the top of the graph stands for."""
    completed_total: int
    failed_total: int


def graph(rows: Iterable[tuple[datetime, int, int]], now: datetime) -> Graph:
    """The graph of ``(minute, completed, failed)`` rows; minutes without a row count 0."""
    latest = now.replace(second=0, microsecond=0)
    first = latest - timedelta(minutes=MINUTES - 1)
    completed = [0] * MINUTES
    failed = [0] * MINUTES
    for minute, done, bad in rows:
        index = int((minute - first).total_seconds() // 60)
        if 0 <= index < MINUTES:
            completed[index] += done
            failed[index] += bad
    peak = max([*completed, *failed, 1])
    return Graph(_points(completed, peak), _points(failed, peak), peak, sum(completed), sum(failed))


def _points(values: list[int], peak: int) -> str:
    step = WIDTH / (MINUTES - 1)
    return " ".join(
        f"{i * step:.1f},{HEIGHT - value * HEIGHT / peak:.1f}" for i, value in enumerate(values)
    )
