"""Compare pgjobs with the other PostgreSQL job queues for Python, on one server, in one go.

Usage, from the repository root with its virtual environment::

    .venv/bin/python -m tests.benchmarks.compare \\
        --database-url postgresql://postgres@127.0.0.1:5432/test \\
        [--runs 3] [--jobs 100000] [--enqueue-jobs 10000] [--bulk-jobs 100000] \\
        [--latency-samples 200] [--peers pgqueuer,procrastinate,chancy] [--tiny] \\
        [--json out.json]

``--tiny`` (500 jobs everywhere, 10 latency samples, 1 run, 2 s pgbench runs) proves the whole
thing works in about a minute; CI runs it and asserts no timing. The full sizes take roughly
30-40 minutes on a 2-core machine, most of it Procrastinate's and Chancy's burn-downs.

What it does:

1. Installs each peer (PgQueuer, Procrastinate, Chancy) from PyPI into a virtual environment of
   its own under ``.bench/venvs/<peer>`` (reused while it has the peer; ``--upgrade-peers``
   reinstalls the latest). A peer that cannot be installed or started is skipped with the reason
   printed — never a failure. pgjobs runs from this repository's environment.
2. Runs four benchmarks — single enqueue, bulk enqueue, processing (burn-down) and pickup
   latency — for every system, each measurement in a new database ``bench_<system>_<n>`` with the
   system's schema installed by its own tooling, every timed part in a process of its own. What
   each measures exactly: :mod:`tests.benchmarks._measure`; each system's API and settings: the
   docstring of its module in :mod:`tests.benchmarks.peers`.
3. Measures the raw SQL ceilings beside them (pgbench and plain psycopg on a jobs-like table,
   see :mod:`tests.benchmarks._ceilings`).
4. Interleaves: for each run, for each benchmark, every system in turn, the order rotating by
   one each run, so drift of the machine hits all alike.
5. Prints a Markdown table on standard output: per figure the median over the runs with
   min-max, the raw ceilings, and pgjobs ÷ peer; progress goes to standard error. ``--json``
   writes every raw sample (and every latency sample) with the machine and server settings.

How pgjobs is measured: ``--pgjobs-driver harness`` (the default) runs pgjobs through the
harness's own module (:mod:`tests.benchmarks.peers.pgjobs_bench`), measured exactly like the
peers; ``bench`` uses ``pgjobs bench MODE --json`` instead, and ``auto`` uses it when this pgjobs
has that command. ``--pgjobs-bench-args`` is appended to every ``pgjobs bench`` call, e.g.
``"--async-jobs --concurrency 50"``.

Other options: ``--benchmarks`` (a subset, e.g. ``process,latency``); ``--worker-args
SYSTEM=OPTIONS`` (repeatable) replaces a harness-run worker's settings, e.g.
``pgjobs="--processes 2 --concurrency 1000"`` (options of ``pgjobs worker``) or
``pgqueuer="--batch-size 50"`` (options of that module's ``worker`` mode); ``--no-ceilings``;
``--pgbench PATH``; ``--ceiling-seconds``; ``--timeout`` (per step); ``--poll-interval`` (how
often the burn-down asks whether jobs are left); ``--upgrade-peers``; ``--bench-dir``.

Logs of every step and worker are kept in ``.bench/logs/`` until the next run.

Exit status: 0; 1 if a pgjobs measurement failed; 2 for bad arguments or a server that cannot
be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.benchmarks import _report
from tests.benchmarks._ceilings import Ceilings, find_pgbench
from tests.benchmarks._database import Server, SetupError
from tests.benchmarks._measure import (
    BENCHMARKS,
    Driver,
    HarnessDriver,
    PgjobsBenchDriver,
    Sample,
    Sizes,
    System,
    pgjobs_bench_available,
)
from tests.benchmarks._processes import REPO, StepFailed
from tests.benchmarks._venvs import Peer, PeerUnavailable, ensure

PEERS = {
    peer.name: peer
    for peer in (
        Peer("pgqueuer", ("pgqueuer[asyncpg]", "psycopg[binary]"), ("pgqueuer", "asyncpg")),
        Peer("procrastinate", ("procrastinate", "psycopg[binary]"), ("procrastinate",)),
        Peer("chancy", ("chancy", "psycopg[binary]"), ("chancy",)),
    )
}
NOT_COVERED = {
    "oban": (
        "oban-py needs Python 3.12 or later; this interpreter is "
        f"{sys.version_info.major}.{sys.version_info.minor}"
        if sys.version_info < (3, 12)
        else "no module for oban-py yet"
    ),
    "awa-pg": (
        "installs here (a Rust core with a Python SDK), but its workers and storage differ "
        "enough that no module was written within the time set for extra peers"
    ),
}
TINY = {"jobs": 500, "enqueue_jobs": 500, "bulk_jobs": 500, "latency_samples": 10, "runs": 1}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.compare",
        description="Compare pgjobs with other PostgreSQL job queues on one server.",
    )
    parser.add_argument("--database-url", required=True, help="postgresql:// URL of the server")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs burnt down per run")
    parser.add_argument("--enqueue-jobs", type=int, default=10_000)
    parser.add_argument("--bulk-jobs", type=int, default=100_000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, or 'none'")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    parser.add_argument("--tiny", action="store_true", help="500 jobs, 10 samples, 1 run")
    parser.add_argument("--json", type=Path, help="write every sample here")
    parser.add_argument("--worker-args", action="append", default=[], metavar="SYSTEM=OPTIONS")
    parser.add_argument("--pgjobs-driver", choices=("auto", "bench", "harness"), default="harness")
    parser.add_argument("--pgjobs-bench-args", default="", metavar="OPTIONS")
    parser.add_argument("--no-ceilings", action="store_true")
    parser.add_argument("--pgbench", help="pgbench to use for the ceilings")
    parser.add_argument("--ceiling-seconds", type=float, default=10.0)
    parser.add_argument("--upgrade-peers", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per step")
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--bench-dir", type=Path, default=REPO / ".bench")
    options = parser.parse_args(argv)
    if options.tiny:
        for name, value in TINY.items():
            setattr(options, name, value)
        options.ceiling_seconds = min(options.ceiling_seconds, 2.0)
    sizes = ("runs", "jobs", "enqueue_jobs", "bulk_jobs", "latency_samples")
    for name in sizes:
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    unknown = set(_names(options.benchmarks)) - set(BENCHMARKS)
    if unknown:
        parser.error(f"--benchmarks: unknown {', '.join(sorted(unknown))}")
    unknown = set(_names(options.peers)) - {*PEERS, *NOT_COVERED}
    if unknown:
        parser.error(f"--peers: unknown {', '.join(sorted(unknown))}; known: {', '.join(PEERS)}")
    options.worker_map = {}
    for item in options.worker_args:
        system, sep, args = item.partition("=")
        if not sep:
            parser.error(f"--worker-args {item!r}: expected SYSTEM=OPTIONS")
        options.worker_map[system] = shlex.split(args)
    return options


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip() and name.strip() != "none"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    try:
        server = Server(options.database_url)
    except SetupError as exc:
        say(f"error: {exc}")
        return 2
    try:
        return compare(options, server)
    except SetupError as exc:
        say(f"error: {exc}")
        return 2
    finally:
        server.close()


@dataclass
class Outcome:
    """Everything one comparison produced."""

    samples: list[Sample] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=lambda: dict(NOT_COVERED))
    failures: list[dict[str, Any]] = field(default_factory=list)


def compare(options: argparse.Namespace, server: Server) -> int:
    logs = options.bench_dir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    (options.bench_dir / ".gitignore").write_text("*\n")
    sizes = Sizes(
        jobs=options.jobs,
        enqueue_jobs=options.enqueue_jobs,
        bulk_jobs=options.bulk_jobs,
        latency_samples=options.latency_samples,
        ceiling_seconds=options.ceiling_seconds,
        timeout=options.timeout,
        poll_interval=options.poll_interval,
    )
    outcome = Outcome()
    pgjobs = System(
        "pgjobs",
        Path(sys.executable),
        "tests.benchmarks.peers.pgjobs_bench",
        options.worker_map.get("pgjobs", []),
    )
    try:
        pgjobs.describe(logs, options.timeout)
    except StepFailed as exc:
        say(f"error: pgjobs cannot run here: {exc}")
        return 1
    drivers = [_pgjobs_driver(options, pgjobs, server, logs, sizes)]
    drivers += _peer_drivers(options, server, logs, sizes, outcome)
    for name, reason in NOT_COVERED.items():
        say(f"{name}: not compared: {reason}")
    for driver in drivers:
        say(f"{driver.system.label} {driver.system.version}: {driver.system.settings}")
    participants: list[Driver | Ceilings] = list(drivers)
    if not options.no_ceilings:
        pgbench = find_pgbench(options.pgbench)
        if pgbench is None or not pgbench.exists():
            say("raw ceilings: pgbench not found; only the psycopg ceilings are measured")
            pgbench = None
        participants.insert(0, Ceilings(server, Path(sys.executable), logs, sizes, pgbench))

    _run_all(options, participants, outcome)

    summaries = _report.summarise(outcome.samples)
    print(render(options, server, drivers, summaries, outcome))
    if options.json:
        _write_json(options, server, sizes, drivers, summaries, outcome)
    return 1 if any(f["system"] == "pgjobs" for f in outcome.failures) else 0


def _peer_drivers(
    options: argparse.Namespace, server: Server, logs: Path, sizes: Sizes, outcome: Outcome
) -> list[Driver]:
    """A driver for each peer that installs and starts here; the others go to ``skipped``."""
    drivers: list[Driver] = []
    for name in _names(options.peers):
        if name in NOT_COVERED:
            continue
        say(f"{name}: preparing {options.bench_dir / 'venvs' / name}")
        try:
            python = ensure(PEERS[name], options.bench_dir / "venvs", upgrade=options.upgrade_peers)
            system = System(name, python, PEERS[name].module, options.worker_map.get(name, []))
            system.describe(logs, options.timeout)
        except (PeerUnavailable, StepFailed) as exc:
            outcome.skipped[name] = str(exc)
            say(f"{name}: skipped: {exc}")
            continue
        drivers.append(HarnessDriver(system, server, logs, sizes))
    return drivers


def _run_all(
    options: argparse.Namespace, participants: list[Driver | Ceilings], outcome: Outcome
) -> None:
    """Every run, every benchmark, every participant in an order rotated by one each run.

    A peer that fails is dropped for the rest of the comparison; pgjobs and the ceilings go on.
    """
    dropped: set[int] = set()
    for run_number in range(1, options.runs + 1):
        for benchmark in _names(options.benchmarks):
            shift = (run_number - 1) % len(participants)
            for participant in participants[shift:] + participants[:shift]:
                if id(participant) in dropped:
                    continue
                key, name = _names_of(participant)
                say(f"[run {run_number}/{options.runs}] {benchmark}: {name} ...")
                try:
                    found = participant.measure(benchmark, run_number)
                except StepFailed as exc:
                    outcome.failures.append(
                        {
                            "run": run_number,
                            "benchmark": benchmark,
                            "system": key,
                            "reason": str(exc),
                        }
                    )
                    say(f"    failed: {exc}")
                    if key not in ("pgjobs", _report.RAW):
                        outcome.skipped[key] = f"{benchmark} failed: {exc}"
                        dropped.add(id(participant))
                    continue
                outcome.samples += found
                for sample in found:
                    shown = _report.number(sample.value, _report.unit_of(sample.metric))
                    say(f"    {sample.metric}: {shown}")


def _write_json(
    options: argparse.Namespace,
    server: Server,
    sizes: Sizes,
    drivers: list[Driver],
    summaries: dict[tuple[str, str, str], _report.Summary],
    outcome: Outcome,
) -> None:
    document = {
        "command": ["python", "-m", "tests.benchmarks.compare", *sys.argv[1:]],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "server": server.facts(),
        "sizes": asdict(sizes) | {"runs": options.runs},
        "systems": {
            d.system.name: {
                "label": d.system.label,
                "version": d.system.version,
                "settings": d.system.settings,
                "worker_options": d.system.worker_options,
                "driver": type(d).__name__,
            }
            for d in drivers
        },
        "skipped": outcome.skipped,
        "failures": outcome.failures,
        "summary": [
            {"benchmark": b, "system": s, "metric": m, **asdict(v)}
            for (b, s, m), v in sorted(summaries.items())
        ],
        "samples": [asdict(sample) for sample in outcome.samples],
    }
    options.json.write_text(json.dumps(document, indent=1))
    say(f"samples written to {options.json}")


def _pgjobs_driver(
    options: argparse.Namespace, system: System, server: Server, logs: Path, sizes: Sizes
) -> Driver:
    choice = options.pgjobs_driver
    if choice == "auto":
        choice = "bench" if pgjobs_bench_available(system.python) else "harness"
    say(f"pgjobs: measured by {'pgjobs bench' if choice == 'bench' else 'the harness module'}")
    if choice == "bench":
        extra = shlex.split(options.pgjobs_bench_args)
        system.settings = (
            "measured by pgjobs bench with its defaults (one commit per enqueue on one "
            "connection; enqueue_many; a --burst worker, --processes 2 --concurrency 20, def "
            "no-op jobs; latency: one idle worker process)"
            + (f", plus {' '.join(extra)}" if extra else "")
        )
        return PgjobsBenchDriver(system, server, logs, sizes, extra)
    return HarnessDriver(system, server, logs, sizes)


def _names_of(participant: Driver | Ceilings) -> tuple[str, str]:
    """The participant's key in the results, and its name for people."""
    if isinstance(participant, Ceilings):
        return _report.RAW, "raw ceilings"
    return participant.system.name, participant.system.label


