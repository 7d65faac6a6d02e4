"""The bench's modes: each runs against the ``pgjobs_bench`` schema and returns its figures."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from .._acker import finish_params
from .._connection import connect
from .._errors import ConfigError
from .._execution import ClaimedJob
from .._job import Job
from .._link import CUSTOM_PLANS
from .._migrate import migrate
from .._outcome import COMPLETED
from .._settings import Settings
from ._jobs import (
    SCHEMA,
    app,
    async_noop,
    async_report_start,
    async_returns,
    noop,
    report_start,
    returns,
)
from ._pages import pages
from ._sql import bench_queries_for

BENCH = bench_queries_for(SCHEMA)

BULK_CHUNK = 10_000
"""Jobs per ``enqueue_many`` call in the bulk and process modes."""
SLICE = 100
"""Enqueues per slice of the enqueue mode: small slices, so that the disk's drift hits all loops
alike."""
TICK = 0.01
"""Seconds between two batches of the steady mode."""
FILL_CHUNK = 1_000_000
"""Rows per ``INSERT ... SELECT`` when the scale mode fills the table."""
JSON_ONLY = frozenset({"claim_plan"})
"""Figures too long for the table: only in ``--json``."""

PLAN_INDEX = re.compile(r"(?:Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)")
PLAN_SEQ_SCAN_ON_JOBS = re.compile(r"Seq Scan on jobs\b")


def _reporter(options: BenchOptions) -> Job[[int], Any]:
    """The job that reports its start: ``async def`` with ``--async-jobs``."""
    return async_report_start if options.async_jobs else report_start


@dataclass(frozen=True)
class BenchOptions:
    jobs: int
    processes: int
    concurrency: int
    async_jobs: bool
    samples: int
    rate: int
    duration: float
    available: int
    finished: int
    unique: bool = False
    """Every job carries a unique key of its own (enqueue, bulk, process)."""
    limit: bool = False
    """``process``: time rounds with a concurrency limit that never binds beside plain ones."""
    partitions: int = 0
    """``rate``: the limit holds per partition key, for this many keys (0: for the whole
    queue)."""
    results: bool = False
    """``process``: each job returns a small dict, stored as its result."""


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
    with connect(settings, "pgjobs-bench") as conn:
        conn.execute(BENCH.bench_drop_schema)
    migrate(settings)
    try:
        yield
    finally:
        with connect(settings, "pgjobs-bench") as conn:
            conn.execute(BENCH.bench_drop_schema)


def _enqueue(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """Single enqueues against bare INSERT + COMMIT, and against single enqueues with the insert
    notification trigger disabled, in alternating slices on one connection.

    Each turn runs one slice of each loop, in rotating order; a ratio is the median of the turns'
    ratios, so a slice that met a checkpoint or a slow disk flush cannot tip it."""
    per_slice = min(SLICE, options.jobs)
    turns = max(1, options.jobs // per_slice)
    times: dict[str, list[float]] = {"pgjobs": [], "bare": [], "silent": [], "unique": []}
    with connect(settings, "pgjobs-bench") as conn:
        conn.autocommit = False

        def enqueue_one() -> object:
            return app.enqueue_many([noop.call()], conn=conn)

        keys = iter(range(options.jobs * 2))

        def enqueue_unique() -> object:
            return app.enqueue_many([noop.options(unique_key=next(keys)).call()], conn=conn)

        loops: dict[str, Callable[[], object]] = {
            "pgjobs": enqueue_one,
            "bare": lambda: conn.execute(BENCH.bench_bare_insert),
            "silent": enqueue_one,  # with the notification trigger disabled
        }
        if options.unique:
            loops["unique"] = enqueue_unique
        for turn in range(turns):
            names = list(loops)[turn % len(loops) :] + list(loops)[: turn % len(loops)]
            for name in names:
                conn.execute(
                    BENCH.bench_disable_notify if name == "silent" else BENCH.bench_enable_notify
                )
                conn.commit()
                started = time.perf_counter()
                for _ in range(per_slice):
                    loops[name]()
                    conn.commit()
                times[name].append(time.perf_counter() - started)
        conn.execute(BENCH.bench_enable_notify)
        conn.commit()
    done = per_slice * turns

    def ratio(baseline: str) -> float:
        pairs = zip(times["pgjobs"], times[baseline], strict=True)
        return round(statistics.median(other / ours for ours, other in pairs), 3)

    figures = {
        "jobs": done,
        "seconds": round(sum(times["pgjobs"]), 3),
        "jobs_per_second": round(done / sum(times["pgjobs"])),
        "bare_insert_per_second": round(done / sum(times["bare"])),
        "ratio_to_bare": ratio("bare"),
        "without_notify_per_second": round(done / sum(times["silent"])),
        "ratio_notify_on_to_off": ratio("silent"),
    }
    if options.unique:
        figures["unique_per_second"] = round(done / sum(times["unique"]))
        figures["ratio_unique_to_plain"] = round(1 / ratio("unique"), 3)
    return figures


def _bulk(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    started = time.perf_counter()
    _enqueue_noops(options.jobs, options.async_jobs, options.unique)
    seconds = time.perf_counter() - started
    return {
        "jobs": options.jobs,
        "unique": options.unique,
        "seconds": round(seconds, 3),
        "jobs_per_second": round(options.jobs / seconds),
    }


COMPARED_RUNS = 5
"""Runs of each kind that ``process --unique`` / ``--limit`` interleave."""
NEVER_BINDING = 1_000_000
"""The concurrency limit of ``process --limit``: far above what runs."""


def _process(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "jobs": options.jobs,
        "processes": options.processes,
        "concurrency": options.concurrency,
        "job_kind": "async" if options.async_jobs else "sync",
        "results": options.results,
    }
    kinds = ["plain"] + ["unique"] * options.unique + ["limited"] * options.limit
    if kinds == ["plain"]:
        seconds = _burn_down(settings, options, "plain")
        return {
            **figures,
            "seconds": round(seconds, 3),
            "jobs_per_second": round(options.jobs / seconds),
        }
    # each run in a fresh schema (the finished jobs of earlier runs slowed later ones), in an
    # order that turns from run to run, so that drift on a shared machine hits every kind alike
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    for run in range(COMPARED_RUNS):
        for kind in kinds[run % len(kinds) :] + kinds[: run % len(kinds)]:
            with _fresh_schema(settings):
                rates[kind].append(options.jobs / _burn_down(settings, options, kind))
    result = {**figures, "runs": COMPARED_RUNS}
    for kind in kinds:
        result[f"{kind}_jobs_per_second"] = [str(round(rate)) for rate in rates[kind]]
    for kind in kinds[1:]:
        ratios = [k / p for p, k in zip(rates["plain"], rates[kind], strict=True)]
        result[f"ratio_{kind}_to_plain"] = round(statistics.median(ratios), 3)
    return result


def _burn_down(settings: Settings, options: BenchOptions, kind: str) -> float:
    """Enqueue ``options.jobs`` jobs of ``kind`` (plain, unique: a key each, limited: in a queue
    with a concurrency limit that never binds), then the seconds a burst worker takes to run
    them all."""
    if kind == "limited":
        with connect(settings, "pgjobs-bench") as conn:
            conn.execute(BENCH.bench_limit_queue, {"concurrency": NEVER_BINDING})
    _enqueue_noops(options.jobs, options.async_jobs, kind == "unique", options.results)
    started = time.perf_counter()
    worker = _start_worker(settings, options, "--burst")
    status = worker.wait()
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"the bench worker exited with status {status}")
    by_state = app.queue_counts().get("default", {})
    if by_state.keys() != {"completed"}:
        raise RuntimeError(f"not every job completed: {by_state}")
    return seconds


def _latency(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inbox:
        inbox.bind(("127.0.0.1", 0))
        inbox.settimeout(10)
        port = inbox.getsockname()[1]
        idle = dataclasses.replace(options, processes=1)
        reporter = _reporter(options)
        worker = _start_worker(settings, idle, "--poll-interval", "5")
        try:
            latencies = []
            with connect(settings, "pgjobs-bench") as conn:
                conn.autocommit = False
                # the first job waits for the worker to start and is not counted
                for sample in range(-1, options.samples):
                    (job_id,) = app.enqueue_many([reporter.call(port)], conn=conn)
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
    return {
        "samples": len(latencies),
        "job_kind": "async" if options.async_jobs else "sync",
        **_distribution(latencies, (50, 99)),
    }


def _steady(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inbox:
        # the kernel caps this at net.core.rmem_max
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        inbox.bind(("127.0.0.1", 0))
        inbox.settimeout(0.1)
        port = inbox.getsockname()[1]
        starts: dict[int, float] = {}
        backlog: list[int] = []
        commits: list[float] = []
        worker = _start_worker(settings, options)
        try:
            _wait_for_workers(options.processes, worker)
            with _in_background(functools.partial(_receive_starts, inbox, starts)):
                with _in_background(functools.partial(_sample_backlog, settings, backlog)):
                    committed, seconds = _offer_load(settings, options, port, commits)
                    at_end = app.queue_counts().get("default", {})
                _wait_for_starts(settings, starts, len(committed), max(10.0, options.duration))
        finally:
            worker.terminate()
            worker.wait()
    latencies = [(started - committed[job_id]) * 1000 for job_id, started in starts.items()]
    if not latencies:
        raise RuntimeError(f"none of the {len(committed)} jobs reported its start")
    return {
        "target_per_second": options.rate,
        "offered_per_second": round(len(committed) / seconds),
        "completed_per_second": round(at_end.get("completed", 0) / seconds),
        "enqueued": len(committed),
        "seconds": round(seconds, 3),
        "max_backlog": max([*backlog, at_end.get("available", 0)]),
        "backlog_at_end": at_end.get("available", 0),
        "unreported": len(committed) - len(latencies),
        **_distribution(latencies, (50, 95, 99)),
        **_distribution(commits, (50, 99), prefix="commit_"),
    }


def _offer_load(
    settings: Settings, options: BenchOptions, port: int, commits: list[float]
) -> tuple[dict[int, float], float]:
    """Commit ``options.rate`` jobs a second for ``options.duration`` seconds, a batch a tick.

    Ticks fall on absolute deadlines, so pacing does not drift; a late tick runs at once, and the
    ticks still left when the duration is over are dropped: an enqueuer that cannot keep up shows
    as an offered rate below the target. Returns the moment just before the ``COMMIT`` of each
    job, by id, and the seconds from the start to the last commit; appends each ``COMMIT``'s
    milliseconds to ``commits`` (they are part of every latency).
    """
    call = _reporter(options).call(port)
    committed: dict[int, float] = {}
    ticks = max(1, round(options.duration / TICK))
    with connect(settings, "pgjobs-bench") as conn:
        conn.autocommit = False
        start = time.monotonic()
        end = start + ticks * TICK
        for tick in range(1, ticks + 1):
            now = time.monotonic()
            if now > end:
                break
            deadline = start + tick * TICK
            if deadline > now:
                time.sleep(deadline - now)
            due = round(options.rate * tick * TICK) - len(committed)
            if due <= 0:
                continue
            ids = app.enqueue_many([call] * due, conn=conn)
            before_commit = time.time()
            conn.commit()
            commits.append((time.time() - before_commit) * 1000)
            committed.update(dict.fromkeys(ids, before_commit))
        return committed, time.monotonic() - start


def _wait_for_workers(count: int, worker: subprocess.Popen[bytes]) -> None:
    """Until ``count`` worker processes have registered, so the load does not meet a cold start."""
    deadline = time.monotonic() + 30
    while len(app.list_workers()) < count:
        if worker.poll() is not None:
            raise RuntimeError(f"the bench worker exited with status {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("the bench worker did not register within 30 s")
        time.sleep(0.05)


def _receive_starts(inbox: socket.socket, starts: dict[int, float], stop: threading.Event) -> None:
    """Record each job's first report of its start (a job run twice reports twice)."""
    while not stop.is_set():
        try:
            job_id, started = inbox.recv(200).decode().split()
        except TimeoutError:
            continue
        starts.setdefault(int(job_id), float(started))


