"""Prometheus metrics read from the database at each scrape (``pip install 'pgjobs[metrics]'``).

Every figure comes from the tables, so any process exports what all workers on all hosts see:
``pgjobs metrics --port 9188`` serves them, and :func:`registry` gives a
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
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
from prometheus_client import make_wsgi_app
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


def families(rows: Iterable[Sequence[Any]]) -> list[Metric]:
    """The metric families for METRICS rows ``(metric, queue, state, value)``, after a scrape
    that reached the database. Every queue seen gets a job count for each unfinished state (0
    when it has none), so a queue's series never vanish while it drains."""
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
    counts: dict[tuple[str, str], float] = {}
    waits: dict[str, float] = {}
    queues: set[str] = set()
    for metric, queue, state, value in rows:
        if queue is not None:
            queues.add(queue)
        if metric == "jobs":
            counts[(queue, state)] = value
        elif metric == "latency":
            waits[queue] = value
        elif metric == "paused":
            paused.add_metric([queue], value)
        elif metric == "held_back":
            held_back.add_metric([queue], value)
        elif metric == "workers":
            workers.add_metric([], value)
        elif metric == "slots":
            slots.add_metric([], value)
    for queue in sorted(queues):
        for state in UNFINISHED:
            jobs.add_metric([queue, state], counts.get((queue, state), 0.0))
        latency.add_metric([queue], waits.get(queue, 0.0))
    return [up(True), jobs, latency, paused, held_back, workers, slots]


def totals(rows: Iterable[Sequence[Any]]) -> list[Metric]:
    """The counters and run-time histogram for JOB_TOTALS rows ``(queue, name, outcome, runs,
    seconds, buckets)``: every run counted since ``job_stats`` was made, on every host."""
    runs = CounterMetricFamily(
        "pgjobs_job_runs",
        "Runs of jobs that ended, by queue, job name and outcome (completed, retried, "
        "discarded, cancelled, snoozed).",
        labels=["queue", "name", "outcome"],
    )
    per_name: dict[str, tuple[list[float], float]] = {}
    for queue, name, outcome, count, seconds, buckets in rows:
        runs.add_metric([queue, name, outcome], count)
        counts, total = per_name.get(name, ([0.0] * len(buckets), 0.0))
        per_name[name] = ([a + b for a, b in zip(counts, buckets, strict=True)], total + seconds)
    durations = HistogramMetricFamily(
        "pgjobs_job_duration_seconds", "How long runs of the job took.", labels=["name"]
    )
    for name, (counts, seconds) in sorted(per_name.items()):
        cumulative, running = [], 0.0
        for bound, count in zip((*map(str, DURATION_BUCKETS), "+Inf"), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        durations.add_metric([name], cumulative, sum_value=seconds)
    return [runs, durations]


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
        queries = self._app.queries
        try:
            rows = self._app._client.run(Operation(queries.metrics, {}, _rows))
            counted = self._app._client.run(Operation(queries.job_totals, {}, _totals))
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


def serve(app: App, host: str, port: int) -> None:
    """Serve ``app``'s metrics on ``http://host:port/metrics`` until SIGTERM or SIGINT.

    Raises:
        OSError: the address cannot be listened on (in use, not this host's).
    """
    with make_server(host, port, make_wsgi_app(registry(app)), handler_class=_Quiet) as server:

        def stop(signum: int, frame: object) -> None:
            threading.Thread(target=server.shutdown).start()  # not from serve_forever's thread

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("serving metrics on http://%s:%s/metrics", host, server.server_port)
        server.serve_forever()


class _Quiet(WSGIRequestHandler):
    """No line per scrape on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["metric"], r["queue"], r["state"], r["value"]) for r in rows]


def _totals(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["queue"], r["name"], r["outcome"], r["runs"], r["seconds"], r["buckets"]) for r in rows
    ]
