"""Job metadata: ``jobs.meta``, a JSON object set by enqueue middleware or ``Job.options(meta=)``.

``jobs.meta`` is ``NOT NULL DEFAULT '{}'``: adding a column with a constant default rewrites no
row (PostgreSQL 11 and later), and the previous release's inserts, which do not name it, store
``{}``.

The claim returns it: ``claim_limited_jobs_v3()`` returns what ``claim_limited_jobs_v2()`` returns
and ``meta`` before ``free_in``. ``add_batch_jobs_v2()`` takes each job's meta as one more array.
``claim_limited_jobs_v2()`` and ``add_batch_jobs()`` stay, unchanged, for the workers and
enqueuers of the previous release (their jobs get ``{}``).

Revision ID: 0019
Revises: 0018
"""

from alembic import context, op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

MAX_ARGUMENTS_BYTES = 1024 * 1024
"""The insert guard's limit on a job's arguments (as in 0006)."""

PARTITION = """CASE q.partition
    WHEN 'job' THEN j.name
    WHEN 'key' THEN coalesce(j.partition_key, '')
    WHEN 'job,key' THEN jsonb_build_array(j.name, j.partition_key)::text
    ELSE '' END"""

BATCH_SIGNATURE = (
    "bigint, text[], text[], text[], text[], integer[], integer[], timestamptz[], float8[], text[],"
    " jsonb, text[]"
)


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(f"ALTER TABLE {s}.jobs ADD COLUMN meta jsonb NOT NULL DEFAULT '{{}}'")
    op.execute(f"""
COMMENT ON COLUMN {s}.jobs.meta IS
'A JSON object carried from the enqueue to the run: set by enqueue middleware or
Job.options(meta=...), read by run middleware and the job (current_job().meta).'""")
    op.execute(claim_function(schema))
    op.execute(f"""
CREATE FUNCTION {s}.add_batch_jobs_v2(
    batch bigint, queues text[], names text[], args text[], kwargs text[], priorities integer[],
    max_attempts integer[], ats timestamptz[], delays float8[], partition_keys text[],
    trace_context jsonb, metas text[])
RETURNS TABLE (batch_found boolean, batch_finished_at timestamptz, job_ids bigint[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    oversized bigint;
    job record;
BEGIN
    SELECT b.finished_at INTO batch_finished_at
    FROM {s}.batches AS b WHERE b.id = batch FOR UPDATE;
    batch_found := FOUND;
    job_ids := '{{}}';
    IF NOT batch_found OR batch_finished_at IS NOT NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM set_config('{schema}.adding_batch', batch::text, true);
    WITH inserted AS (
        INSERT INTO {s}.jobs AS j (queue, name, args, kwargs, priority, max_attempts,
                                   scheduled_at, state, batch_id, partition_key, trace_context,
                                   meta)
        SELECT r.queue, r.name, r.args::jsonb, r.kwargs::jsonb, r.priority, r.max_attempts,
               r.run_at, CASE WHEN r.run_at > now() THEN 'scheduled' ELSE 'available' END,
               batch, r.partition_key, add_batch_jobs_v2.trace_context,
               coalesce(r.meta::jsonb, '{{}}')
        FROM (
            SELECT u.*, coalesce(u.at, now() + make_interval(secs => u.delay)) AS run_at
            FROM unnest(queues, names, args, kwargs, priorities, max_attempts, ats, delays,
                        partition_keys, metas) WITH ORDINALITY
                AS u(queue, name, args, kwargs, priority, max_attempts, at, delay,
                     partition_key, meta, position)
            ORDER BY u.position
        ) AS r
        RETURNING j.id, octet_length(j.args::text) + octet_length(j.kwargs::text) AS size
    )
    SELECT coalesce(array_agg(i.id ORDER BY i.id), '{{}}'),
           min(i.id) FILTER (WHERE i.size > {MAX_ARGUMENTS_BYTES})
    INTO job_ids, oversized
    FROM inserted AS i;
    PERFORM set_config('{schema}.adding_batch', '', true);
    IF oversized IS NOT NULL THEN
        SELECT j.id, j.name, octet_length(j.args::text) + octet_length(j.kwargs::text) AS size
        INTO job FROM {s}.jobs AS j WHERE j.id = oversized;
        RAISE EXCEPTION USING
            ERRCODE = 'check_violation', CONSTRAINT = 'jobs_arguments_size_check',
            MESSAGE = 'job ' || job.id || ' (' || job.name || '): its arguments are '
                      || job.size || ' bytes as text, over the {MAX_ARGUMENTS_BYTES}-byte limit',
            HINT = 'Store large data in a table of your own and pass its id.';
    END IF;
    IF cardinality(job_ids) > 0 THEN
        UPDATE {s}.batches AS b
        SET total = b.total + cardinality(job_ids), pending = b.pending + cardinality(job_ids)
        WHERE b.id = batch;
    END IF;
    RETURN NEXT;
END
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.add_batch_jobs_v2(bigint, text[], text[], text[], text[], integer[],
                                       integer[], timestamptz[], float8[], text[], jsonb, text[]) IS
'Add jobs to a batch unless it has finished, and count them: one job per element of the arrays
(args and kwargs as JSON text; a NULL at runs after delay seconds), each carrying trace_context, and
its meta (JSON text; NULL for none).
Locks the batch row until the end of the transaction, so that the job that would finish the
batch waits, or has finished it. Returns whether the batch exists, its finished_at (no job was
added if set) and the new jobs'' ids in order. Arguments over the insert guard''s size limit are
refused.'""")
    op.execute(
        f"REVOKE EXECUTE ON FUNCTION {s}.add_batch_jobs_v2(bigint, text[], text[], text[], text[],"
        " integer[], integer[], timestamptz[], float8[], text[], jsonb, text[]) FROM PUBLIC"
    )


