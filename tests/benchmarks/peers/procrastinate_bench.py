"""Procrastinate, in its own environment.

Settings: ``PsycopgConnector`` (its asyncio connector), ``async def`` tasks, the schema applied
with ``SchemaManager.apply_schema_async`` (what ``procrastinate schema --apply`` runs). The worker
is ``App.run_worker_async`` (what ``procrastinate worker`` runs) with ``concurrency=30`` (the
figure its concurrency guide uses; default 1), LISTEN/NOTIFY on, finished jobs kept (its
default), and a pool of 10 connections. Procrastinate workers are asyncio and single-process, so
it uses one core. Single enqueue: ``task.defer_async()`` on a one-connection pool; bulk:
``task.batch_defer_async()`` (one statement).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import procrastinate
import psycopg

from tests.benchmarks.peers import _protocol as protocol

CONCURRENCY = 30
POOL_SIZE = 10

_recorder = protocol.StartRecorder()


async def noop() -> None:
    return None


async def latency_job(sample: int) -> None:
    await _recorder.record(sample)


def _app(url: str, pool_size: int) -> tuple[procrastinate.App, Any, Any]:
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=pool_size)
    )
    return (
        app,
        app.task(name=protocol.NOOP, pass_context=False)(noop),
        app.task(name=protocol.LATENCY, pass_context=False)(latency_job),
    )


def install(url: str) -> None:
    async def run() -> None:
        app, _, _ = _app(url, 1)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    asyncio.run(run())


def enqueue(url: str, jobs: int) -> float:
    async def run() -> float:
        app, task, _ = _app(url, 1)
        async with app.open_async():
            await task.defer_async()
            elapsed = protocol.stopwatch()
            for _ in range(jobs):
                await task.defer_async()
            return elapsed()

    return asyncio.run(run())


async def _batch(url: str, jobs: int, *, timed: bool) -> float:
    app, task, _ = _app(url, 1)
    async with app.open_async():
        if timed:
            await task.defer_async()
        elapsed = protocol.stopwatch()
        await task.batch_defer_async(*({} for _ in range(jobs)))
        return elapsed()


def bulk(url: str, jobs: int) -> float:
    return asyncio.run(_batch(url, jobs, timed=True))


def fill(url: str, jobs: int) -> None:
    asyncio.run(_batch(url, jobs, timed=False))


def worker(url: str, options: list[str], purpose: str) -> None:
    parser = argparse.ArgumentParser(prog="procrastinate worker")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE)
    settings = parser.parse_args(options)

    async def run() -> None:
        app, _, _ = _app(url, settings.pool_size)
        async with app.open_async():
            await app.run_worker_async(
                concurrency=settings.concurrency,
                listen_notify=True,
                install_signal_handlers=True,
            )

    asyncio.run(run())


def latency(url: str, samples: int) -> list[float]:
    async def run() -> list[float]:
        app, _, task = _app(url, 1)
        async with app.open_async(), await psycopg.AsyncConnection.connect(url) as conn:

            async def one(sample: int) -> str:
                async with conn.transaction():
                    await task.configure(connection=conn).defer_async(sample=sample)
                    cur = await conn.execute(protocol.COMMIT_CLOCK)
                    row = await cur.fetchone()
                return str(row[0] if row else "")

            return await protocol.measure_latency(url, samples, one)

    return asyncio.run(run())


ADAPTER = protocol.Adapter(
    label="Procrastinate",
    distribution="procrastinate",
    settings=(
        f"PsycopgConnector; worker: run_worker_async(concurrency={CONCURRENCY}), pool of "
        f"{POOL_SIZE}, listen_notify, one process; enqueue: task.defer_async() on a "
        "one-connection pool; bulk: task.batch_defer_async()"
    ),
    remaining_sql=(
        "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
    ),
    completed_sql=(
        "SELECT count(*) FROM procrastinate_jobs "
        f"WHERE status = 'succeeded' AND task_name = '{protocol.NOOP}'"
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
