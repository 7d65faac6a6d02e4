"""Medians with min-max, pgjobs/peer ratios, the Markdown table and the JSON file."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from tests.benchmarks._measure import Sample

PGJOBS = "pgjobs"
RAW = "raw"


@dataclass(frozen=True)
class Row:
    title: str
    benchmark: str
    metric: str
    unit: str
    ceilings: tuple[tuple[str, str], ...] = ()
    """(label, raw metric) pairs shown in the raw-ceiling column."""


ROWS = (
    Row(
        "single enqueue, jobs/s",
        "enqueue",
        "jobs_per_second",
        "rate",
        (("pgbench", "pgbench_insert_1"), ("psycopg", "psycopg_insert")),
    ),
    Row("bulk enqueue, jobs/s", "bulk", "jobs_per_second", "rate", (("COPY", "copy"),)),
    Row(
        "processing, jobs/s",
        "process",
        "jobs_per_second",
        "rate",
        (
            ("pgbench 1 conn", "pgbench_claim_1"),
            ("pgbench 4 conns", "pgbench_claim_4"),
            ("psycopg", "psycopg_claim"),
        ),
    ),
    Row("pickup latency p50, ms", "latency", "p50_ms", "ms"),
    Row("pickup latency p99, ms", "latency", "p99_ms", "ms"),
    Row("worker RSS idle, MB", "latency", "rss_idle_mb", "MB"),
    Row("worker RSS under load, MB", "process", "rss_load_mb", "MB"),
)

CEILING_TITLES = {
    "pgbench_insert_1": "INSERT + COMMIT, pgbench, 1 client, jobs/s",
    "psycopg_insert": "INSERT + COMMIT loop, psycopg, 1 connection, jobs/s",
    "copy": "COPY FROM STDIN, psycopg, jobs/s",
    "pgbench_claim_1": "claim 100 + complete, pgbench, 1 client, jobs/s",
    "pgbench_claim_4": "claim 100 + complete, pgbench, 4 clients, jobs/s",
    "psycopg_claim": "claim 100 + complete loop, psycopg, 1 connection, jobs/s",
}


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    count: int


def summarise(samples: Iterable[Sample]) -> dict[tuple[str, str, str], Summary]:
    """(benchmark, system, metric) → median, min, max over the runs."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for sample in samples:
        values[sample.benchmark, sample.system, sample.metric].append(sample.value)
    return {
        key: Summary(statistics.median(found), min(found), max(found), len(found))
        for key, found in values.items()
    }


def unit_of(metric: str) -> str:
    """How a metric is printed: ``rate`` (jobs/s), ``ms`` or ``MB``."""
    if metric.endswith("_ms"):
        return "ms"
    return "MB" if metric.endswith("_mb") else "rate"


def number(value: float, unit: str) -> str:
    if unit == "rate":
        if value >= 100_000:
            return f"{value / 1000:.0f}k"
        if value >= 10_000:
            return f"{value / 1000:.1f}k"
        if value >= 1_000:
            return f"{value / 1000:.2f}k"
        return f"{value:.0f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return f"{value:.0f}"


def cell(summary: Summary | None, unit: str) -> str:
    if summary is None:
        return "—"
    text = number(summary.median, unit)
    if summary.count > 1:
        text += f" ({number(summary.low, unit)}-{number(summary.high, unit)})"
    return text


def markdown(summaries: dict[tuple[str, str, str], Summary], systems: list[tuple[str, str]]) -> str:
    """The comparison table: one row per figure; columns raw ceiling, each system, ratios.

    ``systems`` is (name, label) in column order, pgjobs first.
    """
    peers = [(name, label) for name, label in systems if name != PGJOBS]
    header = ["figure", "raw ceiling", *(label for _, label in systems)]
    header += [f"pgjobs / {label}" for _, label in peers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in ROWS:
        ceilings = [
            f"{label} {number(found.median, row.unit)}"
            for label, metric in row.ceilings
            if (found := summaries.get((row.benchmark, RAW, metric)))
        ]
        cells = [row.title, "; ".join(ceilings) or "—"]
        cells += [
            cell(summaries.get((row.benchmark, name, row.metric)), row.unit) for name, _ in systems
        ]
        ours = summaries.get((row.benchmark, PGJOBS, row.metric))
        for name, _ in peers:
            theirs = summaries.get((row.benchmark, name, row.metric))
            if ours and theirs and theirs.median:
                cells.append(f"{ours.median / theirs.median:.2f}x")
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ceilings_markdown(summaries: dict[tuple[str, str, str], Summary]) -> str:
    """The raw ceilings as rows of their own, with min-max."""
    lines = ["| raw ceiling | median (min-max) |", "|---|---|"]
    for (benchmark, system, metric), found in sorted(summaries.items()):
        if system == RAW:
            title = CEILING_TITLES.get(metric, f"{benchmark} {metric}")
            lines.append(f"| {title} | {cell(found, 'rate')} |")
    return "\n".join(lines) if len(lines) > 2 else ""
