"""The command line every system's benchmark module answers, and the parts they share.

::

    python -m tests.benchmarks.peers.<system>_bench MODE --database-url URL [--jobs N]
        [--samples K] [--for process|latency] [-- WORKER OPTIONS]

=========  ========================================================================================
mode       does
=========  ========================================================================================
describe   print the system's version, the settings used, and the SQL the harness polls
install    create the system's schema in an empty database with the system's own tooling
enqueue    N single enqueues, one job per transaction, on one connection: prints ``seconds``
bulk       N jobs through the system's bulk-enqueue API: prints ``seconds``
fill       N no-op jobs for the processing benchmark (untimed, the fastest way the system has)
worker     the system's worker with its fastest settings for no-op jobs, until SIGTERM/SIGINT
           (``--for`` says which benchmark it serves)
latency    with a worker running: one warm-up job, then K jobs one at a time, each enqueued in
           its own transaction: prints ``samples_ms``, commit → the job's first line
=========  ========================================================================================

The result is one JSON object, the last line on standard output. A failure prints one line,
``error: …``, on standard error and exits 1.

Pickup latency is read from the database clock at both ends: the enqueuer runs
``SELECT clock_timestamp()`` as the last statement before ``COMMIT``, and the job's first line
inserts ``clock_timestamp()`` into ``bench_latency`` on the job's own connection. A trigger on
that table notifies the enqueuer, which waits for the notification before the next sample (so
the worker is idle when each job is enqueued), after a random 20-60 ms pause.

This module needs only the standard library and psycopg: every system's environment has both.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg

DATABASE_URL_ENV = "BENCH_DATABASE_URL"
"""Where a worker's jobs find the database (set for every process the harness starts)."""

NOOP = "bench_noop"
"""The name every system registers its no-op job under."""
LATENCY = "bench_latency"
"""The name of the job that records when it started; it takes one integer, the sample."""

LATENCY_DDL = """
CREATE TABLE IF NOT EXISTS bench_latency (
    sample integer PRIMARY KEY,
    started_at timestamptz NOT NULL
);
CREATE OR REPLACE FUNCTION bench_latency_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_latency', NEW.sample::text);
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER bench_latency_notify AFTER INSERT ON bench_latency
    FOR EACH ROW EXECUTE FUNCTION bench_latency_notify();
"""
RECORD_START = "INSERT INTO bench_latency (sample, started_at) VALUES (%s, clock_timestamp())"
COMMIT_CLOCK = "SELECT clock_timestamp()::text"
"""Run by the enqueuer as the last statement of its transaction, just before COMMIT."""
_LATENCY_MS = """
SELECT (1000 * extract(epoch FROM started_at - %s::timestamptz))::float8
FROM bench_latency WHERE sample = %s
"""

WARMUP_TIMEOUT = 120.0
SAMPLE_TIMEOUT = 30.0


class BenchmarkError(Exception):
    """A failure with a message meant for the person running the benchmark."""


@dataclass(frozen=True)
class Adapter:
    """What one system's module provides; see the table in this module's docstring.

    ``enqueue`` and ``bulk`` return the seconds their timed part took (connections, imports and
    schema are set up before the clock starts). ``worker`` gets the options after ``--`` (empty
    for the system's defaults) and the benchmark it serves, ``process`` or ``latency``.
    """

    label: str
    distribution: str
    settings: str
    remaining_sql: str
    """True while any job is still waiting or running (the harness polls it)."""
    completed_sql: str
    """How many jobs finished successfully (checked once a burn-down is over)."""
    install: Callable[[str], None]
    enqueue: Callable[[str, int], float]
    bulk: Callable[[str, int], float]
    fill: Callable[[str, int], None]
    worker: Callable[[str, list[str], str], None]
    latency: Callable[[str, int], list[float]]


