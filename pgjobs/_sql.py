"""Every SQL statement pgjobs runs, one named constant per operation.

This list is the storage contract: the runtime modules never write SQL of their own. Statements
use ``{schema}`` for the pgjobs schema (filled in by :func:`queries_for`) and ``%(name)s``
parameters. Every write to a job after its claim is fenced on ``state = 'running'``, the
claiming worker, the attempt and the claim's token, so a late write from a worker that lost the
job, or from a run whose claim a database crash undid, changes 0 rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

INSERT_JOBS = """
INSERT INTO {schema}.jobs (queue, name, args, kwargs, priority, max_attempts, scheduled_at, state,
                        partition_key, trace_context, meta)
SELECT queue, name, args::jsonb, kwargs::jsonb, priority, max_attempts, run_at,
       CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END, partition_key,
       %(trace_context)s::jsonb, coalesce(meta::jsonb, '{{}}')
FROM (
    SELECT r.*, coalesce(r.at, now() + make_interval(secs => r.delay)) AS run_at
    FROM unnest(%(queues)s::text[], %(names)s::text[], %(args)s::text[], %(kwargs)s::text[],
                %(priorities)s::int[], %(max_attempts)s::int[], %(ats)s::timestamptz[],
                %(delays)s::float8[], %(partition_keys)s::text[], %(metas)s::text[])
        WITH ORDINALITY
        AS r(queue, name, args, kwargs, priority, max_attempts, at, delay, partition_key, meta,
             position)
    ORDER BY r.position
) AS rows
RETURNING id
"""
"""Every job of the batch carries the same ``trace_context``: its enqueue's (``NULL`` untraced).
A ``NULL`` meta (a job without any, most) stores ``{}``."""

INSERT_JOB = """
INSERT INTO {schema}.jobs (queue, name, args, kwargs, priority, max_attempts, scheduled_at, state,
                        partition_key, trace_context, meta)
SELECT %(queue)s, %(name)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(priority)s, %(max_attempts)s,
       run_at, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END, %(partition_key)s,
       %(trace_context)s::jsonb, coalesce(%(meta)s::jsonb, '{{}}')
FROM (SELECT coalesce(%(at)s::timestamptz, now() + make_interval(secs => %(delay)s)) AS run_at) AS t
RETURNING id
"""
"""One job: INSERT_JOBS for a single row, without the cost of unnesting arrays."""

RESERVE_JOB_IDS = """
WITH sequence AS MATERIALIZED (
    SELECT pg_get_serial_sequence('{schema}.jobs', 'id')::regclass AS name
)
SELECT now(), ARRAY(SELECT nextval(name) FROM sequence, generate_series(1, %(count)s))
"""
"""Ids for a COPY of many jobs, and the database time their delays count from. The sequence is
looked up once (``MATERIALIZED``): inlined, the look-up ran for every id and cost five times
more than the ids themselves."""

COPY_JOBS = """
COPY {schema}.jobs (id, queue, name, args, kwargs, priority, max_attempts, scheduled_at, state,
                  partition_key, trace_context)
FROM STDIN
"""
"""Large batches: several times faster than INSERT for thousands of rows. The insert trigger
notifies for COPY too. Jobs without meta (most) leave the column to its default, ``{}``."""

COPY_JOBS_WITH_META = """
COPY {schema}.jobs (id, queue, name, args, kwargs, priority, max_attempts, scheduled_at, state,
                  partition_key, trace_context, meta)
FROM STDIN
"""
"""COPY_JOBS for a batch in which some job has meta."""

_UNIQUE_ROWS = """
SELECT r.*, coalesce(r.at, now() + make_interval(secs => r.delay)) AS run_at,
       CASE WHEN r.period IS NULL THEN r.key
            ELSE r.key || ':' || floor(extract(epoch FROM now()) / r.period)::bigint
       END AS held_key
FROM """
"""The rows of a unique insert: INSERT_JOBS' and each job's key, held with its period's bucket
(from the database clock) when it has a period. From arrays or from the copied rows."""

_UNIQUE_WRITE = """
), written AS (
    INSERT INTO {schema}.jobs AS j (queue, name, args, kwargs, priority, max_attempts,
                                    scheduled_at, state, unique_key, unique_states, partition_key,
                                    trace_context, meta)
    SELECT queue, name, args::jsonb, kwargs::jsonb, priority, max_attempts, run_at,
           CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           held_key, string_to_array(states, ','), partition_key, %(trace_context)s::jsonb,
           coalesce(meta::jsonb, '{{}}')
    FROM rows ORDER BY position
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states)
    DO NOTHING
    RETURNING j.id, j.unique_key
)
SELECT rows.position, CASE WHEN written.id IS NULL THEN rows.held_key END, written.id
FROM rows LEFT JOIN written ON written.unique_key = rows.held_key
ORDER BY rows.position
"""

INSERT_UNIQUE_JOBS = (
    "WITH rows AS MATERIALIZED ("
    + _UNIQUE_ROWS
    + """unnest(%(queues)s::text[], %(names)s::text[], %(args)s::text[], %(kwargs)s::text[],
            %(priorities)s::int[], %(max_attempts)s::int[], %(ats)s::timestamptz[],
            %(delays)s::float8[], %(keys)s::text[], %(states)s::text[], %(periods)s::float8[],
            %(partition_keys)s::text[], %(metas)s::text[])
    WITH ORDINALITY AS r(queue, name, args, kwargs, priority, max_attempts, at, delay, key,
                         states, period, partition_key, meta, position)"""
    + _UNIQUE_WRITE
)
"""Unique jobs, one per key, where no job holds the key: the rows of held keys come back with a
NULL id and their key. ``ON CONFLICT`` waits for an uncommitted holder: if its transaction rolls
back, the row goes in; if it commits, nothing is written. Plain jobs never run this."""

INSERT_UNIQUE_JOB = """
WITH one AS (
    SELECT coalesce(%(at)s::timestamptz, now() + make_interval(secs => %(delay)s)) AS run_at,
           CASE WHEN %(period)s::float8 IS NULL THEN %(key)s::text
                ELSE %(key)s || ':' || floor(extract(epoch FROM now()) / %(period)s::float8)::bigint
           END AS held_key
), written AS (
    INSERT INTO {schema}.jobs AS j (queue, name, args, kwargs, priority, max_attempts,
                                    scheduled_at, state, unique_key, unique_states, partition_key,
                                    trace_context, meta)
    SELECT %(queue)s, %(name)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(priority)s,
           %(max_attempts)s, run_at, CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           held_key, string_to_array(%(states)s, ','), %(partition_key)s, %(trace_context)s::jsonb,
           coalesce(%(meta)s::jsonb, '{{}}')
    FROM one
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states)
    DO NOTHING
    RETURNING j.id
)
SELECT 1, CASE WHEN written.id IS NULL THEN one.held_key END, written.id
FROM one LEFT JOIN written ON true
"""
"""One unique job: INSERT_UNIQUE_JOBS for a single row, in two thirds of its time."""

CREATE_UNIQUE_ROWS = """
CREATE TEMP TABLE pgjobs_unique_rows (
    queue text, name text, args text, kwargs text, priority int, max_attempts int,
    at timestamptz, delay float8, key text, states text, period float8, partition_key text,
    meta text, position bigint
) ON COMMIT DROP;
SELECT current_setting('jit'), set_config('jit', 'off', true)
"""
"""For a unique batch of COPY_THRESHOLD jobs or more: its rows are copied here (in the caller's
transaction), then inserted by INSERT_COPIED_UNIQUE_JOBS. Binding them as arrays cost as much as
the insert itself. A raw COPY into ``jobs`` would be held by the unique index too, but could
not skip the held keys.

