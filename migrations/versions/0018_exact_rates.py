"""Rates that every claim can count, and that hold at the edge of each window as jobs see it.

``queues.rate_period`` is checked to lie from 1 ms to 31 days (``NaN`` and infinities fail too):
a longer or endless period made every claim of its queue fail (``interval out of range``). Rows
that the earlier check let in are first moved to the nearest period allowed (an endless one to
31 days, which keeps its queue as tightly limited as a period can be), under a lock that keeps
new ones out until the constraint is in place, so the migration cannot fail on them and the
constraint is valid for every row.

``queue_starts.job_id`` marks a start as pending: a claim of ``claim_limited_jobs_v2()`` records
each start with its job's id, and the worker confirms it once the job's code has started
(``CONFIRM_STARTS``), which stamps it anew with the database's clock and clears ``job_id``. A
pending start counts in every window whatever its age, a confirmed one for one period from its
stamp: each stamp comes after the start the job sees, so a start that a window admits comes at
least one period after the start it replaces, however late a claim landed or a job started
after it. A pending start whose job no longer runs (it ended before its worker confirmed it, or
was handed back or rescued) is stamped at the next claim of its queue.

``claim_limited_jobs_v2()`` returns what ``claim_limited_jobs()`` returns; its ``free_in`` is
also given when the claim itself fills a window, so a worker with a backlog wakes as the window
frees instead of at its next poll. ``claim_limited_jobs()`` stays, unchanged, for the workers
of the previous release: it counts every start by its stamp, pending or not.

Revision ID: 0018
Revises: 0017
"""

from alembic import context, op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

PERIOD_RANGE = "rate_period BETWEEN 0.001 AND 2678400"
"""A rate's period from 1 ms to 31 days, in seconds (false for ``NaN``, which sorts above every
number)."""

PARTITION = """CASE q.partition
    WHEN 'job' THEN j.name
    WHEN 'key' THEN coalesce(j.partition_key, '')
    WHEN 'job,key' THEN jsonb_build_array(j.name, j.partition_key)::text
    ELSE '' END"""
"""The partition job ``j`` counts in under queue ``q``'s partition mode (as in 0009)."""


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    # first: no row may come in between the fix and the check
    op.execute(f"LOCK TABLE {s}.queues IN ACCESS EXCLUSIVE MODE")
    op.execute(f"""
UPDATE {s}.queues SET rate_period = least(greatest(rate_period, 0.001), 2678400)
 WHERE NOT ({PERIOD_RANGE})""")
    op.execute(f"""
ALTER TABLE {s}.queues ADD CONSTRAINT queues_rate_period_range_check CHECK ({PERIOD_RANGE})""")
    op.execute(f"ALTER TABLE {s}.queue_starts ADD COLUMN job_id bigint")
    op.execute(f"""
CREATE INDEX queue_starts_pending_idx ON {s}.queue_starts (queue, job_id)
    WHERE job_id IS NOT NULL""")
    op.execute(claim_function(schema))


def claim_function(schema: str) -> str:
    """``claim_limited_jobs_v2()`` as this revision defines it."""
    s = f'"{schema}"'
    return f"""
CREATE FUNCTION {s}.claim_limited_jobs_v2(
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
            -- a pending start whose job no longer runs (it ended before its worker confirmed
            -- it, or was handed back or rescued) had started by now: stamped so
            WITH settled AS (
                DELETE FROM {s}.queue_starts AS st
                 WHERE st.queue = q.name AND st.job_id IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM {s}.jobs AS j
                                    WHERE j.id = st.job_id AND j.state = 'running')
                RETURNING st.partition
            )
            INSERT INTO {s}.queue_starts (queue, partition, started_at)
            SELECT q.name, settled.partition, now_ FROM settled;
            DELETE FROM {s}.queue_starts AS st
             WHERE st.queue = q.name AND st.job_id IS NULL
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
                -- pending starts count whatever their age; the oldest confirmed one frees first
                SELECT count(*), min(st.started_at) FILTER (WHERE st.job_id IS NULL)
                  INTO started, oldest
                  FROM {s}.queue_starts AS st WHERE st.queue = q.name;
                room := least(room, q.rate_limit - started);
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
                    INSERT INTO {s}.queue_starts (queue, partition, started_at, job_id)
                    SELECT q.name, '', now_, u.id FROM updated AS u WHERE q.rate_limit IS NOT NULL
                )
                SELECT u.id, u.queue::text, u.name, u.args, u.kwargs, u.priority, u.attempt,
                       u.max_attempts, u.claim_token, u.batch_id, u.trace_context, NULL::float8
                  FROM updated AS u;
                GET DIAGNOSTICS returned = ROW_COUNT;
            END IF;
            -- a window full now (this claim may have filled it) frees as its oldest confirmed
            -- start leaves it; pending ones are confirmed within moments: a period from now
            IF q.rate_limit IS NOT NULL AND started + returned >= q.rate_limit THEN
                waits := extract(epoch FROM coalesce(oldest, now_) - now_)::float8
                         + q.rate_period;
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
                  FROM (SELECT {PARTITION} AS part,
                               1 AS running, 0 AS started, NULL::timestamptz AS oldest
                          FROM {s}.jobs AS j
                         WHERE j.state = 'running' AND j.queue = q.name
                           AND q.concurrency IS NOT NULL
                        UNION ALL
                        SELECT st.partition, 0, 1,
                               CASE WHEN st.job_id IS NULL THEN st.started_at END
                          FROM {s}.queue_starts AS st
                         WHERE st.queue = q.name AND q.rate_limit IS NOT NULL) AS c
                 GROUP BY c.part
            ), budgets AS (
                SELECT u.part,
                       least(q.concurrency - u.running, q.rate_limit - u.started) AS budget
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
                          j.max_attempts, j.claim_token, j.batch_id, j.trace_context, locked.part
            ), recorded AS (
                INSERT INTO {s}.queue_starts (queue, partition, started_at, job_id)
                SELECT q.name, u.part, now_, u.id FROM updated AS u WHERE q.rate_limit IS NOT NULL
            )
            SELECT u.id, u.queue::text, u.name, u.args, u.kwargs, u.priority, u.attempt,
                   u.max_attempts, u.claim_token, u.batch_id, u.trace_context, NULL::float8
              FROM updated AS u
            UNION ALL  -- one summary row per queue: when its first partition full now frees
            SELECT NULL, q.name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                   (SELECT min(extract(epoch FROM coalesce(f.oldest, now_) - now_)::float8
                               + q.rate_period)
                      FROM (SELECT coalesce(u.started, 0) + coalesce(t.taken, 0) AS started,
                                   u.oldest
                              FROM used AS u
                              FULL JOIN (SELECT up.part, count(*)::integer AS taken
                                           FROM updated AS up GROUP BY up.part) AS t
                                ON t.part = u.part) AS f
                     WHERE f.started >= q.rate_limit);
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
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP FUNCTION {s}.claim_limited_jobs_v2(text[], integer, uuid)")
    # a pending start stays, stamped when it was claimed, as the previous release stamps them
    op.execute(f"ALTER TABLE {s}.queue_starts DROP COLUMN job_id")
    op.execute(f"ALTER TABLE {s}.queues DROP CONSTRAINT queues_rate_period_range_check")
