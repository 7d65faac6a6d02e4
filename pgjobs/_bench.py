"""``pgjobs bench``: measure pgjobs on your own database, in a schema of its own.

Every mode works in the ``pgjobs_bench`` schema (migrated at the start, dropped at the end), so
your jobs are never touched. The runs use the default, fenced, at-least-once configuration.

* ``enqueue``: one job per transaction on one connection, against the same loop of bare
  ``INSERT`` + ``COMMIT`` statements (interleaved, so drift hits both alike);
* ``bulk``: ``App.enqueue_many``;
* ``process``: a burst worker (``--processes``, ``--concurrency``) burns down pre-enqueued no-op
  jobs; timed from its start to its exit;
* ``latency``: an idle worker; each job is committed alone and reports, over a loopback UDP
  socket, the moment its function starts. Latency is that moment minus the moment just before
  ``COMMIT``, on the same host clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ._app import App
from ._connection import connect
from ._context import current_job
from ._migrate import migrate
from ._settings import Settings

SCHEMA = "pgjobs_bench"
BULK_CHUNK = 10_000
"""Jobs per ``enqueue_many`` call in the bulk and process modes."""

app = App(schema=SCHEMA)
"""The bench's own jobs; its workers run ``python -m pgjobs --app pgjobs._bench:app``."""


@app.job(name="pgjobs.bench.noop", max_attempts=1)
def noop() -> None:
    """Does nothing: what is measured is pgjobs."""


@app.job(name="pgjobs.bench.async_noop", max_attempts=1)
async def async_noop() -> None:
    """Does nothing, on the event loop."""


@app.job(name="pgjobs.bench.report_start", max_attempts=1)
def report_start(port: int) -> None:
    """Sends the time this function started to the bench over loopback UDP."""
    started = time.time()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"{current_job().id} {started!r}".encode(), ("127.0.0.1", port))


@dataclass(frozen=True)
class BenchOptions:
    jobs: int
    processes: int
    concurrency: int
    async_jobs: bool
    samples: int


def run(mode: str, settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """Run one mode in a fresh ``pgjobs_bench`` schema; returns its figures."""
    bench_settings = dataclasses.replace(settings, schema=SCHEMA)
    with _fresh_schema(bench_settings):
        app.configure(database_url=bench_settings.database_url, schema=SCHEMA)
        try:
            result: dict[str, Any] = {"mode": mode, **MODES[mode](bench_settings, options)}
        finally:
            app.close()
    return result


@contextlib.contextmanager
def _fresh_schema(settings: Settings) -> Iterator[None]:
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA))
    with connect(settings, "pgjobs-bench") as conn:
        conn.execute(drop)
    migrate(settings)
    try:
        yield
    finally:
        with connect(settings, "pgjobs-bench") as conn:
            conn.execute(drop)


def _enqueue(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """Single enqueues against bare INSERT + COMMIT, in alternating slices on one connection."""
    bare = sql.SQL("INSERT INTO {}.jobs (name) VALUES ('pgjobs.bench.noop')").format(
        sql.Identifier(SCHEMA)
    )
    slices = 4
    per_slice = max(1, options.jobs // slices)
    timings = {"pgjobs": 0.0, "bare": 0.0}
    with connect(settings, "pgjobs-bench") as conn:
        conn.autocommit = False
        for _ in range(slices):
            started = time.perf_counter()
            for _ in range(per_slice):
                app.enqueue_many([noop.call()], conn=conn)
                conn.commit()
            timings["pgjobs"] += time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(per_slice):
                conn.execute(bare)
                conn.commit()
            timings["bare"] += time.perf_counter() - started
    done = per_slice * slices
    pgjobs_rate = done / timings["pgjobs"]
    bare_rate = done / timings["bare"]
    return {
        "jobs": done,
        "seconds": round(timings["pgjobs"], 3),
        "jobs_per_second": round(pgjobs_rate),
        "bare_insert_per_second": round(bare_rate),
        "ratio_to_bare": round(pgjobs_rate / bare_rate, 3),
    }


def _bulk(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    started = time.perf_counter()
    _enqueue_noops(options.jobs, options.async_jobs)
    seconds = time.perf_counter() - started
    return {
        "jobs": options.jobs,
        "seconds": round(seconds, 3),
        "jobs_per_second": round(options.jobs / seconds),
    }


def _process(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    _enqueue_noops(options.jobs, options.async_jobs)
    started = time.perf_counter()
    worker = _start_worker(settings, options, "--burst")
    status = worker.wait()
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"the bench worker exited with status {status}")
    by_state = app.queue_counts().get("default", {})
    if by_state.keys() != {"completed"}:
        raise RuntimeError(f"not every job completed: {by_state}")
    return {
        "jobs": options.jobs,
        "processes": options.processes,
        "concurrency": options.concurrency,
        "job_kind": "async" if options.async_jobs else "sync",
        "seconds": round(seconds, 3),
        "jobs_per_second": round(options.jobs / seconds),
    }


def _latency(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inbox:
        inbox.bind(("127.0.0.1", 0))
        inbox.settimeout(10)
        port = inbox.getsockname()[1]
        idle = dataclasses.replace(options, processes=1)
        worker = _start_worker(settings, idle, "--poll-interval", "5")
        try:
            latencies = []
            with connect(settings, "pgjobs-bench") as conn:
                conn.autocommit = False
                # the first job waits for the worker to start and is not counted
                for sample in range(-1, options.samples):
                    (job_id,) = app.enqueue_many([report_start.call(port)], conn=conn)
                    before_commit = time.time()
                    conn.commit()
                    try:
                        reported_id, started = inbox.recv(200).decode().split()
                    except TimeoutError:
                        raise RuntimeError(
                            f"job {job_id} did not start within 10 s (worker status "
                            f"{worker.poll()})"
                        ) from None
                    if int(reported_id) != job_id:
                        raise RuntimeError(f"expected job {job_id}, heard of {reported_id}")
                    if sample >= 0:
                        latencies.append((float(started) - before_commit) * 1000)
        finally:
            worker.terminate()
            worker.wait()
    latencies.sort()
    return {
        "samples": len(latencies),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
        "max_ms": round(latencies[-1], 3),
    }


MODES = {"enqueue": _enqueue, "bulk": _bulk, "process": _process, "latency": _latency}


def _enqueue_noops(jobs: int, async_jobs: bool) -> None:
    job = async_noop if async_jobs else noop
    for start in range(0, jobs, BULK_CHUNK):
        app.enqueue_many(job.call() for _ in range(min(BULK_CHUNK, jobs - start)))


def _start_worker(settings: Settings, options: BenchOptions, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGJOBS_DATABASE_URL": str(settings.database_url)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgjobs",
            "--app",
            "pgjobs._bench:app",
            "--schema",
            SCHEMA,
            "--log-level",
            "WARNING",
            "worker",
            "--processes",
            str(options.processes),
            "--concurrency",
            str(options.concurrency),
            *args,
        ],
        env=env,
    )