Returns the transaction's ``jit`` setting, turned off for the insert (RESTORE_JIT puts it back):
the insert's estimated cost passes every JIT threshold, and compiling cost a second of 100,000
jobs' six."""

COPY_UNIQUE_ROWS = """
COPY pg_temp.pgjobs_unique_rows FROM STDIN
"""

INSERT_COPIED_UNIQUE_JOBS = (
    "WITH rows AS MATERIALIZED (" + _UNIQUE_ROWS + "pg_temp.pgjobs_unique_rows AS r" + _UNIQUE_WRITE
)
"""INSERT_UNIQUE_JOBS from the copied rows."""

DROP_UNIQUE_ROWS = """
DROP TABLE pg_temp.pgjobs_unique_rows
"""
"""At once, so that a transaction can copy another batch."""

RESTORE_JIT = """
SELECT set_config('jit', %(jit)s, true)
"""

REPLACE_UNIQUE_JOBS = """
WITH rows AS MATERIALIZED (
    SELECT r.*, coalesce(r.at, now() + make_interval(secs => r.delay)) AS run_at
    FROM unnest(%(held_keys)s::text[], %(args)s::text[], %(kwargs)s::text[],
                %(priorities)s::int[], %(ats)s::timestamptz[], %(delays)s::float8[])
        AS r(held_key, args, kwargs, priority, at, delay)
), replaced AS (
    UPDATE {schema}.jobs AS j
    SET args = rows.args::jsonb, kwargs = rows.kwargs::jsonb, priority = rows.priority,
        scheduled_at = rows.run_at,
        state = CASE WHEN rows.run_at > now() THEN 'scheduled' ELSE 'available' END
    FROM rows
    WHERE j.unique_key = rows.held_key AND j.state = ANY (j.unique_states)
      AND j.state IN ('scheduled', 'available')
    RETURNING j.id, j.unique_key, j.queue, j.state
), notified AS (
    SELECT pg_notify(CASE WHEN state = 'available' THEN %(jobs_channel)s
                          ELSE %(scheduled_channel)s END,
                     CASE WHEN state = 'available' THEN queue ELSE '' END)
    FROM (SELECT DISTINCT queue, state FROM replaced) AS changed
)
SELECT unique_key, id FROM replaced
CROSS JOIN (SELECT count(*) FROM notified) AS forced  -- a CTE runs only when it is read
"""
"""Replace the arguments, priority and run time of the jobs holding these keys (with their
buckets) that have not started: a debounce. Run only for keys INSERT_UNIQUE_JOBS found held; a
running or retryable holder is left as it is. A replaced job is notified as an inserted one is
(the insert trigger sees only inserts), so a worker or stager sees its new run time at once.
An UPDATE rather than ``ON CONFLICT DO UPDATE``, which would need the enqueuer to read the
arguments of every job (``excluded`` columns are checked for SELECT)."""

FIND_UNIQUE_HOLDERS = """
SELECT unique_key, id FROM {schema}.jobs
WHERE unique_key = ANY(%(keys)s::text[]) AND state = ANY(unique_states)
"""
"""The jobs holding these keys (with their buckets), on the unique index: run only for the keys
a unique insert found held."""

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
    WHERE q.name <> ALL(ARRAY(SELECT l.name FROM {schema}.queues AS l  -- paused or limited
                              WHERE l.paused OR l.concurrency IS NOT NULL
                                 OR l.rate_limit IS NOT NULL))
    LIMIT %(limit)s
)
UPDATE {schema}.jobs AS j
SET state = 'running', attempt = j.attempt + 1, attempted_at = now(), worker_id = %(worker_id)s,
    claim_token = gen_random_uuid()
WHERE j.id = ANY(ARRAY(SELECT id FROM next))  -- an array: always the primary key, never a scan
  AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
RETURNING j.id, j.queue, j.name, j.args, j.kwargs, j.priority, j.attempt, j.max_attempts,
          j.claim_token, j.batch_id, j.trace_context, j.meta
"""
"""Claim up to ``limit`` jobs, queue by queue in the given order.

The claim commits without waiting for its WAL to reach the disk (``synchronous_commit`` off for
this transaction alone), which saves a disk flush between a job's enqueue and its start. That
risks nothing: the claim is visible at once, and only a crash of the database server before the
WAL writer's next flush (within ``wal_writer_delay``, 200 ms by default) can undo it. The job is
then ``available`` again with its attempt not counted, and may be claimed again, by the same
worker with the same attempt number. Each claim draws a new ``claim_token``, and every later write
is fenced on it, so a run under the undone claim can never write the outcome of the new one. (A
worker that claims a job it still runs keeps that run, under the new claim.) Outcomes are written
with the server's own setting.

Queues with a row in ``queues`` that is paused or limited are skipped (one scan of that small
table per claim, computed once): CLAIM_LIMITED_JOBS claims from the limited ones."""

FINISH_JOBS = """
UPDATE {schema}.jobs AS j
SET state = o.state,
    attempt = CASE WHEN o.state = 'scheduled' THEN j.attempt - 1 ELSE j.attempt END,
    scheduled_at = CASE WHEN o.state IN ('retryable', 'scheduled')
                        THEN now() + make_interval(secs => o.delay) ELSE j.scheduled_at END,
    finished_at = CASE WHEN o.state IN ('retryable', 'scheduled') THEN NULL ELSE now() END,
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(o.error || jsonb_build_object('at', now()))
             END,
    worker_id = NULL,
    claim_token = NULL,
    result = nullif(%(results)s::jsonb -> (o.n::int - 1), 'null')
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(tokens)s::uuid[], %(states)s::text[],
            %(delays)s::float8[], %(errors)s::jsonb[]) WITH ORDINALITY
     AS o(id, attempt, token, state, delay, error, n)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = o.id AND j.attempt = o.attempt
  AND j.claim_token = o.token AND j.state = 'running' AND j.worker_id = %(worker_id)s
RETURNING j.id
"""
"""Write attempt outcomes. ``scheduled`` is a snooze: back later, the attempt not counted.
``results`` is ``NULL`` when no job of the batch returned anything, else one JSON array with an
element per row (``null`` for none): one text to send and parse, where an array of JSON texts
costs the client a millisecond of quoting per hundred rows. Progress is left as it is: a report
older than the job's latest claim is an earlier attempt's, and readers leave it out
(:data:`_PROGRESS`), which costs this statement nothing."""

REPORT_PROGRESS = """
UPDATE {schema}.jobs AS j
SET progress = p.progress, progress_message = p.message, progress_at = now()
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(progress)s::real[], %(messages)s::text[])
     AS p(id, token, progress, message)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = p.id AND j.claim_token = p.token
  AND j.state = 'running' AND j.worker_id = %(worker_id)s
RETURNING j.id
"""
"""Store the latest progress of running jobs, fenced on their claim: a report from a run whose
claim was undone or rescued changes nothing."""

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Bounds of the run-time buckets of ``job_stats.buckets``, in seconds: the first bucket counts
runs up to the first bound, bucket ``i`` those above bound ``i - 1`` up to bound ``i``, the last
one the rest (Prometheus' ``le``)."""

