"""The four benchmarks, measured the same way for every system.

Each measurement gets a new database, installs the system's schema with the system's own tooling,
and runs every timed part in a process of its own (see :mod:`tests.benchmarks.peers._protocol`):

- **enqueue**: N single enqueues, one job per transaction, on one connection; jobs/s.
- **bulk**: N jobs through the system's bulk API in one call; jobs/s.
- **process**: N no-op jobs pre-filled (untimed, then ``ANALYZE`` and ``CHECKPOINT``); the clock
  starts when the worker process is started and stops at the first poll of the system's own
  table that finds no job waiting or running; jobs/s. Then the number of successfully completed
  jobs is checked. The worker's resident memory (its whole process tree) is sampled every
  0.25 s: the peak is "RSS under load".
- **latency**: a worker is started idle; the enqueuer sends one warm-up job, then K jobs one at a
  time (commit → the job's first line, both on the database clock); p50 and p99 in ms. The
  median RSS over the second half of the run is "RSS idle".

:class:`HarnessDriver` measures through a system's module: every peer, and pgjobs when
``pgjobs bench`` is missing or ``--pgjobs-driver harness`` is given. :class:`PgjobsBenchDriver`
asks ``pgjobs bench`` (the default when that command exists).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg

from tests.benchmarks._database import Server, settle
from tests.benchmarks._processes import Child, StepFailed, run

BENCHMARKS = ("enqueue", "bulk", "process", "latency")
RSS_INTERVAL = 0.25


@dataclass(frozen=True)
class Sizes:
    jobs: int
    """Jobs burnt down by the processing benchmark."""
    enqueue_jobs: int
    bulk_jobs: int
    latency_samples: int
    ceiling_seconds: float
    """How long each pgbench ceiling runs."""
    timeout: float
    """The longest any one step may take."""
    poll_interval: float
    """How often the processing benchmark asks whether any job is left."""


@dataclass(frozen=True)
class Sample:
    """One figure from one run."""

    run: int
    benchmark: str
    system: str
    metric: str
    value: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class System:
    """A system under test: the interpreter of its environment and the module that drives it."""

    name: str
    python: Path
    module: str
    worker_options: list[str]
    label: str = ""
    version: str = ""
    settings: str = ""
    remaining_sql: str = ""
    completed_sql: str = ""

    def command(self, mode: str, url: str, *extra: str) -> list[str]:
        return [str(self.python), "-m", self.module, mode, "--database-url", url, *extra]

    def describe(self, logs: Path, timeout: float) -> None:
        """Ask the module for the system's version, settings and SQL (raises StepFailed)."""
        found = run(
            f"describe-{self.name}",
            [str(self.python), "-m", self.module, "describe"],
            logs,
            timeout,
        )
        self.label = str(found["system"])
        self.version = str(found["version"])
        self.settings = str(found["settings"])
        if self.worker_options:
            self.settings += f"; worker options given: {' '.join(self.worker_options)}"
        self.remaining_sql = str(found["remaining_sql"])
        self.completed_sql = str(found["completed_sql"])


