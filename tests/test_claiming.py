"""Which jobs a worker claims, and how many."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgjobs
from tests import jobs_app
from tests.helpers import WorkerProcess, eventually, run_burst


def labels_in_order(db: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in db.execute("SELECT label FROM ledger ORDER BY at").fetchall()]


def test_priority_then_age_within_a_queue(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    jobs_app.noop.options(priority=5).enqueue("low-old")
    jobs_app.noop.enqueue("normal-old")
    jobs_app.noop.options(priority=-5).enqueue("high")
    jobs_app.noop.enqueue("normal-new")
    app.configure(database_url=app.settings.database_url, concurrency=1)
    run_burst(app)
    assert labels_in_order(db) == ["high", "normal-old", "normal-new", "low-old"]


def test_strict_queue_order(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    for i in range(3):
        jobs_app.noop.options(queue="low").enqueue(f"low{i}")
        jobs_app.noop.options(queue="high").enqueue(f"high{i}")
    jobs_app.noop.options(queue="ignored").enqueue("ignored")
    app.configure(database_url=app.settings.database_url, concurrency=1, queues="high,low")
    run_burst(app)
    assert labels_in_order(db) == ["high0", "high1", "high2", "low0", "low1", "low2"]
    assert db.execute("SELECT state FROM pgjobs.jobs WHERE queue = 'ignored'").fetchone() == (
        "available",
    )


def test_weighted_queues_share_claims_by_weight(app: pgjobs.App) -> None:
    app.configure(database_url=app.settings.database_url, queues="a:3,b:1")
    worker = pgjobs.Worker(app)
    firsts = Counter(worker._producer.queue_order()[0] for _ in range(4000))
    assert 2800 <= firsts["a"] <= 3200, firsts


def test_never_more_running_than_free_slots(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: Callable[..., WorkerProcess]
) -> None:
    app.enqueue_many(jobs_app.sleepy.call(0.2, f"s{i}") for i in range(8))
    worker = worker_process("--concurrency", "2", "--burst")
    assert worker.wait(timeout=30) == 0, worker.output()
    # the most jobs executing at one moment, from the jobs' own start and end records
    events = db.execute(
        "SELECT at, CASE event WHEN 'start' THEN 1 ELSE -1 END FROM ledger ORDER BY at, 2"
    ).fetchall()
    assert len(events) == 16
    executing = peak = 0
    for _, step in events:
        executing += step
        peak = max(peak, executing)
    assert peak == 2


def test_poll_only_worker_still_runs_jobs(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: Callable[..., WorkerProcess]
) -> None:
    worker = worker_process("--poll-only", "--poll-interval", "0.2")
    worker.wait_for_log("poll-only")
    jobs_app.noop.enqueue("polled")
    eventually(lambda: labels_in_order(db) == ["polled"])
    assert "listening on" not in worker.output()


def test_async_and_sync_jobs_share_one_worker(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    app.enqueue_many([jobs_app.noop.call("sync"), jobs_app.async_noop.call("async")])
    run_burst(app)
    assert sorted(labels_in_order(db)) == ["async", "sync"]


def test_current_job_outside_a_job_raises() -> None:
    with pytest.raises(LookupError, match="inside a job"):
        pgjobs.current_job()