_BUCKETS = range(1, len(DURATION_BUCKETS) + 2)
_BUCKET_SUMS = ", ".join(f"s.buckets[{i}] + excluded.buckets[{i}]" for i in _BUCKETS)
_BUCKET_TOTALS = ", ".join(f"sum(s.buckets[{i}])" for i in _BUCKETS)

ADD_JOB_STATS = (
    """
INSERT INTO {schema}.job_stats AS s (minute, queue, name, outcome, slot, runs, seconds, buckets)
SELECT date_trunc('minute', now()), t.queue, t.name, t.outcome, %(slot)s, t.runs, t.seconds,
       t.buckets::bigint[]
FROM unnest(%(queues)s::text[], %(names)s::text[], %(outcomes)s::text[], %(runs)s::bigint[],
            %(seconds)s::float8[], %(buckets)s::text[])
     AS t(queue, name, outcome, runs, seconds, buckets)
ON CONFLICT (minute, queue, name, outcome, slot) DO UPDATE
SET runs = s.runs + excluded.runs, seconds = s.seconds + excluded.seconds,
    buckets = ARRAY["""
    + _BUCKET_SUMS
    + """]
"""
)
"""Add a worker's tally of the outcomes it wrote since the last time to this minute's rows of its
``slot`` (one row per queue, job name and outcome; ``buckets`` as array literals)."""

CAN_COUNT_JOBS = """
SELECT has_table_privilege('{schema}.job_stats', 'INSERT')
   AND has_table_privilege('{schema}.job_stats', 'UPDATE') AS can_count
"""
"""Whether this role may add to ``job_stats`` (granted by ``pgjobs grants --worker``)."""

FOLD_JOB_STATS = (
    """
WITH folded AS (
    DELETE FROM {schema}.job_stats
    WHERE minute > '-infinity' AND minute < now() - make_interval(secs => %(keep)s)
    RETURNING *
)
INSERT INTO {schema}.job_stats AS s (minute, queue, name, outcome, slot, runs, seconds, buckets)
SELECT '-infinity', f.queue, f.name, f.outcome, 0, sum(f.runs), sum(f.seconds), ARRAY["""
    + ", ".join(f"sum(f.buckets[{i}])" for i in _BUCKETS)
    + """]
FROM folded AS f
GROUP BY f.queue, f.name, f.outcome
ON CONFLICT (minute, queue, name, outcome, slot) DO UPDATE
SET runs = s.runs + excluded.runs, seconds = s.seconds + excluded.seconds,
    buckets = ARRAY["""
    + _BUCKET_SUMS
    + """]
"""
)
"""Fold the minutes of ``job_stats`` older than ``keep`` seconds into the queue's, name's and
outcome's total row (``minute = '-infinity'``), in one statement: every sum stays the same."""

JOB_TOTALS = (
    """
SELECT s.queue, s.name, s.outcome, sum(s.runs)::float8 AS runs,
       sum(s.seconds)::float8 AS seconds, ARRAY["""
    + _BUCKET_TOTALS
    + """]::float8[] AS buckets
FROM {schema}.job_stats AS s
GROUP BY s.queue, s.name, s.outcome
"""
)
"""Every run counted since the table was made, per queue, job name and outcome."""

RELEASE_JOBS = """
WITH released AS (
    UPDATE {schema}.jobs AS j
    SET state = 'available', attempt = j.attempt - 1, worker_id = NULL, claim_token = NULL
    FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(tokens)s::uuid[]) AS r(id, attempt, token)
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.id = r.id AND j.attempt = r.attempt
      AND j.claim_token = r.token AND j.state = 'running'
      AND j.worker_id = %(worker_id)s
    RETURNING j.id, j.queue
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM released) AS q
)
SELECT id FROM released
CROSS JOIN (SELECT count(*) FROM notified) AS forced  -- a CTE runs only when it is read
"""

RELEASE_STRAY_JOBS = """
WITH released AS (
    UPDATE {schema}.jobs AS j
    SET state = 'available', attempt = j.attempt - 1, worker_id = NULL, claim_token = NULL
    WHERE j.state = 'running' AND j.worker_id = %(worker_id)s AND j.id <> ALL(%(known)s::bigint[])
    RETURNING j.id, j.queue
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM released) AS q
)
SELECT id FROM released CROSS JOIN (SELECT count(*) FROM notified) AS forced
"""
"""Hand back jobs claimed under this worker that it does not know of: a claim whose commit
landed but whose result was lost with the connection."""

LOCK_WORKER = """
SELECT pg_try_advisory_lock(hashtext(%(lock_namespace)s), %(lock_key)s)
"""
"""A session advisory lock that lives as long as the worker's session connection: when the
process dies, PostgreSQL drops the connection and the lock with it, which the sweep detects."""

REGISTER_WORKER = """
INSERT INTO {schema}.workers (id, hostname, pid, queues, concurrency, lock_key, expires_at)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(lock_key)s,
        now() + make_interval(secs => %(lease)s))
ON CONFLICT (id) DO UPDATE
SET lock_key = excluded.lock_key, heartbeat_at = now(), expires_at = excluded.expires_at
"""

LOST_WORKER = """(w.expires_at < now()
     OR (w.lock_key IS NOT NULL
         AND pg_try_advisory_xact_lock(hashtext(%(lock_namespace)s), w.lock_key)))"""
"""Worker ``w`` is lost: its lease expired, or its session lock is free (its process died).
Filled in for ``{lost_worker}`` below."""

CANCEL_REQUESTED = """(j.state = 'running' AND j.worker_id = %(worker_id)s
     AND j.cancel_requested_at IS NOT NULL)"""
"""Job ``j`` runs on this worker and its cancellation was requested. Filled in for
``{cancel_requested}`` below."""

HEARTBEAT = """
WITH beat AS (
    UPDATE {schema}.workers
    SET heartbeat_at = now(), expires_at = now() + make_interval(secs => %(lease)s)
    WHERE id = %(worker_id)s
    RETURNING id
), leader AS (
    INSERT INTO {schema}.leases AS l (name, worker_id, expires_at)
    SELECT 'leader', id, now() + make_interval(secs => %(lease)s) FROM beat
    ON CONFLICT (name) DO UPDATE
    SET worker_id = excluded.worker_id, expires_at = excluded.expires_at,
        acquired_at = CASE WHEN l.worker_id = excluded.worker_id THEN l.acquired_at ELSE now() END
    WHERE l.worker_id = excluded.worker_id
       OR l.expires_at < now()
       OR NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = l.worker_id)
       OR EXISTS (SELECT 1 FROM {schema}.workers AS w
                  WHERE w.id = l.worker_id AND w.lock_key IS NOT NULL
                    AND pg_try_advisory_xact_lock(hashtext(%(lock_namespace)s), w.lock_key))
    RETURNING l.worker_id
)
SELECT EXISTS (SELECT 1 FROM beat) AS registered,
       EXISTS (SELECT 1 FROM leader) AS leading,
       ARRAY(SELECT j.id FROM {schema}.jobs AS j WHERE {cancel_requested}) AS cancel_requested,
       CASE WHEN EXISTS (SELECT 1 FROM leader) THEN
           EXISTS (SELECT 1 FROM {schema}.workers AS w
                   WHERE w.id <> %(worker_id)s AND {lost_worker})
           OR EXISTS (SELECT 1 FROM {schema}.jobs AS j
                      WHERE j.state = 'running'
                        AND NOT EXISTS (SELECT 1 FROM {schema}.workers AS w
                                        WHERE w.id = j.worker_id))
       ELSE false END AS sweep_due,
       EXISTS (SELECT 1 FROM leader) AND %(vacuum_threshold)s > 0
           AND pg_stat_get_dead_tuples('{schema}.jobs'::regclass)
               > %(vacuum_threshold)s + 0.02 * pg_stat_get_live_tuples('{schema}.jobs'::regclass)
           AS vacuum_due
"""
"""One beat: extend this worker's lease, take or keep the leader lease, and list the running jobs
whose cancellation was requested (as CANCEL_REQUESTED_JOBS does: the fallback for a missed
notification). The leader lease passes on when its holder's lease expires or its session lock is
free (its process died). For the leader, ``sweep_due`` tells whether RESCUE_JOBS has anything to
do, so an idle leader makes one statement per beat, and ``vacuum_due`` whether the jobs table
holds more dead rows than ``vacuum_threshold`` plus 2 % of its live ones (autovacuum's rule, with
pgjobs' own numbers)."""