def _sample_backlog(settings: Settings, backlog: list[int], stop: threading.Event) -> None:
    """Once a second, the number of available jobs."""
    with connect(settings, "pgjobs-bench") as conn:
        while not stop.wait(1.0):
            row = conn.execute(BENCH.bench_count_unfinished).fetchone()
            assert row is not None
            backlog.append(row[0])


def _wait_for_starts(
    settings: Settings, starts: dict[int, float], expected: int, timeout: float
) -> None:
    """Until every job has reported its start, none is left to run (the missing reports were
    lost), or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    with connect(settings, "pgjobs-bench") as conn:
        while len(starts) < expected and time.monotonic() < deadline:
            row = conn.execute(BENCH.bench_count_unfinished).fetchone()
            assert row is not None
            time.sleep(0.2)  # the last reports may still be on their way
            if not any(row):
                return


@contextlib.contextmanager
def _in_background(loop: Callable[[threading.Event], None]) -> Iterator[None]:
    """Run ``loop(stop)`` in a thread while the block runs; its exception is raised after."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(loop, stop)
        try:
            yield
        finally:
            stop.set()
        running.result()


RATE_PERIOD = 1.0
"""Seconds of the ``rate`` mode's window: ``--rate`` starts per second."""
RATE_BACKLOG = 1.25
"""The ``rate`` mode's backlog, in ``--duration``s of starts at the rate: it never runs dry."""
REPORT_GRACE = 0.5
"""Seconds the ``rate`` mode waits for the reports of the last starts it counts."""


