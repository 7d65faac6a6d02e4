"""Prometheus metrics read from the database at each scrape (``pip install 'pgjobs[metrics]'``).

Every figure comes from the tables, so any process exports what all workers on all hosts see:
``pgjobs metrics --port 9188`` serves them (with ``pgjobs[web]`` for its server and its
authentication, see :func:`pgjobs.web.serve_metrics`), and :func:`registry` gives a
``prometheus_client`` registry to mount in an application of your own::

    from prometheus_client import make_asgi_app
    from pgjobs.metrics import registry

    app.mount("/metrics", make_asgi_app(registry(jobs_app)))

A scrape is two statements on the app's connection pool (``METRICS`` and ``JOB_TOTALS`` in
``_sql.py``): the unfinished jobs, read through their partial indexes, and the run counts and
run-time buckets that workers add to ``job_stats`` as they write outcomes. The finished history
itself is never scanned. If the
database cannot answer, the scrape still succeeds with ``pgjobs_up 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ._admin import Operation
from ._app import App
from ._errors import DatabaseError
from ._sql import DURATION_BUCKETS

log = logging.getLogger("pgjobs.metrics")

DEFAULT_PORT = 9188
"""The port ``pgjobs metrics`` listens on unless told otherwise."""

UNFINISHED = ("scheduled", "available", "running", "retryable")
"""The states whose jobs are counted; the finished history is never scanned."""


LABEL_VALUES = 100
"""Queues, and job names, that a metric family names at most: the busiest. The others are summed
into one series labelled :data:`OTHER`, so that a scrape stays small however many there are."""

OTHER = "(other)"
"""The label value of the queues or job names past :data:`LABEL_VALUES` (no queue is named so)."""


def busiest(weights: Mapping[str, float], limit: int = LABEL_VALUES) -> set[str]:
    """The ``limit`` keys of ``weights`` that weigh most (the first by name among equals)."""
    if len(weights) <= limit:
        return set(weights)
    return set(sorted(weights, key=lambda key: (-weights[key], key))[:limit])


def families(rows: Iterable[Sequence[Any]], limit: int = LABEL_VALUES) -> list[Metric]:
    """The metric families for METRICS rows ``(metric, queue, state, value)``, after a scrape
    that reached the database. Every queue seen gets a job count for each unfinished state (0
    when it has none), so a queue's series never vanish while it drains. The ``limit`` queues
    with the most unfinished jobs are named; the others are one :data:`OTHER` queue: their jobs
    summed, their longest latency, paused or held back (1) if any of them is."""
    jobs = GaugeMetricFamily(
        "pgjobs_jobs", "Jobs per queue and unfinished state.", labels=["queue", "state"]
    )
    latency = GaugeMetricFamily(
        "pgjobs_queue_latency_seconds",
        "How long the oldest available job of the queue has waited (0 when none waits).",
        labels=["queue"],
    )
    paused = GaugeMetricFamily(
        "pgjobs_queue_paused", "1 while the queue is paused.", labels=["queue"]
    )
    held_back = GaugeMetricFamily(
        "pgjobs_queue_held_back",
        "1 when the queue's latest claim left jobs waiting for room under its concurrency limit.",
        labels=["queue"],
    )
    workers = GaugeMetricFamily("pgjobs_workers", "Workers alive (their lease not expired).")
    slots = GaugeMetricFamily("pgjobs_worker_slots", "Job slots of the workers alive.")
    rows = list(rows)
    weights: dict[str, float] = {}
    for metric, queue, _, value in rows:
        if queue is not None:
            weights[queue] = weights.get(queue, 0.0) + (value if metric == "jobs" else 0.0)
    named = busiest(weights, limit)
    counts: dict[tuple[str, str], float] = {}
    highest: dict[str, dict[str, float]] = {"latency": {}, "paused": {}, "held_back": {}}
    for metric, queue, state, value in rows:
        label = queue if queue in named else OTHER
        if metric == "jobs":
            counts[(label, state)] = counts.get((label, state), 0.0) + value
        elif metric in highest:
            highest[metric][label] = max(highest[metric].get(label, value), value)
        elif metric == "workers":
            workers.add_metric([], value)
        elif metric == "slots":
            slots.add_metric([], value)
    for queue in _ordered({label for label, _ in counts} | named):
        for state in UNFINISHED:
            jobs.add_metric([queue, state], counts.get((queue, state), 0.0))
        latency.add_metric([queue], highest["latency"].get(queue, 0.0))
    for family, metric in ((paused, "paused"), (held_back, "held_back")):
        for queue in _ordered(highest[metric]):
            family.add_metric([queue], highest[metric][queue])
    return [up(True), jobs, latency, paused, held_back, workers, slots]


def totals(rows: Iterable[Sequence[Any]], limit: int = LABEL_VALUES) -> list[Metric]:
    """The counters and run-time histogram for JOB_TOTALS rows ``(queue, name, outcome, runs,
    seconds, buckets)``: every run counted since ``job_stats`` was made, on every host. The
    ``limit`` job names, and queues, with the most runs are named; the runs of the others are
    summed as :data:`OTHER`."""
    rows = list(rows)
    by_name: dict[str, float] = {}
    by_queue: dict[str, float] = {}
    for queue, name, _, count, _, _ in rows:
        by_name[name] = by_name.get(name, 0.0) + count
        by_queue[queue] = by_queue.get(queue, 0.0) + count
    names, queues = busiest(by_name, limit), busiest(by_queue, limit)
    counted: dict[tuple[str, str, str], float] = {}
    per_name: dict[str, tuple[list[float], float]] = {}
    for queue, name, outcome, count, seconds, buckets in rows:
        key = (queue if queue in queues else OTHER, name if name in names else OTHER, outcome)
        counted[key] = counted.get(key, 0.0) + count
        counts, total = per_name.get(key[1], ([0.0] * len(buckets), 0.0))
        per_name[key[1]] = ([a + b for a, b in zip(counts, buckets, strict=True)], total + seconds)
    runs = CounterMetricFamily(
        "pgjobs_job_runs",
        "Runs of jobs that ended, by queue, job name and outcome (completed, retried, "
        "discarded, cancelled, snoozed).",
        labels=["queue", "name", "outcome"],
    )
    for key, count in counted.items():
        runs.add_metric(list(key), count)
    durations = HistogramMetricFamily(
        "pgjobs_job_duration_seconds", "How long runs of the job took.", labels=["name"]
    )
    for name in _ordered(per_name):
        counts, seconds = per_name[name]
        cumulative, running = [], 0.0
        for bound, count in zip((*map(str, DURATION_BUCKETS), "+Inf"), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        durations.add_metric([name], cumulative, sum_value=seconds)
    return [runs, durations]


def _ordered(labels: Iterable[str]) -> list[str]:
    """``labels`` by name, :data:`OTHER` last."""
    return sorted(labels, key=lambda label: (label == OTHER, label))


def up(reached: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "pgjobs_up", "1 if the scrape reached the database, else 0.", value=float(reached)
    )


class DatabaseCollector(Collector):
    """Collects :func:`families` from the database of ``app`` at every scrape."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._failing = False

    def collect(self) -> Iterator[Metric]:
        queries = self._app._queries
        try:
            rows = self._app._run(Operation(queries.metrics, {}, _rows))
            counted = self._app._run(Operation(queries.job_totals, {}, _totals))
        except (DatabaseError, psycopg.Error) as exc:  # reported as pgjobs_up 0
            if not self._failing:
                log.warning("metrics: cannot read the database: %s", exc)
            self._failing = True
            yield up(False)
            return
        self._failing = False
        yield from families(rows)
        yield from totals(counted)


def registry(app: App) -> CollectorRegistry:
    """A registry holding pgjobs' metrics for ``app``'s database (and nothing else)."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(DatabaseCollector(app))
    return collectors


def _rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["metric"], r["queue"], r["state"], r["value"]) for r in rows]


def _totals(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["queue"], r["name"], r["outcome"], r["runs"], r["seconds"], r["buckets"]) for r in rows
    ]