CANCEL_REQUESTED_JOBS = """
SELECT j.id FROM {schema}.jobs AS j WHERE {cancel_requested}
"""
"""This worker's running jobs whose cancellation was requested. A notification on the cancel
channel only wakes the worker to run this: anyone who can log in may NOTIFY, so its payload is
never trusted."""

VACUUM_JOBS = """
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) {schema}.jobs
"""
"""Remove dead rows and their index entries. Every claim leaves a dead entry at the head of
``jobs_available_idx``, and every later claim steps over it until a vacuum removes it: at 5,000
jobs/s a claim took 3 ms after 10 s and 17 ms after 50 s, before autovacuum's next visit (at most
once a minute). ``INDEX_CLEANUP ON``: the dead entries are the point, so never skip the indexes."""

RESCUE_JOBS = """
WITH lost AS (
    SELECT id, coalesce(%(reason)s, CASE WHEN expires_at < now()
                                         THEN 'its lease expired without a heartbeat'
                                         ELSE 'its database session ended' END) AS reason
    FROM {schema}.workers AS w
    WHERE CASE WHEN %(worker_id)s::uuid IS NOT NULL THEN id = %(worker_id)s::uuid
               ELSE id IS DISTINCT FROM %(sweeper_id)s::uuid AND {lost_worker}
          END
    FOR UPDATE SKIP LOCKED
), forgotten AS (
    DELETE FROM {schema}.workers AS w USING lost WHERE w.id = lost.id RETURNING w.id
), rescued AS (
    UPDATE {schema}.jobs AS j
    SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'available' END,
        finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt,
            'class', 'pgjobs.WorkerLost',
            'message', format('worker %%s was lost while running this job: %%s', j.worker_id,
                              coalesce((SELECT reason FROM lost WHERE lost.id = j.worker_id),
                                       %(reason)s, 'no worker is registered under its id')),
            'at', now())),
        worker_id = NULL,
        claim_token = NULL
    WHERE j.state = 'running'
      AND (j.worker_id IN (SELECT id FROM lost)
           OR CASE WHEN %(worker_id)s::uuid IS NOT NULL THEN j.worker_id = %(worker_id)s::uuid
                   ELSE NOT EXISTS (SELECT 1 FROM {schema}.workers AS w WHERE w.id = j.worker_id)
              END)
    RETURNING j.id, j.queue, j.state
), notified AS (
    SELECT pg_notify(%(channel)s, queue)
    FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'available') AS q
)
SELECT (SELECT count(*) FROM forgotten) AS workers_lost,
       (SELECT count(*) FROM rescued) AS jobs_rescued,
       (SELECT count(*) FROM rescued WHERE state = 'discarded') AS jobs_discarded,
       (SELECT count(*) FROM notified) AS queues_notified
"""
"""Give the jobs of lost workers back to the queue, or discard them if that was their last
attempt (a job that kills its worker). With ``worker_id`` set, that worker is lost (its
supervisor saw it die); otherwise every worker whose lease expired or whose session lock is free,
plus running jobs whose worker is not registered at all. Never based on how long a job runs.
Rescued jobs keep their ``scheduled_at``, so they run before jobs that came after them.
``sweeper_id`` is the sweeping worker: its own lock is re-entrant in its own session, so it would
look free."""

PRUNE_JOBS = """
WITH doomed AS (
    SELECT id FROM {schema}.jobs
    WHERE (state = 'completed' AND finished_at < now() - make_interval(secs => %(completed)s))
       OR (state = 'cancelled' AND finished_at < now() - make_interval(secs => %(cancelled)s))
       OR (state = 'discarded' AND finished_at < now() - make_interval(secs => %(discarded)s))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM {schema}.jobs AS j USING doomed WHERE j.id = doomed.id RETURNING 1
)
SELECT count(*) FROM deleted
"""

PRUNE_FINISHED_BATCHES = """
WITH deleted AS (
    DELETE FROM {schema}.batches AS b
    WHERE b.id = ANY(ARRAY(
        SELECT f.id FROM {schema}.batches AS f
        WHERE f.finished_at < now() - make_interval(secs => %(retain)s)
          AND NOT EXISTS (SELECT FROM {schema}.jobs AS j WHERE j.batch_id = f.id)
        LIMIT %(limit)s))
    RETURNING 1
)
SELECT count(*) FROM deleted
"""
"""Delete batches that finished more than ``retain`` seconds ago and have no job left (their
callbacks included): the prune of their jobs has passed. No row lock first (that would need
UPDATE on batches): a finished batch's row is locked only by an addition, which it refuses."""

CANCEL_JOB = """
SELECT {schema}.cancel_job(%(id)s) AS outcome
"""

DEREGISTER_WORKER = """
DELETE FROM {schema}.workers WHERE id = %(worker_id)s
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
    SELECT id, state, unique_key FROM {schema}.jobs WHERE id = %(id)s FOR UPDATE
), holder AS (
    SELECT h.id FROM {schema}.jobs AS h, target
    WHERE h.unique_key = target.unique_key AND h.state = ANY(h.unique_states) AND h.id <> target.id
), retried AS (
    UPDATE {schema}.jobs AS j
    SET state = 'available', scheduled_at = now(), finished_at = NULL, cancel_requested_at = NULL,
        max_attempts = greatest(j.max_attempts, j.attempt + 1), result = NULL
    FROM target
    WHERE j.id = target.id AND target.state <> 'running' AND NOT EXISTS (SELECT FROM holder)
    RETURNING j.queue
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM retried
)
SELECT target.state AS previous_state, (SELECT count(*) FROM retried) AS retried,
       (SELECT min(id) FROM holder) AS key_held_by, (SELECT count(*) FROM notified) AS notified
FROM target
"""
"""Put one job back to run now (not a running one, nor a unique job whose key another job holds
now), and wake the workers of its queue."""

