"""The statements of ``pgjobs bench`` alone: filling, emptying and measuring its own schema."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

from .._sql import CANCEL_REQUESTED, CLAIM_JOBS, LOST_WORKER

BENCH_DROP_SCHEMA = """
DROP SCHEMA IF EXISTS {schema} CASCADE
"""
"""``pgjobs bench`` runs in a schema of its own, dropped before and after."""

BENCH_FILL_AVAILABLE = """
INSERT INTO {schema}.jobs (name) SELECT 'pgjobs.bench.noop' FROM generate_series(1, %(rows)s::int)
"""

BENCH_FILL_FINISHED = """
INSERT INTO {schema}.jobs (name, state, attempt, attempted_at, finished_at)
SELECT 'pgjobs.bench.noop', 'completed', 1, now(), now() FROM generate_series(1, %(rows)s::int)
"""

BENCH_FILL_DISCARDED = """
INSERT INTO {schema}.jobs (name, state, attempt, max_attempts, args, attempted_at, finished_at,
                        errors)
SELECT 'pgjobs.bench.noop', 'discarded', 3, 3, jsonb_build_array(i, 'user' || i || '@example.org'),
       now() - make_interval(secs => i), now() - make_interval(secs => i),
       jsonb_build_array(jsonb_build_object('attempt', 3, 'class', 'builtins.RuntimeError',
                                            'message', 'failed', 'traceback', 'Traceback ...'))
FROM generate_series(1, %(rows)s::int) AS i
"""
"""``pages``: the dead set, a job a second back in time."""

BENCH_FILL_SCHEDULED = """
INSERT INTO {schema}.jobs (name, state, scheduled_at)
SELECT 'pgjobs.bench.noop', 'scheduled', now() + make_interval(secs => i)
FROM generate_series(1, %(rows)s::int) AS i
"""

BENCH_FILL_JOB_STATS = """
INSERT INTO {schema}.job_stats (minute, queue, name, outcome, slot, runs, seconds, buckets)
SELECT date_trunc('minute', now()) - make_interval(mins => m), 'default', 'pgjobs.bench.noop',
       outcome, 0, 1000 + m, m, array_fill(0::bigint, ARRAY[15])
FROM generate_series(0, 59) AS m, unnest(ARRAY['completed', 'retried']) AS outcome
"""
"""``pages``: an hour of run counts for the overview's graph."""

BENCH_VACUUM_ANALYZE = """
VACUUM ANALYZE {schema}.jobs
"""

BENCH_BARE_INSERT = """
INSERT INTO {schema}.jobs (name) VALUES ('pgjobs.bench.noop')
"""
"""The enqueue mode's baseline: the least a job row can cost, trigger included."""

BENCH_ENABLE_NOTIFY = """
ALTER TABLE {schema}.jobs ENABLE TRIGGER jobs_notify_inserted
"""

BENCH_DISABLE_NOTIFY = """
ALTER TABLE {schema}.jobs DISABLE TRIGGER jobs_notify_inserted
"""

BENCH_COUNT_UNFINISHED = """
SELECT (SELECT count(*) FROM {schema}.jobs WHERE state = 'available'),
       (SELECT count(*) FROM {schema}.jobs WHERE state = 'running')
"""
"""Available and running jobs, each counted on its own partial index."""

BENCH_EXPLAIN_CLAIM_JOBS = "EXPLAIN (ANALYZE, BUFFERS)" + CLAIM_JOBS
"""The plan of one claim as it ran (``ANALYZE`` claims the jobs for real)."""

BENCH_LIMIT_QUEUE = """
INSERT INTO {schema}.queues (name, concurrency) VALUES ('default', %(concurrency)s)
"""
"""``process --limit``: a concurrency limit on the bench queue, far above what runs."""


@dataclass(frozen=True)
class BenchQueries:
    """The statements of ``pgjobs bench`` alone, with the schema filled in."""

    bench_drop_schema: str
    bench_fill_available: str
    bench_fill_finished: str
    bench_vacuum_analyze: str
    bench_fill_discarded: str
    bench_fill_scheduled: str
    bench_fill_job_stats: str
    bench_bare_insert: str
    bench_enable_notify: str
    bench_disable_notify: str
    bench_count_unfinished: str
    bench_explain_claim_jobs: str
    bench_limit_queue: str


@functools.cache
def bench_queries_for(schema: str) -> BenchQueries:
    """The bench's statements for ``schema``."""
    texts = {f.name: globals()[f.name.upper()] for f in fields(BenchQueries)}
    return BenchQueries(
        **{
            name: text.format(
                schema=f'"{schema}"', lost_worker=LOST_WORKER, cancel_requested=CANCEL_REQUESTED
            )
            for name, text in texts.items()
        }
    )
