"""The supervisor's restarts under churn: killed children's jobs must not wait on back-off.

One child of ``pgjobs worker --processes 3`` is SIGKILLed every 2 s while jobs of 0.5-1 s flow at
half the three children's capacity. The supervisor releases a dead child's jobs at once, so they
run again as soon as a live child (or the restarted one) has a free slot; they wait long only
when no child is alive, which a back-off that lets every slot wait at once allows. The measure is
the time from each kill to the next start, in the ledger, of each job released from the killed
child.

Sizes: by default 60 s of churn (30 kills), ``PGJOBS_FAULTS=full`` 180 s (90 kills). A shorter
run proves little: a back-off that grows while children die young needs a minute of kills to
leave every slot waiting (simulated: in 20 s almost never, in 60 s nineteen times in twenty). The
figures are printed (``pytest -s``). This needs no server of its own: it runs on the suite's
per-test database.
"""

from __future__ import annotations

import math
import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._supervisor import restart_delay
from tests import jobs_app
from tests.faults.ledger import db_now, log_transitions
from tests.helpers import WorkerProcess, count, eventually, process_state, rows

FULL = os.environ.get("PGJOBS_FAULTS") == "full"

CHURN_SECONDS = 180.0 if FULL else 60.0
KILL_EVERY = 2.0
PROCESSES = 3
CONCURRENCY = 4
JOB_SECONDS = (0.5, 1.0)
OFFERED = PROCESSES * CONCURRENCY / statistics.mean(JOB_SECONDS) / 2
"""Jobs per second: half of what the three children can run, so two can carry the load."""
RUNNING_AGAIN_P99 = 5.0
"""Seconds from a kill to its released jobs running again, at the 99th percentile."""
TIMINGS = ("--heartbeat-interval", "0.5", "--lease-timeout", "3", "--poll-interval", "0.5")


@pytest.mark.parametrize(
    ("young_deaths", "killed_from_outside", "others_alive", "delay"),
    [
        (0, False, True, 0.0),  # it lived long: a fresh start
        (1, False, True, 0.0),  # the first young death
        (1, False, False, 0.0),
        (2, False, True, 0.5),
        (3, True, True, 1.0),
        (5, False, False, 4.0),  # a crash loop of its own waits even with every slot waiting
        (6, False, True, 8.0),
        (7, False, True, 10.0),
        (40, True, True, 10.0),
        (40, True, False, 0.0),  # killed while no other child lives: at once, whatever the count
    ],
)
def test_restart_delay(
    young_deaths: int, killed_from_outside: bool, others_alive: bool, delay: float
) -> None:
    assert (
        restart_delay(
            young_deaths, killed_from_outside=killed_from_outside, others_alive=others_alive
        )
        == delay
    )


def live_children(supervisor: WorkerProcess) -> list[int]:
    """Pids of the supervisor's children that are alive (not yet reaped zombies excluded)."""
    return [pid for pid in supervisor.children() if process_state(pid) not in ("Z", "X")]


def enqueue_steadily(app: pgjobs.App, stop: threading.Event) -> int:
    """Enqueue jobs of 0.5-1 s at :data:`OFFERED` per second until ``stop``; how many."""
    enqueued = 0
    began = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - began) * OFFERED) - enqueued
        if due > 0:
            app.enqueue_many(
                jobs_app.sleepy.call(random.uniform(*JOB_SECONDS), "churn") for _ in range(due)
            )
            enqueued += due
        stop.wait(0.05)
    return enqueued


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


@pytest.mark.fresh_database
@pytest.mark.faults
def test_jobs_of_a_child_killed_every_two_seconds_run_again_within_five_seconds(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: Callable[..., WorkerProcess]
) -> None:
    log_transitions(db)
    db.execute("CREATE TABLE kills (pid int, worker_id uuid, killed_at timestamptz)")
    supervisor = worker_process(
        "--processes", str(PROCESSES), "--concurrency", str(CONCURRENCY), *TIMINGS
    )
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.workers") == PROCESSES, 30)
    stop = threading.Event()
    enqueued: list[int] = []
    enqueuer = threading.Thread(target=lambda: enqueued.append(enqueue_steadily(app, stop)))
    enqueuer.start()
    try:
        began = time.monotonic()
        for k in range(int(CHURN_SECONDS / KILL_EVERY)):
            pause = began + KILL_EVERY * (k + 1) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            # any child, running jobs or still starting; when none is alive, the next to start
            while True:
                pid = random.choice(eventually(lambda: live_children(supervisor), 30))
                killed_at = db_now(db)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # it died (and was reaped) since it was listed
                break
            db.execute(
                "INSERT INTO kills SELECT %s, (SELECT id FROM pgjobs.workers WHERE pid = %s), %s",
                (pid, pid, killed_at),
            )
    finally:
        stop.set()
        enqueuer.join()

    def all_completed() -> bool:
        states = dict(rows(db, "SELECT state, count(*) FROM pgjobs.jobs GROUP BY state"))
        assert states == {"completed": enqueued[0]}, states
        return True

    eventually(all_completed, 120, interval=0.2)
    # each job given back from a killed child, and how long after the kill it started again
    waits = [
        float(seconds)
        for (seconds,) in rows(
            db,
            """
            SELECT extract(epoch FROM
                (SELECT min(l.at) FROM ledger l
                 WHERE l.job_id = t.job_id AND l.event = 'start' AND l.at > k.killed_at)
                - k.killed_at)
            FROM kills k JOIN transitions t
              ON t.worker_id = k.worker_id AND t.new_state = 'available'
            """,
        )
    ]
    kills = count(db, "SELECT count(*) FROM kills")
    kills_with_jobs = count(
        db,
        "SELECT count(DISTINCT worker_id) FROM transitions"
        " WHERE worker_id IN (SELECT worker_id FROM kills)",
    )
    p50, p99 = statistics.median(waits), percentile(waits, 0.99)
    print(
        f"\nrestarts under churn: {kills} kills of {PROCESSES} children every {KILL_EVERY:.0f} s"
        f" ({kills_with_jobs} of them running jobs),"
        f" {enqueued[0]} jobs at {OFFERED:.0f}/s; {len(waits)} jobs given back; kill -> running"
        f" again: p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(waits):.2f} s"
    )
    assert waits, "no kill found a child running jobs"
    assert p99 <= RUNNING_AGAIN_P99, sorted(waits)