RETRY_JOBS = """
WITH chosen AS (
    SELECT j.id, j.unique_key, j.state = ANY(j.unique_states) AS holds FROM {schema}.jobs AS j
    WHERE j.state = ANY(%(states)s::text[]) AND j.state <> 'running'
      AND (%(queues)s::text[] IS NULL OR j.queue = ANY(%(queues)s::text[]))
      AND (%(names)s::text[] IS NULL OR j.name = ANY(%(names)s::text[]))
    FOR UPDATE
), free AS (  -- of unique jobs, one per key (its holder, else the newest), if no other holds it
    SELECT c.id FROM chosen AS c WHERE c.unique_key IS NULL
    UNION ALL
    SELECT k.id FROM (SELECT DISTINCT ON (c.unique_key) c.id, c.unique_key FROM chosen AS c
                       WHERE c.unique_key IS NOT NULL
                       ORDER BY c.unique_key, c.holds DESC, c.id DESC) AS k
    WHERE NOT EXISTS (SELECT FROM {schema}.jobs AS h
                      WHERE h.unique_key = k.unique_key AND h.state = ANY(h.unique_states)
                        AND h.id <> k.id)
), retried AS (
    UPDATE {schema}.jobs AS j
    SET state = 'available', scheduled_at = now(), finished_at = NULL, cancel_requested_at = NULL,
        max_attempts = greatest(j.max_attempts, j.attempt + 1), result = NULL
    WHERE j.id = ANY(ARRAY(SELECT free.id FROM free)) AND j.state <> 'running'
    RETURNING j.queue
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM retried) AS q
)
SELECT (SELECT count(*) FROM retried) AS retried, (SELECT count(*) FROM notified) AS notified
"""
"""RETRY_JOB for every job in some states (never ``running``: a job claimed while this waits for
its row lock is re-checked and left to its worker), optionally only of some queues and names.
Unique jobs whose key another job holds are left as they are; of those sharing a key, one is
retried."""

GET_JOB = """
SELECT id, queue, name, state, priority, attempt, max_attempts, args, kwargs,
       scheduled_at, inserted_at, attempted_at, finished_at, worker_id::text AS worker_id,
       cancel_requested_at, unique_key, batch_id, partition_key, errors, meta, result,
       {progress}
FROM {schema}.jobs
WHERE id = %(id)s
"""

_PROGRESS = """CASE WHEN progress_at >= attempted_at THEN progress END AS progress,
       CASE WHEN progress_at >= attempted_at THEN progress_message END AS progress_message,
       CASE WHEN progress_at >= attempted_at THEN progress_at END AS progress_at"""
"""The progress columns as of the job's latest attempt: a report stored before that attempt was
claimed (``attempted_at``) is an earlier attempt's. A report is fenced on its claim, so none can
be stored after a later claim."""

GET_RESULT = """
SELECT state, result FROM {schema}.jobs WHERE id = %(id)s
"""

AWAIT_JOB = """
SELECT {schema}.await_job(%(id)s) AS state
"""
"""Mark a job awaited unless it has ended (migration 0020); its state, ``NULL`` for no such
job. The caller listens on the results channel first."""

BATCH_RESULTS = """
SELECT j.id, j.result
FROM {schema}.jobs AS j
WHERE j.batch_id = %(batch_id)s AND j.state = 'completed'
  AND j.id <> ALL(ARRAY(SELECT c.id FROM {schema}.batches AS b,
                        LATERAL (VALUES (b.success_job_id), (b.complete_job_id)) AS c(id)
                        WHERE b.id = %(batch_id)s AND c.id IS NOT NULL))
ORDER BY j.id
"""
"""The results of a batch's completed jobs (its callbacks left out), on the batch index."""

PRUNE_RESULTS = """
WITH cleared AS (
    UPDATE {schema}.jobs AS j SET result = NULL
    WHERE j.id = ANY(ARRAY(
            SELECT r.id FROM {schema}.jobs AS r
            WHERE r.result IS NOT NULL
              AND r.finished_at < now() - make_interval(secs => %(retain)s)
            LIMIT %(limit)s))
      AND j.result IS NOT NULL
    RETURNING 1
)
SELECT count(*) FROM cleared
"""
"""Clear results stored more than ``retain`` seconds ago, on the index of the rows that hold one
(``jobs_result_finished_idx``)."""

LIST_JOBS = """
SELECT id, queue, name, state, priority, attempt, max_attempts, args, kwargs,
       scheduled_at, inserted_at, attempted_at, finished_at, worker_id::text AS worker_id,
       cancel_requested_at, unique_key, batch_id, partition_key, errors, meta, result,
       {progress}
FROM {schema}.jobs
WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]))
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
ORDER BY id DESC
LIMIT %(limit)s
"""

LIST_WORKERS = """
SELECT w.id::text, w.hostname, w.pid, w.queues, w.concurrency, w.started_at, w.heartbeat_at,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age,
       coalesce(l.expires_at > now(), false) AS leader,
       (SELECT count(*) FROM {schema}.jobs AS j
         WHERE j.state = 'running' AND j.worker_id = w.id) AS running
FROM {schema}.workers AS w
LEFT JOIN {schema}.leases AS l ON l.name = 'leader' AND l.worker_id = w.id
ORDER BY w.started_at, w.id
"""

METRICS = """
WITH available AS MATERIALIZED (
    SELECT queue, count(*)::float8 AS jobs, min(scheduled_at) AS oldest
    FROM {schema}.jobs WHERE state = 'available' GROUP BY queue
)
SELECT 'jobs' AS metric, queue::text, 'available' AS state, jobs AS value FROM available
UNION ALL
SELECT 'latency', queue::text, NULL, greatest(extract(epoch FROM now() - oldest), 0)::float8
FROM available
UNION ALL
SELECT 'jobs', queue::text, 'running', count(*)::float8
FROM {schema}.jobs WHERE state = 'running' GROUP BY queue
UNION ALL
SELECT 'jobs', queue::text, state, count(*)::float8
FROM {schema}.jobs WHERE state IN ('scheduled', 'retryable') GROUP BY queue, state
UNION ALL
SELECT 'paused', name::text, NULL, paused::int::float8 FROM {schema}.queues
UNION ALL
SELECT 'held_back', name::text, NULL, held_back::int::float8 FROM {schema}.queues
UNION ALL
SELECT 'workers', NULL, NULL, count(*)::float8 FROM {schema}.workers WHERE expires_at > now()
UNION ALL
SELECT 'slots', NULL, NULL, coalesce(sum(concurrency), 0)::float8
FROM {schema}.workers WHERE expires_at > now()
"""
"""What ``pgjobs metrics`` exports, one row per sample: ``(metric, queue, state, value)``. Each
part reads one partial index's jobs (available, running, scheduled and retryable), never the
finished history, so a scrape costs the same on a table of 10 million completed jobs. The
available jobs are read once for their count and their latency."""

QUEUE_COUNTS = """
SELECT queue, state, jobs FROM {schema}.queue_counts ORDER BY queue, state
"""

LOCK_HOLDERS = """
SELECT a.pid, a.application_name, l.mode,
       extract(epoch FROM clock_timestamp() - coalesce(a.xact_start, a.query_start))::float8,
       left(regexp_replace(a.query, '[[:space:]]+', ' ', 'g'), 60)
FROM pg_locks AS l
JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = '{schema}.jobs'::regclass AND l.granted
  AND l.pid <> pg_backend_pid()
  AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
ORDER BY a.xact_start NULLS LAST
LIMIT 3
"""
"""Who holds a lock on the jobs table that keeps others from writing it (``LOCK TABLE``, a
running DDL statement), longest first: named in the error when pgjobs' bounded lock wait on the
table runs out."""

