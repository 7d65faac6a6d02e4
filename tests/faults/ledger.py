"""What really ran and what pgjobs recorded, read back for fault-test assertions.

The ``ledger`` table (see ``tests/jobs_app.py``) holds a ``start`` row and, for jobs that get that
far, an ``end`` row per attempt, written by the job through its own connection. A killed attempt
has no ``end`` row, so queries here never guess when it stopped; tests that kill processes compare
a later attempt's start with the kill time instead.

:func:`log_transitions` adds a trigger on ``jobs`` that logs how each run ended (finished, rescued
or handed back, and by whom), so a test can check that a job was finalized once and which worker
finalized it: the ``jobs`` row alone keeps only the last word.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from tests.helpers import count, value

TRANSITIONS_DDL = """
CREATE TABLE transitions (
    job_id     bigint NOT NULL,
    attempt    integer NOT NULL,
    new_state  text NOT NULL,
    worker_id  uuid NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION log_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO transitions (job_id, attempt, new_state, worker_id)
    VALUES (NEW.id, NEW.attempt, NEW.state, OLD.worker_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER log_transition AFTER UPDATE ON pgjobs.jobs
    FOR EACH ROW WHEN (OLD.state = 'running' AND NEW.state <> 'running')
    EXECUTE FUNCTION log_transition();
"""
"""Only ends of runs are logged (claims are not: they are many, and the ledger shows them).
``worker_id`` is the worker the job was taken from: the one that finished it, or the lost or
stopping worker it was rescued or handed back from."""

FINAL_STATES = ("completed", "discarded", "cancelled")


def db_now(db: psycopg.Connection[Any]) -> datetime:
    """The database's clock, which also stamps the ledger and the transitions."""
    now: datetime = value(db, "SELECT clock_timestamp()")
    return now


def log_transitions(db: psycopg.Connection[Any]) -> None:
    """Start logging, into ``transitions``, each end of a run: a job leaving ``running``."""
    db.execute(TRANSITIONS_DDL)


def overlapping_runs(db: psycopg.Connection[Any]) -> int:
    """Pairs of attempts of one job where the earlier one ended after the later one started.

    An attempt with no ``end`` row (killed) cannot count here.
    """
    return count(
        db,
        """
        SELECT count(*) FROM ledger a JOIN ledger b
          ON a.job_id = b.job_id AND a.attempt < b.attempt
         AND a.event = 'end' AND b.event = 'start'
         WHERE a.at > b.at
        """,
    )


def restarted_jobs(db: psycopg.Connection[Any]) -> int:
    """Jobs that started more than once."""
    return count(
        db,
        """
        SELECT count(*) FROM (SELECT job_id FROM ledger WHERE event = 'start'
                              GROUP BY job_id HAVING count(*) > 1) AS x
        """,
    )


def duplicated_effects(db: psycopg.Connection[Any]) -> int:
    """Jobs whose body ran to its end more than once."""
    return count(
        db,
        """
        SELECT count(*) FROM (SELECT job_id FROM ledger WHERE event = 'end'
                              GROUP BY job_id HAVING count(*) > 1) AS x
        """,
    )


def attempts_started_twice(db: psycopg.Connection[Any]) -> int:
    """(job, attempt) pairs with two ``start`` rows: one attempt handed to two runs."""
    return count(
        db,
        """
        SELECT count(*) FROM (SELECT 1 FROM ledger WHERE event = 'start'
                              GROUP BY job_id, attempt HAVING count(*) > 1) AS x
        """,
    )


def finalized_twice(db: psycopg.Connection[Any]) -> int:
    """Jobs that entered a final state more than once (needs :func:`log_transitions`)."""
    return count(
        db,
        """
        SELECT count(*) FROM (SELECT job_id FROM transitions WHERE new_state = ANY(%s)
                              GROUP BY job_id HAVING count(*) > 1) AS x
        """,
        list(FINAL_STATES),
    )


def running_jobs(db: psycopg.Connection[Any]) -> int:
    return count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'")
