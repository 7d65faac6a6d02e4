"""The statements of :mod:`pgjobs.testing` alone: moving a test database's clock, and finding a
killed worker's sessions."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

ADVANCE_JOBS = """
UPDATE {schema}.jobs
SET scheduled_at = scheduled_at - %(delta)s::interval
WHERE state IN ('scheduled', 'retryable')
"""
"""Move waiting jobs' due time back by ``delta``: start times, retries' back-off, snoozes."""

CRON_LAST_TICKS = """
SELECT name, last_tick_at FROM {schema}.cron_entries WHERE name = ANY (%(names)s::text[])
"""
"""The last tick handled of each of the cron entries ``names``."""

TERMINATE_WORKER_SESSIONS = """
SELECT w.id, count(pg_terminate_backend(a.pid, %(wait_ms)s))
FROM {schema}.workers AS w
LEFT JOIN pg_stat_activity AS a
       ON a.datname = current_database()
      AND a.application_name LIKE 'pgjobs-worker:' || left(w.id::text, 8) || ':%%'
WHERE w.pid = %(pid)s
GROUP BY w.id
"""
"""The id of the worker registered with process id ``pid``, after ending (and waiting up to
``wait_ms`` for) its database sessions; no row if no worker has that pid."""


@dataclass(frozen=True)
class Queries:
    advance_jobs: str
    cron_last_ticks: str
    terminate_worker_sessions: str


@functools.cache
def queries_for(schema: str) -> Queries:
    """The statements above for ``schema`` (a validated plain identifier)."""
    return Queries(
        **{f.name: globals()[f.name.upper()].format(schema=f'"{schema}"') for f in fields(Queries)}
    )