def claim_function(schema: str) -> str:
    """``claim_limited_jobs_v3()`` as this revision defines it."""
    s = f'"{schema}"'
    return f"""
CREATE FUNCTION {s}.claim_limited_jobs_v3(
    queue_names text[], claim_limit integer, worker uuid)
RETURNS TABLE (id bigint, queue text, name text, args jsonb, kwargs jsonb, priority smallint,
               attempt integer, max_attempts integer, claim_token uuid, batch_id bigint,
               trace_context jsonb, meta jsonb, free_in float8)
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
                              j.max_attempts, j.claim_token, j.batch_id, j.trace_context, j.meta
                ), recorded AS (
                    INSERT INTO {s}.queue_starts (queue, partition, started_at, job_id)
                    SELECT q.name, '', now_, u.id FROM updated AS u WHERE q.rate_limit IS NOT NULL
                )
                SELECT u.id, u.queue::text, u.name, u.args, u.kwargs, u.priority, u.attempt,
                       u.max_attempts, u.claim_token, u.batch_id, u.trace_context, u.meta,
                       NULL::float8
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
                   NULL::jsonb, NULL::jsonb, waits;
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
                          j.max_attempts, j.claim_token, j.batch_id, j.trace_context, j.meta,
                          locked.part
            ), recorded AS (
                INSERT INTO {s}.queue_starts (queue, partition, started_at, job_id)
                SELECT q.name, u.part, now_, u.id FROM updated AS u WHERE q.rate_limit IS NOT NULL
            )
            SELECT u.id, u.queue::text, u.name, u.args, u.kwargs, u.priority, u.attempt,
                   u.max_attempts, u.claim_token, u.batch_id, u.trace_context, u.meta,
                       NULL::float8
              FROM updated AS u
            UNION ALL  -- one summary row per queue: when its first partition full now frees
            SELECT NULL, q.name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
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
    op.execute(f"DROP FUNCTION {s}.add_batch_jobs_v2({BATCH_SIGNATURE})")
    op.execute(f"DROP FUNCTION {s}.claim_limited_jobs_v3(text[], integer, uuid)")
    op.execute(f"ALTER TABLE {s}.jobs DROP COLUMN meta")
