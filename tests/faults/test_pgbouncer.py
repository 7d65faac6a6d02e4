"""pgjobs behind pgbouncer 1.18 in transaction pooling mode (RELIABILITY.md P-01, P-02).

Behind a transaction pooler, consecutive transactions of one client may run on different server
sessions, so prepared statements, advisory locks and LISTEN cannot be trusted there. pgjobs'
answer: ``prepared_statements=False`` (``--no-prepared-statements``), and ``--poll-only`` workers
whose lost jobs are rescued by their lease, or a direct ``--listen-database-url`` for the session.

Sizes: by default the CI subset runs (1,000 enqueue transactions); ``PGJOBS_FAULTS=full`` runs
10,000. Measured figures are printed for the release notes (``pytest -s``).

The test jobs write their ledger through the worker's database URL, here pgbouncer, on
connections with psycopg's default auto-prepare; each such connection is kept under five writes
(the threshold) so that the ledger itself never trips over pgbouncer.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import pytest

from tests import jobs_app
from tests.faults.cluster import Cluster
from tests.faults.pgbouncer import PgBouncer
from tests.helpers import WorkerProcess, eventually

pytestmark = pytest.mark.faults

StartWorker = Callable[..., WorkerProcess]

FULL = os.environ.get("PGJOBS_FAULTS") == "full"
TRANSACTIONS = 10_000 if FULL else 1_000
THREADS = 8
WOKEN_WITHIN = 10.0
"""Seconds from commit to start that only a wake-up meets, on a worker polling every 30 s."""
PROBES = 3
TX_POOLER = ("--poll-only", "--no-prepared-statements")


def fetch_one(url: str, query: str, *params: Any) -> tuple[Any, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row


def probe_latency(bouncer_url: str, ledger_url: str, label: str) -> float:
    """Seconds from a probe job's commit (through pgbouncer) to its start in the ledger.

    The timestamp is taken just before COMMIT, so the figure can only be longer than the truth.
    """
    with psycopg.connect(bouncer_url, prepare_threshold=None) as conn:
        (job_id,) = jobs_app.app.enqueue_many([jobs_app.noop.call(label)], conn=conn)
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        committed: datetime = row[0]
    (started,) = eventually(
        lambda: fetch_one(ledger_url, "SELECT at FROM ledger WHERE job_id = %s", job_id),
        timeout=15,
    )
    return float((started - committed).total_seconds())


def test_transactional_enqueue_through_pgbouncer_keeps_exactly_the_committed_jobs(
    cluster: Cluster, jobs_url: str, pgbouncer: PgBouncer
) -> None:
    """P-01: enqueue inside the caller's transactions behind a transaction pooler: a commit keeps
    its jobs, a rollback removes them, and nothing errors with prepared statements off."""
    bouncer_url = pgbouncer.url_for("jobs")
    jobs_app.app.configure(database_url=bouncer_url, prepared_statements=False)
    committed: list[str] = []
    rolled_back: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        kept: list[str] = []
        dropped: list[str] = []
        with psycopg.connect(bouncer_url, prepare_threshold=None) as conn:
            for i in range(number, TRANSACTIONS, THREADS):
                labels = [f"tx{i}-{k}" for k in range(1 + i % 3)]
                try:
                    with conn.transaction():
                        if len(labels) == 1:
                            jobs_app.noop.enqueue(labels[0], conn=conn)  # type: ignore[call-arg]
                        else:
                            calls = [jobs_app.noop.call(label) for label in labels]
                            assert len(jobs_app.app.enqueue_many(calls, conn=conn)) == len(calls)
                        if i % 2:
                            raise psycopg.Rollback()
                except Exception as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                (dropped if i % 2 else kept).extend(labels)
                if i % 10 == 0:  # and now and then one through pgjobs' own pool
                    try:
                        jobs_app.noop.enqueue(f"pool{i}")
                    except Exception as exc:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")
                    else:
                        kept.append(f"pool{i}")
        with lock:
            committed.extend(kept)
            rolled_back.extend(dropped)

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    elapsed = time.monotonic() - began

    assert not any(thread.is_alive() for thread in threads)
    print(
        f"pgbouncer transactional enqueue: {TRANSACTIONS} transactions from {THREADS} threads in "
        f"{elapsed:.2f} s ({TRANSACTIONS / elapsed:.0f}/s), {len(errors)} errors"
    )
    assert errors == []
    with psycopg.connect(jobs_url) as conn:
        stored = [row[0] for row in conn.execute("SELECT args ->> 0 FROM pgjobs.jobs")]
    assert len(stored) == len(set(stored))
    assert sorted(stored) == sorted(committed)
    assert rolled_back and set(rolled_back).isdisjoint(stored)


def test_poll_only_worker_through_pgbouncer_runs_jobs_within_the_poll_interval(
    cluster: Cluster, jobs_url: str, pgbouncer: PgBouncer, start_worker: StartWorker
) -> None:
    """P-02: behind a transaction pooler a poll-only worker trusts no session state (no LISTEN,
    no advisory lock) and still starts each job by its polls: within a poll interval, and the
    claim and the start (2 s of slack for a loaded machine)."""
    bouncer_url = pgbouncer.url_for("jobs")
    poll = 1.0
    worker = start_worker(bouncer_url, *TX_POOLER, "--poll-interval", str(poll))
    worker.wait_for_log("poll-only")
    eventually(lambda: fetch_one(jobs_url, "SELECT count(*) FROM pgjobs.workers") == (1,))

    latencies = [probe_latency(bouncer_url, jobs_url, f"probe-{i}") for i in range(PROBES)]

    print(
        f"poll-only behind pgbouncer (poll {poll:g} s): probes "
        + ", ".join(f"{x:.3f} s" for x in latencies)
    )
    assert max(latencies) <= poll + 2.0, latencies
    assert "listening on" not in worker.output()
    advisory = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    assert fetch_one(jobs_url, advisory) == (0,)
    completed = "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'"
    eventually(lambda: fetch_one(jobs_url, completed) == (PROBES,))
    assert worker.process.poll() is None


def test_sigkilled_poll_only_worker_is_rescued_through_pgbouncer_after_its_lease_expires(
    cluster: Cluster, jobs_url: str, pgbouncer: PgBouncer, start_worker: StartWorker
) -> None:
    """P-02: without a session lock, a dead worker behind a pooler is found by its lease alone:
    its jobs run again after the lease expires, never before, each exactly once more."""
    bouncer_url = pgbouncer.url_for("jobs")
    jobs_app.app.configure(database_url=bouncer_url, prepared_statements=False)
    lease = 3.0
    timing = ("--lease-timeout", str(lease), "--heartbeat-interval", "0.5")
    flags = (*TX_POOLER, *timing, "--poll-interval", "0.5", "--concurrency", "4")
    doomed = start_worker(bouncer_url, *flags)
    doomed.wait_for_log("poll-only")
    ids = jobs_app.app.enqueue_many(jobs_app.sleepy.call(4, "leased") for _ in range(4))
    started = "SELECT count(*) FROM ledger WHERE attempt = %s"
    eventually(lambda: fetch_one(jobs_url, started, 1) == (4,))
    rescuer = start_worker(bouncer_url, *flags)
    eventually(lambda: fetch_one(jobs_url, "SELECT count(*) FROM pgjobs.workers") == (2,))

    doomed.signal(signal.SIGKILL)
    doomed.wait()
    killed_at, expires_at = fetch_one(
        jobs_url,
        "SELECT clock_timestamp(), expires_at FROM pgjobs.workers WHERE pid = %s",
        doomed.process.pid,
    )

    eventually(lambda: fetch_one(jobs_url, started, 2) == (4,), timeout=15)
    (first, last) = fetch_one(jobs_url, "SELECT min(at), max(at) FROM ledger WHERE attempt = 2")
    print(
        f"SIGKILL behind pgbouncer (lease {lease:g} s): jobs running again "
        f"{(first - killed_at).total_seconds():.2f}-{(last - killed_at).total_seconds():.2f} s "
        f"after the kill, {(first - expires_at).total_seconds():.2f} s after the lease expired"
    )
    assert first >= expires_at  # never before the lease expired
    # a beat, a poll and slack: a sweep one lease late would miss this
    assert (last - expires_at).total_seconds() < lease
    completed = "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND state = 'completed'"
    eventually(lambda: fetch_one(jobs_url, completed, ids) == (4,), timeout=15)
    runs = fetch_one(
        jobs_url,
        "SELECT count(*) FILTER (WHERE event = 'start'), count(*) FILTER (WHERE event = 'end'),"
        " count(DISTINCT pid), max(attempt) FROM ledger",
    )
    assert runs == (8, 4, 2, 2)  # 4 cut short by the kill, 4 run to their end by the rescuer
    ended = fetch_one(
        jobs_url,
        "SELECT count(*) FROM ledger s JOIN ledger e ON e.job_id = s.job_id"
        " WHERE s.event = 'start' AND s.attempt = 2 AND e.event = 'end' AND e.attempt = 2"
        "   AND e.pid = s.pid AND e.pid = %s",
        rescuer.process.pid,
    )
    assert ended == (4,)  # each rerun started and ended in the rescuer: no overlap
    reasons = fetch_one(
        jobs_url,
        "SELECT array_agg(DISTINCT errors -> 0 ->> 'message') FROM pgjobs.jobs WHERE id = ANY(%s)",
        ids,
    )[0]
    assert len(reasons) == 1 and "its lease expired without a heartbeat" in reasons[0]
    assert rescuer.process.poll() is None


def test_listen_database_url_gives_notification_wakeups_behind_pgbouncer(
    cluster: Cluster, jobs_url: str, pgbouncer: PgBouncer, start_worker: StartWorker
) -> None:
    """P-02: with ``--listen-database-url`` straight to PostgreSQL, a worker whose statements go
    through the pooler still wakes on commits: each job starts within 10 s, polling every 30 s.
    (How soon: ``pgjobs bench latency``.)"""
    bouncer_url = pgbouncer.url_for("jobs")
    worker = start_worker(
        bouncer_url, *TX_POOLER, "--listen-database-url", jobs_url, "--poll-interval", "30"
    )
    worker.wait_for_log("listening on")

    latencies = [probe_latency(bouncer_url, jobs_url, f"probe-{i}") for i in range(PROBES)]

    print(
        "behind pgbouncer with a direct listen URL (poll 30 s): probes "
        + ", ".join(f"{x * 1000:.1f} ms" for x in latencies)
    )
    assert max(latencies) < WOKEN_WITHIN, latencies
    assert worker.process.poll() is None
