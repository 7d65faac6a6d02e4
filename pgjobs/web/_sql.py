"""The dashboard's statements: one per page part or action, with the schema filled in by
:func:`web_queries_for`. Every page reads the unfinished jobs through their partial indexes, the
finished ones a page at a time through ``jobs_finished_idx`` and ``jobs_discarded_cancelled_idx``,
and the run counts from ``job_stats``: no statement counts the finished history."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

NO_JIT = "SET LOCAL jit = off"
"""Before the statements of a page, in their transaction."""

COUNTED = ("scheduled", "available", "running", "retryable", "discarded", "cancelled")
"""The states whose jobs the overview counts; completed jobs are counted as runs, in
``job_stats``."""

STATE_COUNTS = """
SELECT s.state, coalesce(c.jobs, 0) AS jobs
FROM unnest(ARRAY['scheduled', 'retryable']) AS s(state)
LEFT JOIN (SELECT state, count(*) AS jobs
           FROM (SELECT state FROM {schema}.jobs WHERE state IN ('scheduled', 'retryable')
                 LIMIT %(cap)s) AS w
           GROUP BY state) AS c ON c.state = s.state
UNION ALL
""" + "\nUNION ALL\n".join(
    f"SELECT '{state}', count(*)\n"
    f"FROM (SELECT 1 FROM {{schema}}.jobs WHERE state = '{state}' LIMIT %(cap)s) AS c"
    for state in ("available", "running", "discarded", "cancelled")
)
"""The jobs of each state in :data:`COUNTED`, counted on its partial index up to ``cap`` (the
scheduled and retryable jobs, which share an index, up to ``cap`` together): a state with more
is estimated (ESTIMATE_JOBS), so the count costs the same at any size."""

ESTIMATE_JOBS = """
EXPLAIN (FORMAT JSON)
SELECT 1 FROM {schema}.jobs
WHERE state = %(state)s AND (%(queue)s::text IS NULL OR queue = %(queue)s)
"""
"""The planner's estimate of a state's jobs (of one queue, or all): its statistics, which
ANALYZE keeps (``jobs_state_queue_stats`` relates the two columns)."""

WORKERS_ALIVE = """
SELECT count(*) AS workers, coalesce(sum(concurrency), 0) AS slots
FROM {schema}.workers WHERE expires_at > now()
"""

RUNS_PER_MINUTE = """
SELECT s.minute,
       coalesce(sum(s.runs) FILTER (WHERE s.outcome = 'completed'), 0)::bigint AS completed,
       coalesce(sum(s.runs) FILTER (WHERE s.outcome IN ('retried', 'discarded')), 0)::bigint
           AS failed
FROM {schema}.job_stats AS s
WHERE s.minute > date_trunc('minute', now()) - make_interval(mins => %(minutes)s)
GROUP BY s.minute
ORDER BY s.minute
"""
"""Runs completed and failed per minute over the last ``minutes`` (the current one included)."""

RUN_TOTALS = """
SELECT s.outcome, sum(s.runs)::bigint AS runs FROM {schema}.job_stats AS s GROUP BY s.outcome
"""
"""Runs per outcome since ``job_stats`` was made, on every host."""

QUEUES = """
WITH RECURSIVE heads AS (
    (SELECT queue, priority, scheduled_at FROM {schema}.jobs WHERE state = 'available'
     ORDER BY queue, priority, scheduled_at, id LIMIT 1)
    UNION ALL
    SELECT n.* FROM heads AS h, LATERAL (
        SELECT j.queue, j.priority, j.scheduled_at FROM {schema}.jobs AS j
        WHERE j.state = 'available' AND (j.queue, j.priority) > (h.queue, h.priority)
        ORDER BY j.queue, j.priority, j.scheduled_at, j.id LIMIT 1
    ) AS n
), available AS (
    SELECT queue, min(scheduled_at) AS oldest FROM heads GROUP BY queue
), running AS MATERIALIZED (
    SELECT queue, count(*) AS jobs FROM {schema}.jobs WHERE state = 'running' GROUP BY queue
), names AS (
    SELECT name FROM {schema}.queues
    UNION SELECT queue FROM available
    UNION SELECT queue FROM running
)
SELECT n.name, coalesce(l.paused, false) AS paused, l.concurrency, l.rate_limit, l.rate_period,
       l.partition, coalesce(l.held_back, false) AS held_back,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.jobs AS j
                              WHERE j.state = 'available' AND j.queue = n.name
                              LIMIT %(cap)s) AS c) AS available,
       coalesce(r.jobs, 0) AS running,
       greatest(extract(epoch FROM now() - a.oldest), 0)::float8 AS latency
