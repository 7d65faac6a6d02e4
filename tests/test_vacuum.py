"""The leader vacuums the jobs table once claims and outcomes have left enough dead rows behind,
so claims never wade through the dead head of the claim index for long."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import pgjobs
from tests import jobs_app
from tests.helpers import WorkerProcess, count, eventually, value, worker_launcher

StartWorker = Callable[..., WorkerProcess]
FAST_BEATS = ("--heartbeat-interval", "0.5", "--lease-timeout", "3")


def vacuums(db: psycopg.Connection[Any]) -> int:
    """Manual vacuums of the jobs table (autovacuum counts apart)."""
    return count(db, "SELECT pg_stat_get_vacuum_count('pgjobs.jobs'::regclass)")


def churn(app: pgjobs.App, db: psycopg.Connection[Any], jobs: int) -> None:
    """Enqueue ``jobs`` no-op jobs and wait until all of them completed."""
    ids = app.enqueue_many(jobs_app.noop.call("churn") for _ in range(jobs))
    completed = "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed' AND id = ANY(%s)"
    eventually(lambda: count(db, completed, ids) == jobs, 30)


def beats_of(db: psycopg.Connection[Any], worker: WorkerProcess) -> Any:
    return value(db, "SELECT heartbeat_at FROM pgjobs.workers WHERE pid = %s", worker.process.pid)


def test_the_leader_vacuums_the_jobs_table_past_the_threshold(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--concurrency", "20", "--vacuum-threshold", "300", *FAST_BEATS)
    worker.wait_for_log("became the leader")
    assert vacuums(db) == 0
    churn(app, db, 1000)  # each job leaves two dead rows: claimed, then finished
    eventually(lambda: vacuums(db) >= 1, 15)
    dead = "SELECT pg_stat_get_dead_tuples('pgjobs.jobs'::regclass)"
    eventually(lambda: count(db, dead) < 300, 15)


def test_a_threshold_of_zero_leaves_the_table_to_autovacuum(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--concurrency", "20", "--vacuum-threshold", "0", *FAST_BEATS)
    worker.wait_for_log("became the leader")
    churn(app, db, 1000)
    first = beats_of(db, worker)
    # five beats after the churn: each would have started a vacuum with a threshold
    eventually(lambda: (beats_of(db, worker) - first).total_seconds() >= 2.5, 10)
    assert vacuums(db) == 0


@pytest.fixture
def unprivileged_url(database_url: str, db: psycopg.Connection[Any]) -> Iterator[str]:
    """``database_url`` as a role that may use pgjobs' tables but does not own them."""
    role = f"pgjobs_user_{uuid.uuid4().hex[:8]}"
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    for grant in (
        f'GRANT USAGE ON SCHEMA pgjobs TO "{role}"',
        f'GRANT ALL ON ALL TABLES IN SCHEMA pgjobs TO "{role}"',
        f'GRANT ALL ON ALL SEQUENCES IN SCHEMA pgjobs TO "{role}"',
        f'GRANT ALL ON TABLE ledger TO "{role}"',
    ):
        db.execute(grant)
    parts = urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    yield urlunsplit(parts._replace(netloc=f"{role}@{host}"))
    db.execute(f'DROP OWNED BY "{role}"')
    db.execute(f'DROP ROLE "{role}"')


@pytest.mark.fresh_database
def test_a_role_that_may_not_vacuum_says_so_once_and_goes_on_working(
    app: pgjobs.App, db: psycopg.Connection[Any], unprivileged_url: str, tmp_path: Path
) -> None:
    with worker_launcher(tmp_path) as start:
        worker = start(
            unprivileged_url, "--concurrency", "20", "--vacuum-threshold", "300", *FAST_BEATS
        )
        worker.wait_for_log("became the leader")
        churn(app, db, 1000)
        worker.wait_for_log("cannot vacuum the jobs table")
        churn(app, db, 1000)  # past the threshold again: no second try, and jobs still run
        assert worker.output().count("cannot vacuum the jobs table") == 1, worker.output()
        assert vacuums(db) == 0


def test_a_vacuum_skipped_while_another_holds_the_table_is_tried_again(
    app: pgjobs.App, db: psycopg.Connection[Any], database_url: str, worker_process: StartWorker
) -> None:
    debug = {"PGJOBS_LOG_LEVEL": "DEBUG"}
    worker = worker_process(
        "--concurrency", "20", "--vacuum-threshold", "300", *FAST_BEATS, env=debug
    )
    worker.wait_for_log("became the leader")
    with psycopg.connect(database_url) as holder:  # as autovacuum would: the vacuum's own lock
        holder.execute("LOCK TABLE pgjobs.jobs IN SHARE UPDATE EXCLUSIVE MODE")
        churn(app, db, 1000)
        tried = ("vacuum of the jobs table skipped: the table is busy", "cannot vacuum")
        eventually(lambda: any(text in worker.output() for text in tried), 15)
        assert vacuums(db) == 0
    assert "cannot vacuum" not in worker.output()  # busy is not forbidden: it tries again
    eventually(lambda: vacuums(db) >= 1, 15)
