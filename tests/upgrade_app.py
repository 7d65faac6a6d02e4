"""Jobs of every kind for tests/test_rolling_upgrade.py, importable by this release and by the
previous one: plain, concurrency-limited, rate-limited, unique, batches with a callback, and a
cron entry every second. Each records its start and end in the ``ledger`` table with its
process id, so the test sees which worker (of which release) ran it."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import pgjobs
from tests.ledger import Ledger

app = pgjobs.App()
app.queue("limited", concurrency=2)
app.queue("rated", rate=(50, timedelta(seconds=1)))

QUEUES = "default,limited,rated"
"""Every queue of this app, for ``--queues``."""

ledger = Ledger(app)


def record(label: str, event: str) -> None:
    ledger.record(label, event, os.getpid())


@app.job(name="upgrade.plain")
def plain(label: str) -> None:
    record(label, "start")


@app.job(name="upgrade.limited", queue="limited")
def limited(label: str) -> None:
    record(label, "start")
    time.sleep(0.05)
    record(label, "end")


@app.job(name="upgrade.rated", queue="rated")
def rated(label: str) -> None:
    record(label, "start")


@app.job(
    name="upgrade.unique",
    # held until the end, so that the second enqueue of a round is a duplicate even when the
    # first job has already completed (a key held only while waiting or running would let a
    # fast worker free it between the two enqueues)
    unique=pgjobs.Unique(states=("scheduled", "available", "running", "retryable", "completed")),
)
def unique(label: str) -> None:
    record(label, "start")


@app.job(name="upgrade.member")
def member(label: str) -> None:
    record(label, "start")


@app.job(name="upgrade.batch_done")
def batch_done(label: str) -> None:
    record(label, "start")


@app.job(name="upgrade.tick", cron="* * * * * *")
def tick() -> None:
    record("tick", "start")


def enqueue_round(label: str) -> None:
    """Enqueue one round of every kind of job, labelled ``label``: 3 plain, 4 limited, 3 rated,
    one unique job enqueued twice, and a batch of 3 with an ``on_complete`` callback."""
    for i in range(3):
        plain.enqueue(f"{label}/plain/{i}")
        rated.enqueue(f"{label}/rated/{i}")
    for i in range(4):
        limited.enqueue(f"{label}/limited/{i}")
    unique.enqueue(f"{label}/unique")
    unique.enqueue(f"{label}/unique")
    with app.batch(on_complete=batch_done.call(f"{label}/batch_done")) as batch:
        batch.enqueue_many(member.call(f"{label}/member/{i}") for i in range(3))
    app.close()


EXPECTED_STARTS = 3 + 4 + 3 + 1 + 3 + 1
"""Jobs one round runs, each once."""

if __name__ == "__main__":
    enqueue_round(sys.argv[1])
