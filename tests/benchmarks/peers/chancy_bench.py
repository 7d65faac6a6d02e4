"""Chancy, in its own environment.

Settings: the schema from ``Chancy.migrate()``; one queue, ``default``, declared with the
``AsyncExecutor`` (its executor for many short ``async def`` jobs: no process or thread hop per
job; the default ``ProcessExecutor`` would spread work over both cores at the cost of a process
hop per job), ``concurrency=100``, ``eager_polling=True`` (poll again as soon as a job finishes)
and ``polling_interval=1`` (NOTIFY still wakes it at once); default plugins; the worker is
``Worker(chancy)`` (what ``chancy worker start`` runs), one process. Single enqueue:
``Chancy.push()`` on a one-connection pool; bulk: ``Chancy.push_many()`` (its default batches of
1,000 jobs per transaction, one INSERT per job inside).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import psycopg
from chancy import Chancy, Job, Queue, Worker
from psycopg.rows import dict_row

from tests.benchmarks.peers import _protocol as protocol

MODULE = "tests.benchmarks.peers.chancy_bench"
CONCURRENCY = 100

_recorder = protocol.StartRecorder()
_log = logging.getLogger("chancy.bench")
_log.setLevel(logging.WARNING)


async def noop() -> None:
    return None


async def latency_job(sample: int) -> None:
    await _recorder.record(sample)


NOOP_JOB = Job(func=f"{MODULE}.noop")
LATENCY_JOB = Job(func=f"{MODULE}.latency_job")


def _chancy(url: str, pool_size: int) -> Chancy:
    return Chancy(url, min_connection_pool_size=1, max_connection_pool_size=pool_size, log=_log)


def _queue(concurrency: int) -> Queue:
    return Queue(
        "default",
        concurrency=concurrency,
        executor=Chancy.Executor.Async,
        polling_interval=1,
        eager_polling=True,
    )


def install(url: str) -> None:
    async def run() -> None:
        async with _chancy(url, 1) as chancy:
            await chancy.migrate()
            await chancy.declare(_queue(CONCURRENCY), upsert=True)

    asyncio.run(run())


def enqueue(url: str, jobs: int) -> float:
    async def run() -> float:
        async with _chancy(url, 1) as chancy:
            await chancy.push(NOOP_JOB)
            elapsed = protocol.stopwatch()
            for _ in range(jobs):
                await chancy.push(NOOP_JOB)
            return elapsed()

    return asyncio.run(run())


async def _push_many(url: str, jobs: int, *, timed: bool) -> float:
    async with _chancy(url, 1) as chancy:
        if timed:
            await chancy.push(NOOP_JOB)
        elapsed = protocol.stopwatch()
        async for _ in chancy.push_many([NOOP_JOB] * jobs):
            pass
        return elapsed()


def bulk(url: str, jobs: int) -> float:
    return asyncio.run(_push_many(url, jobs, timed=True))


def fill(url: str, jobs: int) -> None:
    asyncio.run(_push_many(url, jobs, timed=False))


def worker(url: str, options: list[str], purpose: str) -> None:
    parser = argparse.ArgumentParser(prog="chancy worker")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    settings = parser.parse_args(options)

    async def run() -> None:
        async with _chancy(url, 10) as chancy:
            await chancy.declare(_queue(settings.concurrency), upsert=True)
            async with Worker(chancy) as running:
                await running.wait_for_shutdown()

    asyncio.run(run())


def latency(url: str, samples: int) -> list[float]:
    async def run() -> list[float]:
        async with _chancy(url, 1) as chancy, await psycopg.AsyncConnection.connect(url) as conn:

            async def one(sample: int) -> str:
                async with conn.transaction():
                    async with conn.cursor(row_factory=dict_row) as cur:
                        await chancy.push_ex(cur, LATENCY_JOB.with_kwargs(sample=sample))
                    row = await (await conn.execute(protocol.COMMIT_CLOCK)).fetchone()
                return str(row[0] if row else "")

            return await protocol.measure_latency(url, samples, one)

    return asyncio.run(run())


ADAPTER = protocol.Adapter(
    label="Chancy",
    distribution="chancy",
    settings=(
        f"AsyncExecutor, concurrency={CONCURRENCY}, eager_polling, polling_interval=1, one "
        "process; enqueue: Chancy.push() on a one-connection pool; bulk: Chancy.push_many()"
    ),
    remaining_sql=(
        "SELECT EXISTS (SELECT 1 FROM chancy_jobs "
        "WHERE state IN ('pending', 'running', 'retrying'))"
    ),
    completed_sql=(
        f"SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded' AND func = '{MODULE}.noop'"
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