def _machine() -> dict[str, Any]:
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def render(
    options: argparse.Namespace,
    server: Server,
    drivers: list[Driver],
    summaries: dict[tuple[str, str, str], _report.Summary],
    outcome: Outcome,
) -> str:
    """The Markdown printed on standard output."""
    machine, facts = _machine(), server.facts()
    lines = [
        f"Machine: {machine['cpus']} CPUs, {machine['memory']}, {machine['platform']}; "
        f"PostgreSQL {facts.get('server_version', '?')} (fsync {facts.get('fsync', '?')}, "
        f"synchronous_commit {facts.get('synchronous_commit', '?')}, "
        f"shared_buffers {facts.get('shared_buffers', '?')}).",
        f"Sizes: {options.runs} run(s); burn-down {options.jobs:,} jobs; single enqueue "
        f"{options.enqueue_jobs:,}; bulk {options.bulk_jobs:,}; latency "
        f"{options.latency_samples} samples. Medians over the runs, (min-max) when more than one.",
        "",
        _report.markdown(summaries, [(d.system.name, d.system.label) for d in drivers]),
        "",
        "pgjobs / peer is the ratio of medians: above 1 is better for pgjobs in the jobs/s rows, "
        "below 1 in the latency and memory rows.",
    ]
    ceilings = _report.ceilings_markdown(summaries)
    if ceilings:
        lines += ["", ceilings]
    lines += ["", "Systems and settings:"]
    lines += [f"- {d.system.label} {d.system.version}: {d.system.settings}" for d in drivers]
    if outcome.skipped:
        lines += ["", "Not compared:"]
        lines += [f"- {name}: {reason}" for name, reason in outcome.skipped.items()]
    if outcome.failures:
        lines += ["", "Failures:"]
        lines += [
            f"- run {f['run']}, {f['benchmark']}, {f['system']}: {f['reason']}"
            for f in outcome.failures
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