CLAIM_LIMITED_JOBS = """
SELECT * FROM {schema}.claim_limited_jobs_v3(%(queues)s::text[], %(limit)s, %(worker_id)s::uuid)
"""
"""Claim up to ``limit`` jobs from those of ``queues`` that are limited and not paused, within
their concurrency and rate limits (see ``claim_limited_jobs_v3`` in docs/schema.md). Returns the
columns of CLAIM_JOBS and ``free_in``; one row per queue with a NULL id carries ``free_in``, the
seconds until its first rate-limited partition that is full, before or after this claim, may
start a job again (NULL if none is). The starts of rate-limited queues are recorded pending,
for CONFIRM_STARTS."""

CONFIRM_STARTS = """
WITH pending AS (
    DELETE FROM {schema}.queue_starts WHERE job_id = ANY(%(ids)s::bigint[])
    RETURNING queue, partition
)
INSERT INTO {schema}.queue_starts (queue, partition, started_at)
SELECT queue, partition, clock_timestamp() FROM pending
"""
"""These rate-limited jobs have started (their code has begun): their pending starts are stamped
now, on the database's clock, after each job's own start, and count for one period from here.
A DELETE and an INSERT, which a worker role may do on ``queue_starts`` (no UPDATE); a start
already stamped (its job ended first, and a claim stamped it) is not found again."""

QUEUE_SETTINGS = """
SELECT name, paused, concurrency, rate_limit, rate_period, partition
FROM {schema}.queues WHERE name = ANY(%(queues)s::text[])
"""
"""A worker's view of its queues' settings (queues without a row are plain)."""

SET_QUEUE_LIMITS = """
WITH cleared AS (  -- without a rate, nothing trims its window any more
    DELETE FROM {schema}.queue_starts WHERE queue = %(name)s AND %(rate_limit)s::integer IS NULL
)
INSERT INTO {schema}.queues AS l (name, concurrency, rate_limit, rate_period, partition)
VALUES (%(name)s, %(concurrency)s, %(rate_limit)s, %(rate_period)s, %(partition)s)
ON CONFLICT (name) DO UPDATE
SET concurrency = excluded.concurrency, rate_limit = excluded.rate_limit,
    rate_period = excluded.rate_period, partition = excluded.partition, updated_at = now()
WHERE (l.concurrency, l.rate_limit, l.rate_period, l.partition)
      IS DISTINCT FROM (excluded.concurrency, excluded.rate_limit, excluded.rate_period,
                        excluded.partition)
RETURNING name
"""
"""Set a queue's limits (NULL clears one), never its pause; a row that already says so is left
alone, so that a worker's start does not wake every other worker. Clearing the rate deletes the
queue's recorded starts."""

PAUSE_QUEUE = """
SELECT {schema}.pause_queue(%(name)s)
"""

RESUME_QUEUE = """
SELECT {schema}.resume_queue(%(name)s)
"""

LIST_QUEUES = """
SELECT n.name, coalesce(l.paused, false) AS paused, l.concurrency, l.rate_limit, l.rate_period,
       l.partition, coalesce(l.held_back, false) AS held_back,
       (SELECT count(*) FROM {schema}.jobs AS j
         WHERE j.state = 'available' AND j.queue = n.name) AS available,
       (SELECT count(*) FROM {schema}.jobs AS j
         WHERE j.state = 'running' AND j.queue = n.name) AS running
FROM (SELECT l.name FROM {schema}.queues AS l
      UNION SELECT j.queue FROM {schema}.jobs AS j WHERE j.state IN ('available', 'running')
     ) AS n
LEFT JOIN {schema}.queues AS l ON l.name = n.name
ORDER BY n.name
"""
"""Every configured queue and every queue with available or running jobs."""

WAKE_HELD_QUEUES = """
SELECT {schema}.wake_held_queues(%(queues)s::text[])
"""
"""Jobs of these limited queues ended: a slot under their limit is free. Notify the jobs channel
for those whose latest claim held jobs back (``queues.held_back``), once the claims under way have
committed, so a limit that does not bind wakes nobody."""

DELETE_JOB = """
WITH target AS (
    SELECT id, state, batch_id FROM {schema}.jobs WHERE id = %(id)s FOR UPDATE
), deleted AS (
    DELETE FROM {schema}.jobs AS j USING target AS t
    WHERE j.id = t.id AND t.state <> 'running'
      AND (t.batch_id IS NULL OR t.state IN ('completed', 'discarded', 'cancelled'))
    RETURNING j.id
)
SELECT t.state, t.batch_id, (SELECT count(*) FROM deleted) AS deleted FROM target AS t
"""
"""Delete a job that is not running, and that has ended if it belongs to a batch (whose counts
wait for it). No row: there is no such job."""

RUN_JOB_NOW = """
WITH target AS (
    SELECT id, state FROM {schema}.jobs WHERE id = %(id)s FOR UPDATE
), moved AS (
    UPDATE {schema}.jobs AS j SET state = 'available', scheduled_at = now()
    FROM target AS t
    WHERE j.id = t.id AND t.state IN ('scheduled', 'retryable')
    RETURNING j.queue
), notified AS (
    SELECT pg_notify(%(channel)s, queue) FROM moved
)
SELECT t.state, (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM notified)
FROM target AS t
"""
"""Make a scheduled or retryable job available now, and wake its queue's workers. No row:
there is no such job."""

SCHEMA_VERSION = """
SELECT version_num FROM {schema}.alembic_version
"""

OLDEST_SERVED_REVISION = """
SELECT oldest_revision FROM {schema}.schema_compatibility
"""
"""Read only when the schema is newer than this pgjobs: the oldest revision whose code that
schema still serves."""

GRANT_MIGRATOR = """
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role};
"""
"""The migrator owns the schema, so ``pgjobs migrate`` creates and upgrades the tables in it and
owns them. Run before the first migration (a schema that exists already keeps its owner)."""

GRANT_ENQUEUER = """
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT INSERT, SELECT (id, unique_key, state, unique_states) ON {schema}.jobs TO {role};
GRANT USAGE ON SEQUENCE {schema}.jobs_id_seq TO {role};
GRANT INSERT, SELECT (id) ON {schema}.batches TO {role};
GRANT USAGE ON SEQUENCE {schema}.batches_id_seq TO {role};
GRANT EXECUTE ON FUNCTION {schema}.add_batch_jobs(bigint, text[], text[], text[], text[],
    integer[], integer[], timestamptz[], float8[], text[], jsonb),
    {schema}.add_batch_jobs_v2(bigint, text[], text[], text[], text[], integer[], integer[],
    timestamptz[], float8[], text[], jsonb, text[]), {schema}.seal_batch(bigint),
    {schema}.lock_batch(bigint), {schema}.count_added_jobs(bigint, integer) TO {role};
"""
"""Insert jobs and read back their ids (``RETURNING id``); a COPY of many jobs reserves its ids
with ``nextval`` on the jobs sequence first. A unique enqueue reads the id of the job holding its
key (``unique_key``, ``state``, ``unique_states``). No other column of jobs, nor any other table
or function. Unique jobs declared with ``replace=True`` also need ``UPDATE (args, kwargs,
priority, scheduled_at, state)`` and ``SELECT (queue)``, not granted here (docs/roles.md).
Batches: create them, add to them and seal them, through functions that run as the table's
owner: no UPDATE on batches, and no reading them. ``lock_batch`` and ``count_added_jobs``: the
previous release's statement adding to a batch, during a rolling upgrade."""

