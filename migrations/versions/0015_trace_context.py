"""The W3C trace context of the enqueue a job came from, for tracing across to the worker.

``jobs.trace_context`` holds the propagator's carrier (``{"traceparent": ..., "tracestate":
...}``) written at enqueue when the app is instrumented (``pgjobs.tracing``), and ``NULL``
otherwise; it is never changed after the insert, so every attempt of a job joins its enqueue's
trace. The claims return it: ``claim_limited_jobs()`` (0011's function) gains the column before
``free_in``, which changes its result type, so it is dropped and created again. A batch's
callbacks carry the context of the batch's creation: ``settle_batch()`` inserts their
template's ``trace_context`` key.

Revision ID: 0015
Revises: 0014
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import context, op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(f"ALTER TABLE {s}.jobs ADD COLUMN trace_context jsonb")
    op.execute(f"DROP FUNCTION {s}.claim_limited_jobs(text[], integer, uuid)")
    op.execute(claim_function(schema))
    op.execute(settle_function(schema, traced=True))


def claim_function(schema: str) -> str:
    """``claim_limited_jobs()`` as this revision defines it: 0011's, with ``trace_context``
    returned before ``free_in``."""
    s = f'"{schema}"'
    return f"""
CREATE OR REPLACE FUNCTION {s}.claim_limited_jobs(
    queue_names text[], claim_limit integer, worker uuid)