FROM names AS n
LEFT JOIN {schema}.queues AS l ON l.name = n.name
LEFT JOIN available AS a ON a.queue = n.name
LEFT JOIN running AS r ON r.queue = n.name
ORDER BY n.name
"""
"""Every configured queue and every queue with available or running jobs: its settings, its
available jobs counted up to ``cap``, its running jobs and its latency (how long its oldest
available job has waited). The oldest is found by skipping through ``jobs_available_idx`` from
one (queue, priority) to the next, the first job of each being its oldest: a few index probes
however many jobs wait."""

_FILTERS = """(%(queue)s::text IS NULL OR queue = %(queue)s::text)
       AND (%(name)s::text IS NULL OR name = %(name)s::text)
       AND (%(search)s::text IS NULL OR strpos(args::text || ' ' || kwargs::text,
                                               %(search)s::text) > 0)"""

_SCAN = (
    """
SELECT {keys}, """
    + _FILTERS
    + """ AS hit
FROM {{schema}}.jobs
WHERE state = %(state)s{after}
ORDER BY {order}
LIMIT %(scan)s
"""
)
"""The next ``scan`` jobs of a state in the order of an index (``keys``, the last of them
``id``), each with whether it matches the filters: a page reads a bounded stretch of the index
however rare its matches."""


def _scan(keys: str, order: str, beyond: str) -> tuple[str, str]:
    """The scan from the start of the order, and the one after the keys ``%(after0)s``…"""
    cursor = ", ".join(f"%(after{i})s" for i in range(len(keys.split(","))))
    after = f"\n  AND ({keys}) {beyond} ({cursor})"
    return (
        _SCAN.format(keys=keys, order=order, after=""),
        _SCAN.format(keys=keys, order=order, after=after),
    )


SCAN_AVAILABLE, SCAN_AVAILABLE_AFTER = _scan(
    "queue, priority, scheduled_at, id", "queue, priority, scheduled_at, id", ">"
)
"""Available jobs in the order workers claim them (``jobs_available_idx``)."""

SCAN_WAITING, SCAN_WAITING_AFTER = _scan("scheduled_at, id", "scheduled_at, id", ">")
"""Scheduled or retryable jobs, the next due first (``jobs_scheduled_idx``)."""

SCAN_RUNNING, SCAN_RUNNING_AFTER = _scan("attempted_at, id", "attempted_at, id", ">")
"""Running jobs, the longest running first."""

SCAN_FINISHED, SCAN_FINISHED_AFTER = _scan("finished_at, id", "finished_at DESC, id DESC", "<")
"""Completed, discarded or cancelled jobs, the latest ended first (``jobs_finished_idx``,
``jobs_discarded_cancelled_idx``)."""

JOBS_BY_ID = """
SELECT id, queue, name, state, priority, attempt, max_attempts, args, kwargs, scheduled_at,
       inserted_at, attempted_at, finished_at, worker_id::text AS worker_id, unique_key,
       batch_id, errors -> -1 ->> 'message' AS last_error
FROM {schema}.jobs
WHERE id = ANY(%(ids)s::bigint[])
"""

RUNNING_JOBS = """
SELECT id, queue, name, attempt, attempted_at, worker_id::text AS worker_id
FROM {schema}.jobs
WHERE state = 'running'
ORDER BY attempted_at, id
LIMIT %(limit)s
"""
"""The jobs running now, for the workers page."""


@dataclass(frozen=True)
class WebQueries:
    """The statements above with the schema filled in."""

    state_counts: str
    estimate_jobs: str
    workers_alive: str
    runs_per_minute: str
    run_totals: str
    queues: str
    scan_available: str
    scan_available_after: str
    scan_waiting: str
    scan_waiting_after: str
    scan_running: str
    scan_running_after: str
    scan_finished: str
    scan_finished_after: str
    jobs_by_id: str
    running_jobs: str


@functools.cache
def web_queries_for(schema: str) -> WebQueries:
    """The dashboard's statements for ``schema`` (already validated)."""
    texts = {f.name: globals()[f.name.upper()] for f in fields(WebQueries)}
    return WebQueries(**{name: text.format(schema=f'"{schema}"') for name, text in texts.items()})
