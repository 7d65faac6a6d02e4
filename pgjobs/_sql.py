"""Every SQL statement pgjobs runs, one named constant per operation.

This list is the storage contract: the runtime modules never write SQL of their own. Statements
use ``{schema}`` for the pgjobs schema (filled in by :func:`queries_for`) and ``%(name)s``
parameters. Every write to a job after its claim is fenced on ``state = 'running'``, the
claiming worker and the attempt, so a late write from a worker that lost the job changes 0 rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

INSERT_JOBS = """
INSERT INTO {schema}.jobs (queue, name, args, kwargs, priority, max_attempts, scheduled_at, state)
SELECT queue, name, args::jsonb, kwargs::jsonb, priority, max_attempts, run_at,
       CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END
FROM (
    SELECT r.*, coalesce(r.at, now() + make_interval(secs => r.delay)) AS run_at
    FROM unnest(%(queues)s::text[], %(names)s::text[], %(args)s::text[], %(kwargs)s::text[],
                %(priorities)s::int[], %(max_attempts)s::int[], %(ats)s::timestamptz[],
                %(delays)s::float8[]) WITH ORDINALITY
        AS r(queue, name, args, kwargs, priority, max_attempts, at, delay, position)
    ORDER BY r.position
) AS rows
RETURNING id
"""

CLAIM_JOBS = """
WITH next AS (
    SELECT picked.id
    FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS q(name, position)
    CROSS JOIN LATERAL (
        SELECT id FROM {schema}.jobs
        WHERE state = 'available' AND queue = q.name
        ORDER BY priority, scheduled_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS picked
    LIMIT %(limit)s
)
UPDATE {schema}.jobs AS j
SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), worker_id = %(worker_id)s
FROM next
WHERE j.id = next.id
RETURNING j.id, j.queue, j.name, j.args, j.kwargs, j.priority, j.attempt, j.max_attempts
"""

FINISH_JOBS = """
UPDATE {schema}.jobs AS j
SET state = o.state,
    scheduled_at = CASE WHEN o.state = 'retryable'
                        THEN now() + make_interval(secs => o.delay) ELSE j.scheduled_at END,
    finished_at = CASE WHEN o.state = 'retryable' THEN NULL ELSE now() END,
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(o.error || jsonb_build_object('at', now()))
             END,
    worker_id = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(states)s::text[], %(delays)s::float8[],
            %(errors)s::jsonb[]) AS o(id, attempt, state, delay, error)
WHERE j.id = o.id AND j.attempt = o.attempt AND j.state = 'running'
  AND j.worker_id = %(worker_id)s
RETURNING j.id
"""

RELEASE_JOBS = """
WITH released AS (
    UPDATE {schema}.jobs AS j
    SET state = 'available', attempt = j.attempt - 1, worker_id = NULL
    FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS r(id, attempt)
    WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running'
      AND j.worker_id = %(worker_id)s
    RETURNING j.id, j.queue
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM released) AS q
)
SELECT id FROM released
CROSS JOIN (SELECT count(*) FROM notified) AS forced  -- a CTE runs only when it is read
"""

PROMOTE_SCHEDULED_JOBS = """
WITH due AS (
    SELECT id FROM {schema}.jobs
    WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE {schema}.jobs AS j SET state = 'available' FROM due WHERE j.id = due.id
    RETURNING j.queue
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM promoted) AS q
)
SELECT (SELECT count(*) FROM promoted) AS promoted,
       (SELECT count(*) FROM notified) AS queues_notified,
       (SELECT extract(epoch FROM min(scheduled_at) - clock_timestamp())
          FROM {schema}.jobs
         WHERE state IN ('scheduled', 'retryable') AND scheduled_at > now()) AS next_due_in
"""

RETRY_JOB = """
WITH target AS (
    SELECT id, state FROM {schema}.jobs WHERE id = %(id)s FOR UPDATE
), retried AS (
    UPDATE {schema}.jobs AS j
    SET state = 'available', scheduled_at = now(), finished_at = NULL,
        max_attempts = greatest(j.max_attempts, j.attempt + 1)
    FROM target
    WHERE j.id = target.id AND target.state <> 'running'
    RETURNING j.id
)
SELECT target.state AS previous_state, (SELECT count(*) FROM retried) AS retried FROM target
"""

LIST_JOBS = """
SELECT id, queue, name, state, priority, attempt, max_attempts, args, kwargs,
       scheduled_at, inserted_at, attempted_at, finished_at, errors
FROM {schema}.jobs
WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
ORDER BY id DESC
LIMIT %(limit)s
"""

QUEUE_COUNTS = """
SELECT queue, state, jobs FROM {schema}.queue_counts ORDER BY queue, state
"""

SCHEMA_VERSION = """
SELECT version_num FROM {schema}.alembic_version
"""


@dataclass(frozen=True)
class Queries:
    """The statements above with the schema filled in."""

    insert_jobs: str
    claim_jobs: str
    finish_jobs: str
    release_jobs: str
    promote_scheduled_jobs: str
    retry_job: str
    list_jobs: str
    queue_counts: str
    schema_version: str
    jobs_channel: str
    """Channel notified with a queue's name when jobs become available in it."""
    scheduled_channel: str
    """Channel notified when a job is inserted for later, so stagers re-read the next due time."""


@functools.cache
def queries_for(schema: str) -> Queries:
    """The statements for ``schema`` (already validated as a plain lower-case identifier)."""
    texts = {
        f.name: globals()[f.name.upper()].format(schema=f'"{schema}"')
        for f in fields(Queries)
        if not f.name.endswith("_channel")
    }
    return Queries(**texts, jobs_channel=f"{schema}.jobs", scheduled_channel=f"{schema}.scheduled")
