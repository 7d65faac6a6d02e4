"""Limited queues: wake workers only when a limit holds jobs back, and claim an unpartitioned
queue as the plain claim does.

``queues.held_back`` says that the latest claim of the queue left available jobs behind for want
of room under its concurrency limit. ``wake_held_queues()`` notifies the jobs channel for those
queues alone, after the claims under way have committed: a worker whose limited job ended wakes
the others only when one may be waiting for that slot, so a limit that does not bind costs no
wake-ups. ``claim_limited_jobs()`` keeps its signature and results; for a queue limited as a
whole it counts with two aggregates and claims with the plain claim's index scan.

The settings trigger no longer fires on a change of ``held_back`` alone: workers re-read their
settings when the settings change, not when a claim records what it saw.

Revision ID: 0011
Revises: 0010
"""

import importlib.util
from pathlib import Path

from alembic import context, op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SETTINGS = "paused, concurrency, rate_limit, rate_period, partition"
"""The columns whose change the workers must hear of."""

PARTITION = """CASE q.partition
    WHEN 'job' THEN j.name
    WHEN 'key' THEN coalesce(j.partition_key, '')
    WHEN 'job,key' THEN jsonb_build_array(j.name, j.partition_key)::text
    ELSE '' END"""
"""The partition job ``j`` counts in under queue ``q``'s partition mode (as in 0009)."""


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(f"ALTER TABLE {s}.queues ADD COLUMN held_back boolean NOT NULL DEFAULT false")
    op.execute(f"DROP TRIGGER queues_notify_changed ON {s}.queues")
    op.execute(f"""
CREATE TRIGGER queues_notify_changed AFTER INSERT OR UPDATE OF {SETTINGS} OR DELETE ON {s}.queues
    FOR EACH ROW EXECUTE FUNCTION {s}.notify_queue_change()""")
    op.execute(f"""
CREATE FUNCTION {s}.wake_held_queues(queue_names text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- wait for the claims of these queues under way: a claim that counted a job this worker
    -- has just ended as running has recorded by then whether it held jobs back
    PERFORM pg_advisory_xact_lock_shared(hashtext('{schema}.queues'), hashtext(n.name))
       FROM (SELECT DISTINCT u.name FROM unnest(queue_names) AS u(name) ORDER BY u.name) AS n;
    PERFORM pg_notify('{schema}.jobs', l.name)
       FROM {s}.queues AS l WHERE l.name = ANY(queue_names) AND l.held_back;
END
$$""")
    op.execute(claim_function(schema))


def claim_function(schema: str) -> str:
    s = f'"{schema}"'
    return f"""
CREATE OR REPLACE FUNCTION {s}.claim_limited_jobs(
    queue_names text[], claim_limit integer, worker uuid)
RETURNS TABLE (id bigint, queue text, name text, args jsonb, kwargs jsonb, priority smallint,
               attempt integer, max_attempts integer, claim_token uuid, batch_id bigint,
               free_in float8)
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
                              j.max_attempts, j.claim_token, j.batch_id
                ), recorded AS (
                    INSERT INTO {s}.queue_starts (queue, partition, started_at)
                    SELECT q.name, '', now_ FROM updated WHERE q.rate_limit IS NOT NULL
                )
                SELECT u.id, u.queue::text, u.name, u.args, u.kwargs, u.priority, u.attempt,
                       u.max_attempts, u.claim_token, u.batch_id, NULL::float8
                  FROM updated AS u;
                GET DIAGNOSTICS returned = ROW_COUNT;
            END IF;
            RETURN QUERY  -- one summary row per queue: when its rate frees
            SELECT NULL::bigint, q.name::text, NULL::text, NULL::jsonb, NULL::jsonb,
                   NULL::smallint, NULL::integer, NULL::integer, NULL::uuid, NULL::bigint, waits;
        ELSE
            RETURN QUERY
            WITH used AS (
                SELECT c.part, sum(c.running)::integer AS running,
                       sum(c.started)::integer AS started, min(c.oldest) AS oldest
                  FROM (SELECT {PARTITION} AS part,
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
                               {PARTITION} AS part
                          FROM {s}.jobs AS j
                         WHERE j.state = 'available' AND j.queue = q.name
                           AND {PARTITION}
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
                          j.max_attempts, j.claim_token, j.batch_id, locked.part
            ), recorded AS (
                INSERT INTO {s}.queue_starts (queue, partition, started_at)
                SELECT q.name, u.part, now_ FROM updated AS u WHERE q.rate_limit IS NOT NULL
            )
            SELECT u.id, u.queue::text, u.name, u.args, u.kwargs, u.priority, u.attempt,
                   u.max_attempts, u.claim_token, u.batch_id, NULL::float8
              FROM updated AS u
            UNION ALL  -- one summary row per queue: when its first rate-limited partition frees
            SELECT NULL, q.name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
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


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    path = Path(__file__).with_name("0009_queues.py")
    spec = importlib.util.spec_from_file_location("pgjobs_migration_0009", path)
    assert spec is not None and spec.loader is not None
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    op.execute(f"DROP FUNCTION {s}.claim_limited_jobs(text[], integer, uuid)")
    op.execute(before.claim_function(schema))
    op.execute(f"DROP FUNCTION {s}.wake_held_queues(text[])")
    op.execute(f"DROP TRIGGER queues_notify_changed ON {s}.queues")
    op.execute(f"""
CREATE TRIGGER queues_notify_changed AFTER INSERT OR UPDATE OR DELETE ON {s}.queues
    FOR EACH ROW EXECUTE FUNCTION {s}.notify_queue_change()""")
    op.execute(f"ALTER TABLE {s}.queues DROP COLUMN held_back")
