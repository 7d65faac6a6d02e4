"""PgQueuer, in its own environment (``pgqueuer[asyncpg]``).

Settings, from PgQueuer's performance-tuning guide: the asyncpg driver (its faster one), uvloop
(which its ``pgq run`` uses whenever installed, as it is here), ``pgq install`` with the default
``durable`` tables (logged, like every other system here) followed by ``pgq autovac`` (its
recommended autovacuum settings), and a worker run as ``pgq run`` runs it with
``batch_size=100`` (default 10; ``max_concurrent_tasks`` unlimited). PgQueuer has no
multi-process worker, so it uses one core. Handlers are ``async def`` (PgQueuer 1.x requires it).
Single enqueue: ``Queries.enqueue(name, payload)`` on one asyncpg connection outside a
transaction (one statement, one transaction); bulk: the same call with lists.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pgqueuer
import uvloop
from pgqueuer import PgQueuer, Queries
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

from tests.benchmarks.peers import _protocol as protocol

BATCH_SIZE = 100

_recorder = protocol.StartRecorder()


async def noop(job: Job) -> None:
    return None


async def latency_job(job: Job) -> None:
    await _recorder.record(int(job.payload or b"0"))


def install(url: str) -> None:
    pgq = str(Path(sys.executable).with_name("pgq"))
    for command in ("install", "autovac"):
        done = subprocess.run(
            [pgq, "--pg-dsn", url, command], capture_output=True, text=True, check=False
        )
        if done.returncode:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise protocol.BenchmarkError(f"pgq {command} exited {done.returncode}: {lines[-1]}")


def enqueue(url: str, jobs: int) -> float:
    async def run() -> float:
        conn = await asyncpg.connect(url)
        try:
            queries = Queries(AsyncpgDriver(conn))
            await queries.enqueue(protocol.NOOP, None)
            elapsed = protocol.stopwatch()
            for _ in range(jobs):
                await queries.enqueue(protocol.NOOP, None)
            return elapsed()
        finally:
            await conn.close()

    seconds: float = uvloop.run(run())
    return seconds


async def _enqueue_list(url: str, jobs: int, *, timed: bool) -> float:
    conn = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if timed:
            await queries.enqueue(protocol.NOOP, None)
        elapsed = protocol.stopwatch()
        await queries.enqueue([protocol.NOOP] * jobs, [None] * jobs, [0] * jobs)
        return elapsed()
    finally:
        await conn.close()


def bulk(url: str, jobs: int) -> float:
    seconds: float = uvloop.run(_enqueue_list(url, jobs, timed=True))
    return seconds


def fill(url: str, jobs: int) -> None:
    uvloop.run(_enqueue_list(url, jobs, timed=False))


def worker(url: str, options: list[str], purpose: str) -> None:
    parser = argparse.ArgumentParser(prog="pgqueuer worker")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--max-concurrent-tasks", type=int, default=0)
    settings = parser.parse_args(options)

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[PgQueuer]:
        conn = await asyncpg.connect(url)
        try:
            pgq = PgQueuer(AsyncpgDriver(conn))
            pgq.entrypoint(protocol.NOOP)(noop)
            pgq.entrypoint(protocol.LATENCY)(latency_job)
            yield pgq
        finally:
            await conn.close()

    uvloop.run(
        pgqueuer.run(
            factory,
            batch_size=settings.batch_size,
            max_concurrent_tasks=settings.max_concurrent_tasks or None,
        )
    )


def latency(url: str, samples: int) -> list[float]:
    async def run() -> list[float]:
        conn = await asyncpg.connect(url)
        try:
            queries = Queries(AsyncpgDriver(conn))

            async def one(sample: int) -> str:
                async with conn.transaction():
                    await queries.enqueue(protocol.LATENCY, str(sample).encode())
                    return str(await conn.fetchval(protocol.COMMIT_CLOCK))

            return await protocol.measure_latency(url, samples, one)
        finally:
            await conn.close()

    found: list[float] = uvloop.run(run())
    return found


ADAPTER = protocol.Adapter(
    label="PgQueuer",
    distribution="pgqueuer",
    settings=(
        "asyncpg driver, uvloop, durable tables + pgq autovac; worker: pgqueuer.run "
        f"(as pgq run) batch_size={BATCH_SIZE}, one process; enqueue: Queries.enqueue on one "
        "asyncpg connection; bulk: Queries.enqueue with lists"
    ),
    remaining_sql="SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE status IN ('queued', 'picked'))",
    completed_sql=(
        "SELECT count(*) FROM pgqueuer_log "
        f"WHERE status = 'successful' AND entrypoint = '{protocol.NOOP}'"
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