RETURNS TABLE (id bigint, queue text, name text, args jsonb, kwargs jsonb, priority smallint,
               attempt integer, max_attempts integer, claim_token uuid, batch_id bigint,
               trace_context jsonb, free_in float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q record;
    now_ timestamptz;
    taken integer := 0;
    wanted integer;
    returned integer;
    room integer;
    started integer;
    oldest timestamptz;
    waits float8;
    held boolean;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    -- one lock per limited queue, in a fixed order, held to the commit: for every worker, the
    -- counts below and the claim are one step
    PERFORM pg_advisory_xact_lock(hashtext('{schema}.queues'), hashtext(l.name))
       FROM (SELECT l.name FROM {s}.queues AS l
              WHERE l.name = ANY(queue_names) AND NOT l.paused
                AND (l.concurrency IS NOT NULL OR l.rate_limit IS NOT NULL)
              ORDER BY l.name) AS l;
    -- each later statement takes a fresh snapshot: it sees every claim committed before the lock
    FOR q IN SELECT l.* FROM unnest(queue_names) WITH ORDINALITY AS u(name, position)
              JOIN {s}.queues AS l ON l.name = u.name
             WHERE NOT l.paused AND (l.concurrency IS NOT NULL OR l.rate_limit IS NOT NULL)
             ORDER BY u.position
    LOOP
        EXIT WHEN taken >= claim_limit;
        wanted := claim_limit - taken;
        now_ := clock_timestamp();
        waits := NULL;
        IF q.rate_limit IS NOT NULL THEN
            DELETE FROM {s}.queue_starts AS st
             WHERE st.queue = q.name
               AND st.started_at <= now_ - make_interval(secs => q.rate_period);
        END IF;
        IF q.partition IS NULL THEN
            -- the whole queue is one partition: its room, then the plain claim within it
            room := wanted;
            IF q.concurrency IS NOT NULL THEN
                room := least(room, q.concurrency - (
                    SELECT count(*) FROM {s}.jobs AS j
                     WHERE j.state = 'running' AND j.queue = q.name)::integer);
            END IF;
            IF q.rate_limit IS NOT NULL THEN
                SELECT count(*), min(st.started_at) INTO started, oldest
                  FROM {s}.queue_starts AS st WHERE st.queue = q.name;
                room := least(room, q.rate_limit - started);
                IF started >= q.rate_limit THEN
                    waits := extract(epoch FROM oldest - now_)::float8 + q.rate_period;
                END IF;
            END IF;
            returned := 0;
            IF room > 0 THEN
                RETURN QUERY
                WITH updated AS (
                    UPDATE {s}.jobs AS j
                       SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
                           worker_id = worker, claim_token = gen_random_uuid()
                     WHERE j.id = ANY(ARRAY(
                            SELECT n.id FROM {s}.jobs AS n
                             WHERE n.state = 'available' AND n.queue = q.name
                             ORDER BY n.priority, n.scheduled_at, n.id
                             LIMIT room
                               FOR UPDATE SKIP LOCKED))
                    RETURNING j.id, j.queue, j.name, j.args, j.kwargs, j.priority, j.attempt,
                              j.max_attempts, j.claim_token, j.batch_id, j.trace_context
                ), recorded AS (
                    INSERT INTO {s}.queue_starts (queue, partition, started_at)
                    SELECT q.name, '', now_ FROM updated WHERE q.rate_limit IS NOT NULL
                )
                SELECT u.id, u.queue::text, u.name, u.args, u.kwargs, u.priority, u.attempt,
                       u.max_attempts, u.claim_token, u.batch_id, u.trace_context, NULL::float8
                  FROM updated AS u;
                GET DIAGNOSTICS returned = ROW_COUNT;
            END IF;
            RETURN QUERY  -- one summary row per queue: when its rate frees
            SELECT NULL::bigint, q.name::text, NULL::text, NULL::jsonb, NULL::jsonb,
                   NULL::smallint, NULL::integer, NULL::integer, NULL::uuid, NULL::bigint,
                   NULL::jsonb, waits;
        ELSE
            RETURN QUERY
            WITH used AS (
                SELECT c.part, sum(c.running)::integer AS running,
                       sum(c.started)::integer AS started, min(c.oldest) AS oldest
                  FROM (SELECT CASE q.partition
    WHEN 'job' THEN j.name
    WHEN 'key' THEN coalesce(j.partition_key, '')
    WHEN 'job,key' THEN jsonb_build_array(j.name, j.partition_key)::text
    ELSE '' END AS part,
                               1 AS running, 0 AS started, NULL::timestamptz AS oldest
                          FROM {s}.jobs AS j
                         WHERE j.state = 'running' AND j.queue = q.name
                           AND q.concurrency IS NOT NULL
                        UNION ALL
                        SELECT st.partition, 0, 1, st.started_at
                          FROM {s}.queue_starts AS st
                         WHERE st.queue = q.name AND q.rate_limit IS NOT NULL) AS c
                 GROUP BY c.part
            ), budgets AS (
                SELECT u.part,
                       least(q.concurrency - u.running, q.rate_limit - u.started) AS budget,
                       CASE WHEN u.started >= q.rate_limit
                            THEN extract(epoch FROM u.oldest - now_)::float8 + q.rate_period
                       END AS free_in
                  FROM used AS u
            ), candidates AS (
                -- saturated partitions are skipped, so the jobs behind them are reached; each
                -- other partition takes its share, in claim order, from a bounded window
                SELECT w.id, w.part, w.priority, w.scheduled_at,
                       row_number() OVER (PARTITION BY w.part
                                          ORDER BY w.priority, w.scheduled_at, w.id) AS n,
                       coalesce(b.budget, least(q.concurrency, q.rate_limit)) AS budget
                  FROM (SELECT j.id, j.priority, j.scheduled_at,
                               CASE q.partition
    WHEN 'job' THEN j.name
    WHEN 'key' THEN coalesce(j.partition_key, '')
    WHEN 'job,key' THEN jsonb_build_array(j.name, j.partition_key)::text
    ELSE '' END AS part
                          FROM {s}.jobs AS j
                         WHERE j.state = 'available' AND j.queue = q.name
                           AND CASE q.partition
    WHEN 'job' THEN j.name
    WHEN 'key' THEN coalesce(j.partition_key, '')
    WHEN 'job,key' THEN jsonb_build_array(j.name, j.partition_key)::text
    ELSE '' END
                               <> ALL(ARRAY(SELECT b.part FROM budgets AS b WHERE b.budget <= 0))
                         ORDER BY j.priority, j.scheduled_at, j.id
                         LIMIT 1000 + claim_limit) AS w
                  LEFT JOIN budgets AS b ON b.part = w.part
            ), chosen AS (
                SELECT c.id, c.part FROM candidates AS c
                 WHERE c.n <= c.budget
                 ORDER BY c.priority, c.scheduled_at, c.id
                 LIMIT wanted
            ), locked AS (
                SELECT j.id, ch.part FROM {s}.jobs AS j JOIN chosen AS ch ON ch.id = j.id
                 WHERE j.id = ANY(ARRAY(SELECT chosen.id FROM chosen)) AND j.state = 'available'
                 FOR UPDATE OF j SKIP LOCKED
            ), updated AS (
                UPDATE {s}.jobs AS j
                   SET state = 'running', attempt = j.attempt + 1, attempted_at = now(),
                       worker_id = worker, claim_token = gen_random_uuid()
                  FROM locked WHERE j.id = locked.id
                RETURNING j.id, j.queue, j.name, j.args, j.kwargs, j.priority, j.attempt,
                          j.max_attempts, j.claim_token, j.batch_id, j.trace_context, locked.part
            ), recorded AS (
                INSERT INTO {s}.queue_starts (queue, partition, started_at)
                SELECT q.name, u.part, now_ FROM updated AS u WHERE q.rate_limit IS NOT NULL
            )
            SELECT u.id, u.queue::text, u.name, u.args, u.kwargs, u.priority, u.attempt,
                   u.max_attempts, u.claim_token, u.batch_id, u.trace_context, NULL::float8
              FROM updated AS u
            UNION ALL  -- one summary row per queue: when its first rate-limited partition frees
            SELECT NULL, q.name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                   (SELECT min(b.free_in) FROM budgets AS b);
            GET DIAGNOSTICS returned = ROW_COUNT;
            returned := returned - 1;
        END IF;
        taken := taken + returned;
        -- jobs left behind while slots were wanted are held back: a slot freed wakes workers.
        -- A queue limited as a whole that had room for every wanted job ran dry instead. The
        -- look is ordered as the index is, so stale statistics never make it a table scan
        held := q.concurrency IS NOT NULL AND returned < wanted
                AND (q.partition IS NOT NULL OR room < wanted)
                AND EXISTS (SELECT 1 FROM {s}.jobs AS j
                             WHERE j.state = 'available' AND j.queue = q.name
                             ORDER BY j.priority, j.scheduled_at, j.id LIMIT 1);
        IF held <> q.held_back THEN
            UPDATE {s}.queues AS l SET held_back = held WHERE l.name = q.name;
        END IF;
    END LOOP;
END
$$"""


def settle_function(schema: str, traced: bool) -> str:
    """``settle_batch()``: 0008's, and ``traced``, this revision's, which gives each callback
    the ``trace_context`` of its template (``NULL`` for a template without one)."""
    s = f'"{schema}"'
    column, value = (
        (",\n                          trace_context", ",\n           c.job->'trace_context'")
        if traced
        else ("", "")
    )
    return f"""
CREATE OR REPLACE FUNCTION {s}.settle_batch(settled bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    b {s}.batches;
    success_id bigint;
    complete_id bigint;
BEGIN
    SELECT * INTO b FROM {s}.batches WHERE id = settled FOR UPDATE;
    IF NOT FOUND OR b.sealed_at IS NULL OR b.pending > 0 THEN
        RETURN;
    END IF;
    -- The callbacks' ids are recorded before they are inserted, so that count_batch_job knows
    -- them for callbacks and leaves the counters alone.
    IF b.on_complete IS NOT NULL AND b.complete_job_id IS NULL THEN
        complete_id := nextval(pg_get_serial_sequence('{s}.jobs', 'id'));
    END IF;
    IF b.on_success IS NOT NULL AND b.success_job_id IS NULL AND b.failed = 0 THEN
        success_id := nextval(pg_get_serial_sequence('{s}.jobs', 'id'));
    END IF;
    IF b.finished_at IS NOT NULL AND complete_id IS NULL AND success_id IS NULL THEN
        RETURN;
    END IF;
    UPDATE {s}.batches
    SET finished_at = coalesce(finished_at, now()),
        complete_job_id = coalesce(complete_job_id, complete_id),
        success_job_id = coalesce(success_job_id, success_id)
    WHERE id = settled;
    INSERT INTO {s}.jobs (id, queue, name, args, kwargs, priority, max_attempts, batch_id{column})
    SELECT c.id, c.job->>'queue', c.job->>'name', c.job->'args', c.job->'kwargs',
           (c.job->>'priority')::smallint, (c.job->>'max_attempts')::int, settled{value}
    FROM (VALUES (complete_id, b.on_complete), (success_id, b.on_success)) AS c(id, job)
    WHERE c.id IS NOT NULL
    ORDER BY c.id;
END
$$"""


def _revision(filename: str) -> ModuleType:
    """An earlier revision's module, loaded from its file."""
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"pgjobs_migration_{path.stem[:4]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(settle_function(schema, traced=False))
    op.execute(f"DROP FUNCTION {s}.claim_limited_jobs(text[], integer, uuid)")
    op.execute(_revision("0011_held_queues.py").claim_function(schema))
    op.execute(f"ALTER TABLE {s}.jobs DROP COLUMN trace_context")