GRANT_WORKER = """
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.jobs, {schema}.workers TO {role};
GRANT SELECT, INSERT, UPDATE ON {schema}.leases TO {role};
GRANT SELECT ON {schema}.alembic_version, {schema}.schema_compatibility TO {role};
GRANT USAGE ON SEQUENCE {schema}.jobs_id_seq TO {role};
GRANT SELECT, INSERT, DELETE ON {schema}.batches TO {role};
GRANT USAGE ON SEQUENCE {schema}.batches_id_seq TO {role};
GRANT EXECUTE ON FUNCTION {schema}.add_batch_jobs(bigint, text[], text[], text[], text[],
    integer[], integer[], timestamptz[], float8[], text[], jsonb),
    {schema}.add_batch_jobs_v2(bigint, text[], text[], text[], text[], integer[], integer[],
    timestamptz[], float8[], text[], jsonb, text[]), {schema}.seal_batch(bigint),
    {schema}.lock_batch(bigint), {schema}.count_added_jobs(bigint, integer) TO {role};
GRANT SELECT, INSERT, UPDATE ON {schema}.queues TO {role};
GRANT SELECT, INSERT, DELETE ON {schema}.queue_starts TO {role};
-- PostgreSQL 17 and later, to let the leader vacuum the jobs table (else autovacuum does):
-- GRANT MAINTAIN ON {schema}.jobs TO {role};
GRANT SELECT, INSERT, UPDATE ON {schema}.cron_entries TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.job_stats TO {role};
GRANT EXECUTE ON FUNCTION {schema}.await_job(bigint) TO {role};
"""
"""Claim jobs and write their outcomes, promote due ones, rescue and prune (UPDATE, DELETE on
jobs); register, heartbeat and deregister (workers), take the leader lease (leases); check the
schema's revision at start. INSERT and the sequence: jobs that enqueue jobs. ``cancel_job()``
and ``pgjobs retry`` need no more than this. VACUUM needs the owner (or, from PostgreSQL 17,
MAINTAIN). Batches: jobs may create batches and add to their own; the triggers on jobs count
a batch's ended jobs and enqueue its callbacks as the table's owner; the leader deletes finished
batches once their jobs are pruned. ``cron_entries``: declare
the app's cron entries and enqueue their ticks; the SQL functions ``pause_cron()``,
``resume_cron()`` and ``run_cron()`` need no more. ``queues``: apply the limits the app
declares and pause or resume queues; ``queue_starts``: the sliding windows of rate-limited
queues; ``job_stats``: count the outcomes written, and fold old minutes (the leader).
``await_job()``: jobs that wait for other jobs (``App.wait_for``)."""

GRANT_INSPECTOR = """
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT ON {schema}.jobs, {schema}.workers, {schema}.leases, {schema}.queue_counts,
    {schema}.alembic_version, {schema}.schema_compatibility, {schema}.batches,
    {schema}.cron_entries, {schema}.queues,
    {schema}.queue_starts, {schema}.job_stats TO {role};
GRANT EXECUTE ON FUNCTION {schema}.await_job(bigint) TO {role};
"""
"""Read every table and view: ``pgjobs stats``, ``jobs``, ``workers``, dashboards, results;
wait for jobs to end (``App.wait_for``: ``await_job()``)."""


INSERT_BATCH = """
INSERT INTO {schema}.batches (description, on_success, on_complete)
VALUES (%(description)s, %(on_success)s::jsonb, %(on_complete)s::jsonb)
RETURNING id
"""
"""A new batch, not sealed: its callbacks cannot fire before ``seal_batch``."""

ADD_BATCH_JOBS = """
SELECT batch_found AS found, batch_finished_at AS finished_at, job_ids AS ids
FROM {schema}.add_batch_jobs_v2(
    %(batch_id)s::bigint, %(queues)s::text[], %(names)s::text[], %(args)s::text[],
    %(kwargs)s::text[], %(priorities)s::int[], %(max_attempts)s::int[], %(ats)s::timestamptz[],
    %(delays)s::float8[], %(partition_keys)s::text[], %(trace_context)s::jsonb, %(metas)s::text[])
"""
"""Add jobs to a batch unless it has finished (its callbacks fired): nothing is inserted then,
and ``finished_at`` says why. The function locks the batch row, which orders this against the
job that would finish the batch: either the new jobs count before the batch settles, or they are
refused after. It counts the jobs once for the statement, not row by row, as the tables' owner:
no caller can skip the count of a job or add to it."""

SEAL_BATCH = """
SELECT {schema}.seal_batch(%(id)s::bigint) AS found
"""

GET_BATCH = """
SELECT id, description, total, pending, total - pending - failed AS succeeded, failed,
       sealed_at IS NOT NULL AS sealed, success_job_id, complete_job_id, created_at, sealed_at,
       finished_at
FROM {schema}.batches
WHERE id = %(id)s
"""

LIST_BATCHES = """
SELECT id, description, total, pending, total - pending - failed AS succeeded, failed,
       sealed_at IS NOT NULL AS sealed, success_job_id, complete_job_id, created_at, sealed_at,
       finished_at
FROM {schema}.batches
ORDER BY id DESC
LIMIT %(limit)s
"""

_INSERT_CRON_ENTRIES = """
INSERT INTO {schema}.cron_entries AS c
    (name, job_name, queue, priority, max_attempts, args, kwargs, tick_kwarg, expression,
     timezone, catch_up, catch_up_window, last_tick_at)
SELECT e.name, e.job_name, e.queue, e.priority, e.max_attempts, e.args::jsonb, e.kwargs::jsonb,
       e.tick_kwarg, e.expression, e.timezone, e.catch_up, e.catch_up_window, now()
FROM unnest(%(name)s::text[], %(job_name)s::text[], %(queue)s::text[], %(priority)s::smallint[],
            %(max_attempts)s::int[], %(args)s::text[], %(kwargs)s::text[], %(tick_kwarg)s::text[],
            %(expression)s::text[], %(timezone)s::text[], %(catch_up)s::text[],
            %(catch_up_window)s::interval[])
    AS e(name, job_name, queue, priority, max_attempts, args, kwargs, tick_kwarg, expression,
         timezone, catch_up, catch_up_window)
"""
"""The rows of cron entries as declared in code (``_cron.encode_rows``)."""

UPSERT_CRON_ENTRIES = (
    _INSERT_CRON_ENTRIES
    + """ON CONFLICT (name) DO UPDATE
SET job_name = excluded.job_name, queue = excluded.queue, priority = excluded.priority,
    max_attempts = excluded.max_attempts, args = excluded.args, kwargs = excluded.kwargs,
    tick_kwarg = excluded.tick_kwarg, expression = excluded.expression,
    timezone = excluded.timezone, catch_up = excluded.catch_up,
    catch_up_window = excluded.catch_up_window, seen_at = now()
RETURNING c.name, c.last_tick_at
"""
)
"""Declare a worker's cron entries: the definition columns only, never ``paused`` or the last
tick. A new entry starts with ``last_tick_at = now()``, so no past tick runs on first sight."""

