"""pgjobs, through its public API and its command line; runs in this repository's environment.

Settings: no-op ``async def`` jobs; ``job.enqueue()`` and ``app.enqueue_many()`` on pgjobs' own
connection pool; the worker is ``pgjobs worker`` with the options given after ``--`` (by default
``--processes 2 --concurrency 1000``, both cores, for the burn-down and ``--processes 1
--concurrency 20`` for the latency benchmark), at log level WARNING like every system here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import psycopg

import pgjobs
from tests.benchmarks.peers import _protocol as protocol

WORKER_OPTIONS = ("--processes", "2", "--concurrency", "1000")
IDLE_WORKER_OPTIONS = ("--processes", "1", "--concurrency", "20")
"""The latency benchmark's worker: one process, like every peer's (and ``pgjobs bench``'s)."""
APP_PATH = "tests.benchmarks.peers.pgjobs_bench:app"
FILL_CHUNK = 50_000

app = pgjobs.App()
_recorder = protocol.StartRecorder()


@app.job(name=protocol.NOOP)
async def noop() -> None:
    return None


@app.job(name=protocol.LATENCY)
async def latency_job(sample: int) -> None:
    await _recorder.record(sample)


def _cli(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pgjobs", "--database-url", url, "--log-level", "WARNING", *args]


def install(url: str) -> None:
    done = subprocess.run(_cli(url, "migrate"), capture_output=True, text=True, check=False)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise protocol.BenchmarkError(f"pgjobs migrate exited {done.returncode}: {lines[-1]}")


def enqueue(url: str, jobs: int) -> float:
    app.configure(database_url=url)
    noop.enqueue()  # opens the pool before the clock starts
    elapsed = protocol.stopwatch()
    for _ in range(jobs):
        noop.enqueue()
    return elapsed()


def bulk(url: str, jobs: int) -> float:
    app.configure(database_url=url)
    noop.enqueue()
    elapsed = protocol.stopwatch()
    app.enqueue_many([noop.call() for _ in range(jobs)])
    return elapsed()


def fill(url: str, jobs: int) -> None:
    app.configure(database_url=url)
    for start in range(0, jobs, FILL_CHUNK):
        app.enqueue_many([noop.call() for _ in range(min(FILL_CHUNK, jobs - start))])


def worker(url: str, options: list[str], purpose: str) -> None:
    defaults = WORKER_OPTIONS if purpose == "process" else IDLE_WORKER_OPTIONS
    command = _cli(url, "worker", "--app", APP_PATH, *(options or defaults))
    sys.stdout.flush()
    os.execv(command[0], command)  # the harness watches this very process


def latency(url: str, samples: int) -> list[float]:
    app.configure(database_url=url)
    with psycopg.connect(url) as conn:

        async def one(sample: int) -> str:
            with conn.transaction():
                app.enqueue_many([latency_job.call(sample)], conn=conn)
                row: Any = conn.execute(protocol.COMMIT_CLOCK).fetchone()
            return str(row[0])

        return asyncio.run(protocol.measure_latency(url, samples, one))


ADAPTER = protocol.Adapter(
    label="pgjobs",
    distribution="pgjobs",
    settings=(
        "worker: pgjobs worker --processes 2 --concurrency 1000 (latency: --processes 1) unless "
        "--worker-args says otherwise; "
        "async def no-op jobs; enqueue: job.enqueue() on pgjobs' pool; bulk: app.enqueue_many()"
    ),
    remaining_sql=(
        "SELECT EXISTS (SELECT 1 FROM pgjobs.jobs WHERE state IN ('available', 'running'))"
    ),
    completed_sql=(
        f"SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed' AND name = '{protocol.NOOP}'"
    ),
    install=install,
    enqueue=enqueue,
    bulk=bulk,
    fill=fill,
    worker=worker,
    latency=latency,
)

if __name__ == "__main__":
    protocol.main(ADAPTER)
