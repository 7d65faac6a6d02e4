"""Prometheus metrics read from the database at each scrape (``pip install 'pgjobs[metrics]'``).

Every figure comes from the tables, so any process exports what all workers on all hosts see:
``pgjobs metrics --port 9188`` serves them, and :func:`registry` gives a
``prometheus_client`` registry to mount in an application of your own::

    from prometheus_client import make_asgi_app
    from pgjobs.metrics import registry

    app.mount("/metrics", make_asgi_app(registry(jobs_app)))

A scrape is one statement on the app's connection pool (``METRICS`` in ``_sql.py``), which reads
the unfinished jobs through their partial indexes and never the finished history. If the
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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ._admin import Operation
from ._app import App
from ._errors import DatabaseError

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
        operation = Operation(self._app.queries.metrics, {}, _rows)
        try:
            rows = self._app._client.run(operation)
        except (DatabaseError, psycopg.Error) as exc:  # reported as pgjobs_up 0
            if not self._failing:
                log.warning("metrics: cannot read the database: %s", exc)
            self._failing = True
            yield up(False)
            return
        self._failing = False
        yield from families(rows)


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