def main(adapter: Adapter, argv: Sequence[str] | None = None) -> None:
    """Run one mode of ``adapter`` from the command line and print its JSON result."""
    args = list(sys.argv[1:] if argv is None else argv)
    worker_args: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, worker_args = args[:at], args[at + 1 :]
    parser = argparse.ArgumentParser(prog=f"{adapter.label} benchmark")
    parser.add_argument(
        "mode", choices=("describe", "install", "enqueue", "bulk", "fill", "worker", "latency")
    )
    parser.add_argument("--database-url", default=os.environ.get(DATABASE_URL_ENV))
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--for", dest="purpose", choices=("process", "latency"), default="process")
    options = parser.parse_args(args)
    try:
        result = _run(adapter, options.mode, options.database_url, options, worker_args)
    except BenchmarkError as exc:
        _fail(str(exc))
    except Exception as exc:  # one line for the harness, whatever the library raised
        _fail(f"{type(exc).__name__}: {exc}")
    if result is not None:
        print(json.dumps(result), flush=True)


def _run(
    adapter: Adapter,
    mode: str,
    url: str | None,
    options: argparse.Namespace,
    worker_args: list[str],
) -> dict[str, Any] | None:
    if mode == "describe":
        return {
            "system": adapter.label,
            "version": importlib.metadata.version(adapter.distribution),
            "settings": adapter.settings,
            "remaining_sql": adapter.remaining_sql,
            "completed_sql": adapter.completed_sql,
        }
    if not url:
        raise BenchmarkError(f"--database-url (or {DATABASE_URL_ENV}) is required")
    os.environ[DATABASE_URL_ENV] = url
    if mode == "install":
        adapter.install(url)
    elif mode == "enqueue":
        return {"jobs": options.jobs, "seconds": adapter.enqueue(url, options.jobs)}
    elif mode == "bulk":
        return {"jobs": options.jobs, "seconds": adapter.bulk(url, options.jobs)}
    elif mode == "fill":
        adapter.fill(url, options.jobs)
    elif mode == "worker":
        adapter.worker(url, worker_args, options.purpose)
    else:
        return {"samples_ms": adapter.latency(url, options.samples)}
    return None


def _fail(message: str) -> NoReturn:
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(1)


def stopwatch() -> Callable[[], float]:
    """Start a clock; calling the result returns the seconds since."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def database_url() -> str:
    """The benchmark database, for code running inside a worker."""
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise BenchmarkError(f"{DATABASE_URL_ENV} is not set")
    return url


class StartRecorder:
    """The first line of a latency job: ``clock_timestamp()`` into ``bench_latency``.

    Uses a connection of its own, opened by the first (warm-up) job, so the measured samples
    pay no connection set-up.
    """

    def __init__(self) -> None:
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def record(self, sample: int) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(database_url(), autocommit=True)
        await self._conn.execute(RECORD_START, (sample,))


async def measure_latency(
    url: str, samples: int, enqueue: Callable[[int], Awaitable[str]], *, seed: int = 0
) -> list[float]:
    """Enqueue one warm-up job and then ``samples`` jobs, one at a time; their latencies in ms.

    ``enqueue(sample)`` enqueues the latency job for ``sample`` in a transaction of its own and
    returns the text of ``COMMIT_CLOCK`` read as the last statement before its COMMIT.
    """
    rng = random.Random(seed)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as listener:
        await listener.execute(LATENCY_DDL)
        await listener.execute("DELETE FROM bench_latency")
        await listener.execute("LISTEN bench_latency")
        await _sample(listener, enqueue, 0, WARMUP_TIMEOUT)
        await asyncio.sleep(0.5)
        results = []
        for sample in range(1, samples + 1):
            results.append(await _sample(listener, enqueue, sample, SAMPLE_TIMEOUT))
            await asyncio.sleep(rng.uniform(0.02, 0.06))
    return results


async def _sample(
    listener: psycopg.AsyncConnection[Any],
    enqueue: Callable[[int], Awaitable[str]],
    sample: int,
    timeout: float,
) -> float:
    committed = await enqueue(sample)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        started = False
        # let the generator end by itself: it holds the connection until then
        async for notify in listener.notifies(timeout=left, stop_after=1):
            started = notify.payload == str(sample)
        if started:
            cur = await listener.execute(_LATENCY_MS, (committed, sample))
            row = await cur.fetchone()
            if row is None:  # pragma: no cover - the trigger fires after the insert
                raise BenchmarkError(f"sample {sample} notified but not recorded")
            return float(row[0])
    what = "the warm-up job" if sample == 0 else f"latency job {sample}"
    raise BenchmarkError(f"{what} did not start within {timeout:g} s")