REGISTER_CRON_ENTRIES = (
    _INSERT_CRON_ENTRIES
    + """ON CONFLICT (name) DO NOTHING
RETURNING c.name
"""
)
"""Declare the cron entries that have no row yet, as a worker's start would (``pgjobs cron run``
before any worker ran); rows that exist are left as they are."""

ENQUEUE_CRON_TICKS = """
WITH entry AS (
    SELECT * FROM {schema}.cron_entries WHERE name = %(name)s FOR UPDATE
), due AS (
    SELECT t.tick
    FROM entry CROSS JOIN unnest(%(ticks)s::text[]) AS t(tick)
    WHERE NOT entry.paused
      AND (entry.last_tick_at IS NULL OR t.tick::timestamptz > entry.last_tick_at)
), inserted AS (
    INSERT INTO {schema}.jobs AS j (queue, name, args, kwargs, priority, max_attempts,
                                    unique_key, unique_states)
    SELECT e.queue, e.job_name, e.args,
           CASE WHEN e.tick_kwarg IS NULL THEN e.kwargs
                ELSE e.kwargs || jsonb_build_object(e.tick_kwarg, due.tick) END,
           e.priority, e.max_attempts,
           'cron:' || e.name || ':'
               || to_char(due.tick::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           ARRAY['scheduled', 'available', 'running', 'retryable', 'completed', 'discarded',
                 'cancelled']
    FROM entry AS e CROSS JOIN due
    ORDER BY due.tick::timestamptz
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states)
    DO NOTHING
    RETURNING j.id
), advanced AS (
    UPDATE {schema}.cron_entries AS c
    SET last_tick_at = %(through)s,
        last_job_id = coalesce((SELECT max(id) FROM inserted), c.last_job_id),
        last_enqueued_at = CASE WHEN EXISTS (SELECT 1 FROM inserted) THEN now()
                                ELSE c.last_enqueued_at END
    FROM entry
    WHERE c.name = entry.name
      AND (entry.last_tick_at IS NULL OR entry.last_tick_at < %(through)s)
    RETURNING c.last_tick_at
)
SELECT coalesce((SELECT last_tick_at FROM advanced), (SELECT last_tick_at FROM entry)),
       (SELECT count(*) FROM inserted)
"""
"""Enqueue an entry's due ticks and move its ``last_tick_at`` to ``through``, exactly once: the
row is locked first, so two workers with the same ticks serialise on it, and the second sees the
first's ``last_tick_at`` and inserts nothing. Each tick's job also holds the key ``cron:<entry>:
<tick>`` in every state (the unique jobs' index): the jobs table itself keeps one job per entry
and tick, for as long as it keeps the job. Only ticks after it are enqueued, and none while
the entry is paused (its ticks pass: resuming does not replay them). Returns the entry's
``last_tick_at`` after the statement (another worker's, if it was ahead) and the jobs enqueued."""

LIST_CRON = """
SELECT c.name, c.job_name, c.queue, c.priority, c.max_attempts, c.args, c.kwargs, c.tick_kwarg,
       c.expression, c.timezone, c.catch_up, c.catch_up_window, c.paused, c.last_tick_at,
       c.last_job_id, c.last_enqueued_at, c.declared_at, c.seen_at,
       CASE WHEN j.id IS NULL THEN NULL
            WHEN starts_with(coalesce(j.unique_key, ''), 'cron:' || c.name || ':') THEN 'tick'
            ELSE 'run now' END AS last_job_kind
FROM {schema}.cron_entries AS c
LEFT JOIN {schema}.jobs AS j ON j.id = c.last_job_id
ORDER BY c.name
"""
"""``last_job_kind``: whether a tick (its job holds the tick's key) or a run now enqueued the
last job; NULL if there is none, or it was deleted since."""

PAUSE_CRON = """
SELECT {schema}.pause_cron(%(name)s) AS found
"""

RESUME_CRON = """
SELECT {schema}.resume_cron(%(name)s) AS found
"""

RUN_CRON = """
SELECT {schema}.run_cron(%(name)s) AS job_id
"""


@dataclass(frozen=True)
class Queries:
    """The statements above with the schema filled in."""

    insert_jobs: str
    insert_job: str
    reserve_job_ids: str
    copy_jobs: str
    copy_jobs_with_meta: str
    claim_jobs: str
    finish_jobs: str
    report_progress: str
    add_job_stats: str
    can_count_jobs: str
    fold_job_stats: str
    job_totals: str
    release_jobs: str
    release_stray_jobs: str
    lock_worker: str
    register_worker: str
    heartbeat: str
    cancel_requested_jobs: str
    rescue_jobs: str
    prune_jobs: str
    prune_finished_batches: str
    vacuum_jobs: str
    cancel_job: str
    deregister_worker: str
    promote_scheduled_jobs: str
    retry_job: str
    retry_jobs: str
    get_job: str
    get_result: str
    await_job: str
    batch_results: str
    prune_results: str
    list_jobs: str
    list_workers: str
    queue_counts: str
    metrics: str
    lock_holders: str
    delete_job: str
    run_job_now: str
    schema_version: str
    oldest_served_revision: str
    insert_batch: str
    add_batch_jobs: str
    seal_batch: str
    get_batch: str
    list_batches: str
    claim_limited_jobs: str
    confirm_starts: str
    queue_settings: str
    set_queue_limits: str
    pause_queue: str
    resume_queue: str
    list_queues: str
    wake_held_queues: str
    jobs_channel: str
    """Channel notified with a queue's name when jobs become available in it."""
    scheduled_channel: str
    """Channel notified when a job is inserted for later, so stagers re-read the next due time."""
    cancel_channel: str
    """Channel notified with a job's id when its cancellation is requested while it runs. A wake-up
    only: workers read the table (anyone who can log in may NOTIFY)."""
    lock_namespace: str
    """Hashed into the first key of the workers' session advisory locks."""
    upsert_cron_entries: str
    register_cron_entries: str
    enqueue_cron_ticks: str
    list_cron: str
    pause_cron: str
    resume_cron: str
    run_cron: str
    insert_unique_jobs: str
    insert_unique_job: str
    replace_unique_jobs: str
    find_unique_holders: str
    create_unique_rows: str
    copy_unique_rows: str
    insert_copied_unique_jobs: str
    drop_unique_rows: str
    restore_jit: str
    queues_channel: str = ""
    """Channel notified with a queue's name when its row in ``queues`` changes."""
    results_channel: str = ""
    """Channel notified with a job's id when a job somebody awaits ends (migration 0020). A
    wake-up only: waiters read the table."""


@functools.cache
def queries_for(schema: str) -> Queries:
    """The statements for ``schema`` (already validated as a plain lower-case identifier)."""
    return Queries(
        **_texts(Queries, schema),
        jobs_channel=f"{schema}.jobs",
        scheduled_channel=f"{schema}.scheduled",
        cancel_channel=f"{schema}.cancel",
        lock_namespace=f"pgjobs.workers:{schema}",
        queues_channel=f"{schema}.queues",
        results_channel=f"{schema}.results",
    )


def _texts(statements: type[Queries], schema: str) -> dict[str, str]:
    """The statements named by the fields of ``statements``, for ``schema``."""
    return {
        f.name: globals()[f.name.upper()].format(
            schema=f'"{schema}"',
            lost_worker=LOST_WORKER,
            cancel_requested=CANCEL_REQUESTED,
            progress=_PROGRESS,
        )
        for f in fields(statements)
        if f.name.upper() in globals()
    }