class Driver(Protocol):
    system: System

    def measure(self, benchmark: str, run_number: int) -> list[Sample]: ...


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating between the two nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class HarnessDriver:
    """Measures a system through the modes of its benchmark module."""

    def __init__(self, system: System, server: Server, logs: Path, sizes: Sizes) -> None:
        self.system = system
        self.server = server
        self.logs = logs
        self.sizes = sizes

    def measure(self, benchmark: str, run_number: int) -> list[Sample]:
        with self.server.database(self.system.name) as url:
            self._step(run_number, benchmark, "install", url)
            if benchmark in ("enqueue", "bulk"):
                jobs = self.sizes.enqueue_jobs if benchmark == "enqueue" else self.sizes.bulk_jobs
                found = self._step(run_number, benchmark, benchmark, url, "--jobs", str(jobs))
                return [
                    self._sample(run_number, benchmark, "jobs_per_second", jobs / found["seconds"])
                ]
            if benchmark == "process":
                return self._process(run_number, url)
            return self._latency(run_number, url)

    def _name(self, run_number: int, benchmark: str, mode: str) -> str:
        return f"r{run_number}-{benchmark}-{self.system.name}-{mode}"

    def _step(self, run_number: int, benchmark: str, mode: str, url: str, *extra: str) -> Any:
        return run(
            self._name(run_number, benchmark, mode),
            self.system.command(mode, url, *extra),
            self.logs,
            self.sizes.timeout,
        )

    def _sample(
        self, run_number: int, benchmark: str, metric: str, value: float, **detail: Any
    ) -> Sample:
        return Sample(run_number, benchmark, self.system.name, metric, value, detail)

    def _worker(self, run_number: int, benchmark: str, url: str) -> Child:
        options = ["--for", benchmark, "--", *self.system.worker_options]
        command = self.system.command("worker", url, *options)
        return Child(self._name(run_number, benchmark, "worker"), command, self.logs)

    def _process(self, run_number: int, url: str) -> list[Sample]:
        jobs = self.sizes.jobs
        self._step(run_number, "process", "fill", url, "--jobs", str(jobs))
        settle(url)
        with psycopg.connect(url, autocommit=True) as conn:
            start = time.perf_counter()
            worker = self._worker(run_number, "process", url)
            peak, next_rss = 0.0, start
            try:
                while True:
                    time.sleep(self.sizes.poll_interval)
                    if not worker.running():
                        raise StepFailed(
                            f"{self.system.label} worker exited {worker.process.returncode} "
                            f"during the burn-down: {worker.reason()}"
                        )
                    now = time.perf_counter()
                    row = conn.execute(self.system.remaining_sql).fetchone()
                    if row is not None and not row[0]:
                        break
                    if now >= next_rss:
                        peak = max(peak, worker.rss_mb() or 0.0)
                        next_rss = now + RSS_INTERVAL
                    if now - start > self.sizes.timeout:
                        raise StepFailed(
                            f"{self.system.label}: jobs left after {self.sizes.timeout:g} s"
                        )
            finally:
                worker.stop()
            seconds = now - start
            done_row = conn.execute(self.system.completed_sql).fetchone()
        completed = int(done_row[0]) if done_row else 0
        if completed < jobs:
            raise StepFailed(f"{self.system.label}: only {completed} of {jobs} jobs completed")
        samples = [
            self._sample(run_number, "process", "jobs_per_second", jobs / seconds, seconds=seconds)
        ]
        if peak:
            samples.append(self._sample(run_number, "process", "rss_load_mb", peak))
        return samples

    def _latency(self, run_number: int, url: str) -> list[Sample]:
        worker = self._worker(run_number, "latency", url)
        command = self.system.command("latency", url, "--samples", str(self.sizes.latency_samples))
        enqueuer = Child(self._name(run_number, "latency", "latency"), command, self.logs)
        rss: list[float] = []
        start = time.perf_counter()
        try:
            while enqueuer.running():
                time.sleep(RSS_INTERVAL)
                if not worker.running():
                    raise StepFailed(
                        f"{self.system.label} worker exited {worker.process.returncode}: "
                        f"{worker.reason()}"
                    )
                if (size := worker.rss_mb()) is not None:
                    rss.append(size)
                if time.perf_counter() - start > self.sizes.timeout:
                    raise StepFailed(f"{self.system.label}: latency run exceeded the timeout")
            found = enqueuer.result()
        finally:
            if enqueuer.running():
                enqueuer.kill()
            worker.stop()
        values = [float(v) for v in found["samples_ms"]]
        samples = [
            self._sample(
                run_number, "latency", "p50_ms", percentile(values, 50), samples_ms=values
            ),
            self._sample(run_number, "latency", "p99_ms", percentile(values, 99)),
        ]
        if rss:
            idle = statistics.median(rss[len(rss) // 2 :])
            samples.append(self._sample(run_number, "latency", "rss_idle_mb", idle))
        return samples


def pgjobs_bench_available(python: Path) -> bool:
    """Whether this pgjobs has the ``pgjobs bench`` command."""
    done = subprocess.run(
        [str(python), "-m", "pgjobs", "bench", "--help"], capture_output=True, check=False
    )
    return done.returncode == 0


class PgjobsBenchDriver:
    """pgjobs measured by its own ``pgjobs bench MODE --json``, each run in a fresh database.

    The command relied on: ``pgjobs --database-url URL bench {enqueue,bulk,process} --jobs N
    --json`` and ``pgjobs --database-url URL bench latency --samples K --json``, printing one JSON
    object as the last line of output with ``jobs_per_second`` (enqueue, bulk, process) or
    ``p50_ms`` and ``p99_ms`` (latency); ``rss_load_mb``, ``rss_idle_mb`` and ``samples_ms`` are
    taken when present. The bench migrates a schema of its own. ``extra``
    (``--pgjobs-bench-args``, e.g. ``--async-jobs`` or ``--concurrency 50``) is appended to every
    call. Unless the command reports memory, the worker's is read here: the process tree under
    ``pgjobs bench`` without the bench process itself, sampled as for every other system.
    """

    def __init__(
        self, system: System, server: Server, logs: Path, sizes: Sizes, extra: list[str]
    ) -> None:
        self.system = system
        self.server = server
        self.logs = logs
        self.sizes = sizes
        self.extra = extra

    def measure(self, benchmark: str, run_number: int) -> list[Sample]:
        size = {
            "enqueue": ["--jobs", str(self.sizes.enqueue_jobs)],
            "bulk": ["--jobs", str(self.sizes.bulk_jobs)],
            "process": ["--jobs", str(self.sizes.jobs)],
            "latency": ["--samples", str(self.sizes.latency_samples)],
        }[benchmark]
        rss: list[float] = []
        with self.server.database(self.system.name) as url:
            command = [str(self.system.python), "-m", "pgjobs", "--database-url", url, "bench"]
            bench = Child(
                f"r{run_number}-{benchmark}-{self.system.name}-bench",
                [*command, benchmark, *size, "--json", *self.extra],
                self.logs,
            )
            try:
                start = time.perf_counter()
                while bench.running():
                    time.sleep(RSS_INTERVAL)
                    if (found_rss := bench.rss_mb(descendants_only=True)) is not None:
                        rss.append(found_rss)
                    if time.perf_counter() - start > self.sizes.timeout:
                        raise StepFailed(f"pgjobs bench {benchmark} exceeded the timeout")
                found = bench.result()
            finally:
                if bench.running():
                    bench.kill()
        if benchmark == "process" and rss:
            found.setdefault("rss_load_mb", max(rss))
        if benchmark == "latency" and rss:
            found.setdefault("rss_idle_mb", statistics.median(rss[len(rss) // 2 :]))
        metrics = {
            "enqueue": ("jobs_per_second",),
            "bulk": ("jobs_per_second",),
            "process": ("jobs_per_second", "rss_load_mb"),
            "latency": ("p50_ms", "p99_ms", "rss_idle_mb"),
        }[benchmark]
        samples = [
            Sample(run_number, benchmark, self.system.name, metric, float(found[metric]))
            for metric in metrics
            if found.get(metric) is not None
        ]
        if not samples:
            raise StepFailed(f"pgjobs bench {benchmark} printed none of {', '.join(metrics)}")
        samples[0].detail.update(found)
        return samples
