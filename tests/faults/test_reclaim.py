"""A database crash that undoes a claim, while the worker that made it still runs the jobs.

A claim commits without waiting for the disk. When the server crashes before its WAL is flushed,
the jobs are ``available`` again after recovery, with their attempt not counted, and the same
worker claims them again with the same attempt number: id, attempt and worker cannot tell the
new claim from the undone one. Only the claim token can. The worker must not start a second run
of a job it still runs; the run it has adopts the new claim and its outcome is written once,
under that claim.

To undo the claim for certain, nothing may flush the WAL between the claim and the crash: the
WAL writer waits 10 s (``wal_writer_delay``, its maximum), the heartbeat comes every 10 s, and
the jobs write their ledger in another database (on the suite's shared server, which never
crashes). The jobs run until the test lets them go (an advisory lock in that database), once the
worker has claimed them again after the restart, however long recovery takes on a loaded
machine. The test checks that the claims were indeed undone: the claim that holds the finished
jobs was made after the restart.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import pytest

from tests import jobs_app
from tests.faults.cluster import Cluster
from tests.faults.ledger import log_transitions
from tests.helpers import WorkerProcess, count, eventually, rows, value

pytestmark = pytest.mark.faults

StartWorker = Callable[..., WorkerProcess]

JOBS = 4
LOCK_KEY = 4242


def test_a_claim_undone_by_a_crash_is_adopted_by_the_run_in_progress(
    cluster: Cluster, jobs_url: str, database_url: str, start_worker: StartWorker
) -> None:
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        admin.execute("SELECT pg_reload_conf()")
    with psycopg.connect(jobs_url, autocommit=True) as jobs_db:
        log_transitions(jobs_db)
    worker = start_worker(
        jobs_url,
        *("--concurrency", "10", "--poll-interval", "1"),
        env={"PGJOBS_HEARTBEAT_INTERVAL": "10"},
    )
    worker.wait_for_log("listening on")
    with psycopg.connect(database_url, autocommit=True) as ledger:
        ledger.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        ids = jobs_app.app.enqueue_many(
            jobs_app.waits_for_lock_elsewhere.call(LOCK_KEY, database_url) for _ in range(JOBS)
        )
        jobs_app.app.close()  # its pooled connections would not survive the crash
        eventually(lambda: count(ledger, "SELECT count(*) FROM ledger") > 0, interval=0.005)
        cluster.stop("immediate")
        cluster.start()
        with psycopg.connect(jobs_url, autocommit=True) as jobs_db:
            restarted: datetime = value(jobs_db, "SELECT pg_postmaster_start_time()")
            eventually(  # claimed again: attempted after the restart
                lambda: (
                    count(
                        jobs_db,
                        "SELECT count(*) FROM pgjobs.jobs WHERE attempted_at > %s",
                        restarted,
                    )
                    == JOBS
                ),
                timeout=60,
            )
            ledger.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            eventually(
                lambda: (
                    count(jobs_db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'")
                    == JOBS
                ),
                timeout=30,
            )
            jobs = rows(
                jobs_db,
                "SELECT id, attempt, attempted_at > %s, finished_at, claim_token IS NULL"
                " FROM pgjobs.jobs ORDER BY id",
                restarted,
            )
            finals = rows(
                jobs_db,
                "SELECT job_id, count(*) FROM transitions WHERE new_state = 'completed'"
                " GROUP BY job_id ORDER BY job_id",
            )
        runs = rows(
            ledger,
            "SELECT job_id, attempt, count(*) FILTER (WHERE event = 'start'),"
            "       count(*) FILTER (WHERE event = 'end'), max(at) FILTER (WHERE event = 'end')"
            " FROM ledger GROUP BY job_id, attempt ORDER BY job_id, attempt",
        )
    output = worker.output()
    report: dict[str, Any] = {"jobs": jobs, "runs": runs, "log": output[-4000:]}

    # the crash did undo the claims: the jobs ended under a claim made after the restart
    assert [(job_id, attempt, reclaimed) for job_id, attempt, reclaimed, _, _ in jobs] == [
        (job_id, 1, True) for job_id in ids
    ], report
    # one run per job: the re-claim was adopted by the run in progress, not run again
    assert [run[:4] for run in runs] == [(job_id, 1, 1, 1) for job_id in ids], report
    # its outcome was written once, after that run ended, and the token went with the claim
    assert finals == [(job_id, 1) for job_id in ids], report
    for (_, _, _, finished, token_cleared), (*_, ended) in zip(jobs, runs, strict=True):
        assert finished >= ended and token_cleared, report
    assert output.count("while this worker still runs it") == JOBS, report
    assert "Task exception was never retrieved" not in output, report
    assert "KeyError" not in output, report
    assert "acknowledgement changed nothing" not in output, report
    assert worker.process.poll() is None, report