def _rate(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    """A backlog under a rate limit of ``options.rate`` starts a second (per key, with
    ``options.partitions``): the starts each second sustains over ``options.duration`` seconds,
    and the most in any window, both from the moments the jobs' code started."""
    keys: list[str | None] = [f"key{k}" for k in range(options.partitions)] or [None]
    app.set_queue_limits(
        "default",
        rate=(options.rate, RATE_PERIOD),
        partition_by="key" if options.partitions else None,
    )
    reporter = _reporter(options)
    per_key = math.ceil(options.rate * options.duration * RATE_BACKLOG)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inbox:
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        inbox.bind(("127.0.0.1", 0))
        inbox.settimeout(0.1)
        port = inbox.getsockname()[1]
        key_of: dict[int, str | None] = {}
        for start in range(0, per_key, BULK_CHUNK):
            for key in keys:
                calls = [reporter.options(partition_key=key).call(port)] * min(
                    BULK_CHUNK, per_key - start
                )
                key_of.update(dict.fromkeys(app.enqueue_many(calls), key))
        starts: dict[int, float] = {}
        worker = _start_worker(settings, options)
        try:
            with _in_background(functools.partial(_receive_starts, inbox, starts)):
                _wait_for_rate_run(worker, starts, options.duration + RATE_PERIOD)
        finally:
            worker.terminate()
            worker.wait()
    by_key: dict[str | None, list[float]] = {key: [] for key in keys}
    for job_id, started in starts.items():
        by_key[key_of[job_id]].append(started)
    sustained = min(_sustained(times, options.duration, options.rate) for times in by_key.values())
    return {
        "partitions": options.partitions,
        "configured_per_second": options.rate,
        "seconds": options.duration,
        "sustained_per_second": round(sustained, 2),
        "ratio_to_configured": round(sustained / options.rate, 3),
        "max_in_any_window": max(_busiest(times, RATE_PERIOD) for times in by_key.values()),
    }


def _wait_for_rate_run(
    worker: subprocess.Popen[bytes], starts: dict[int, float], seconds: float
) -> None:
    """Until ``seconds`` (and a moment for the last reports) have passed since the first start,
    which has 30 s to come."""
    deadline = time.monotonic() + 30
    while True:
        if worker.poll() is not None:
            raise RuntimeError(f"the bench worker exited with status {worker.returncode}")
        reported = list(starts.values())  # written by the receiving thread meanwhile
        if reported and time.time() > min(reported) + seconds + REPORT_GRACE:
            return
        if not reported and time.monotonic() > deadline:
            raise RuntimeError("no job started within 30 s")
        time.sleep(0.1)


def _sustained(times: list[float], seconds: float, limit: int) -> float:
    """Starts per second over about ``seconds`` from the first start: the most starts before
    ``first + seconds`` that are whole windows' worth (a multiple of ``limit``), over the time
    from the first of them to the first start after them. Whole windows, because the starts of
    a window come together: a rate held exactly gives the rate, never more."""
    ordered = sorted(times)
    within = sum(1 for t in ordered if t < ordered[0] + seconds)
    counted = within // limit * limit
    if counted == 0 or counted >= len(ordered):
        return within / seconds
    return counted / (ordered[counted] - ordered[0])


def _busiest(times: list[float], period: float) -> int:
    """The most starts in any window of ``period`` seconds (``[t, t + period)``)."""
    ordered = sorted(times)
    most = low = 0
    for high, t in enumerate(ordered):
        while ordered[low] <= t - period:
            low += 1
        most = max(most, high - low + 1)
    return most


def _scale(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    claims = {1: options.samples, 100: max(1, options.samples // 4)}
    needed = sum(limit * count for limit, count in claims.items()) + 100  # + the explained claim
    if options.available < needed:
        raise ConfigError(
            f"--available {options.available} is too few: --samples {options.samples} claims "
            f"{needed} jobs"
        )
    started = time.perf_counter()
    _fill(settings, options.available, options.finished)
    figures: dict[str, Any] = {
        "available_jobs": options.available,
        "finished_jobs": options.finished,
        "fill_seconds": round(time.perf_counter() - started, 3),
    }
    worker_id = uuid.uuid4()  # jobs.worker_id references no table: no worker row is needed
    with connect(settings, "pgjobs-bench") as conn:
        conn.execute(CUSTOM_PLANS)  # as on a worker's claim connection
        for limit, count in claims.items():
            timings = [_timed_claim(conn, limit, worker_id) for _ in range(count)]
            figures[f"claim_{limit}_samples"] = count
            figures.update(_distribution(timings, (50, 99), prefix=f"claim_{limit}_"))
        plan = _explain_claim(conn, 100, worker_id)
    return {
        **figures,
        "claim_plan_indexes": list(dict.fromkeys(PLAN_INDEX.findall(plan))),
        "claim_plan_seq_scan": PLAN_SEQ_SCAN_ON_JOBS.search(plan) is not None,
        "claim_plan": plan,
    }


def _fill(settings: Settings, available: int, finished: int) -> None:
    """Finished jobs first, as in a table that has been in use, then available ones; a
    transaction per chunk."""
    with connect(settings, "pgjobs-bench") as conn:
        filling = ((BENCH.bench_fill_finished, finished), (BENCH.bench_fill_available, available))
        for statement, rows in filling:
            for start in range(0, rows, FILL_CHUNK):
                conn.execute(statement, {"rows": min(FILL_CHUNK, rows - start)})
        conn.execute(BENCH.bench_vacuum_analyze)


def _claim_params(limit: int, worker_id: uuid.UUID) -> dict[str, Any]:
    return {"queues": ["default"], "limit": limit, "worker_id": worker_id}


def _timed_claim(conn: psycopg.Connection[Any], limit: int, worker_id: uuid.UUID) -> float:
    """Milliseconds of one claim; its jobs are then completed, as a worker would."""
    started = time.perf_counter()
    rows = conn.execute(app._queries.claim_jobs, _claim_params(limit, worker_id)).fetchall()
    seconds = time.perf_counter() - started
    batch = [(j.id, j.attempt, j.claim_token, COMPLETED) for j in map(ClaimedJob._make, rows)]
    conn.execute(app._queries.finish_jobs, finish_params(worker_id, batch))
    return seconds * 1000


def _explain_claim(conn: psycopg.Connection[Any], limit: int, worker_id: uuid.UUID) -> str:
    """The plan of one claim as it ran (``EXPLAIN ANALYZE`` claims the jobs for real)."""
    rows = conn.execute(BENCH.bench_explain_claim_jobs, _claim_params(limit, worker_id)).fetchall()
    return "\n".join(row[0] for row in rows)


def _distribution(
    values: list[float], points: tuple[int, ...], prefix: str = ""
) -> dict[str, float]:
    """Percentiles ``points`` and the maximum of ``values`` (milliseconds), rounded to the µs."""
    ordered = sorted(values)
    figures = {
        f"{prefix}p{point}_ms": round(
            ordered[min(len(ordered) - 1, len(ordered) * point // 100)], 3
        )
        for point in points
    }
    return {**figures, f"{prefix}max_ms": round(ordered[-1], 3)}


MODES: dict[str, Callable[[Settings, BenchOptions], dict[str, Any]]] = {
    "enqueue": _enqueue,
    "bulk": _bulk,
    "process": _process,
    "latency": _latency,
    "steady": _steady,
    "rate": _rate,
    "scale": _scale,
    "pages": lambda settings, options: pages(
        settings, options.available, options.finished, options.samples, _fill
    ),
}


def _enqueue_noops(
    jobs: int, async_jobs: bool, unique: bool = False, results: bool = False
) -> None:
    """``jobs`` no-op jobs by ``enqueue_many``; with ``unique``, each with a key of its own;
    with ``results``, jobs that return a small dict instead."""
    if results:
        job: Job[[], Any] = async_returns if async_jobs else returns
    else:
        job = async_noop if async_jobs else noop
    for start in range(0, jobs, BULK_CHUNK):
        end = min(start + BULK_CHUNK, jobs)
        if unique:
            first = uuid.uuid4().hex  # keys never seen before, run after run
            app.enqueue_many(job.options(unique_key=[first, i]).call() for i in range(start, end))
        else:
            app.enqueue_many(job.call() for _ in range(start, end))


def _start_worker(settings: Settings, options: BenchOptions, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGJOBS_DATABASE_URL": str(settings.database_url)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgjobs",
            "--app",
            "pgjobs.bench._jobs:app",
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
