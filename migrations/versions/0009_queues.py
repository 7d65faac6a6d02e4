"""Queue settings: pausing, concurrency limits and rate limits, and the job's partition key.

``queues`` holds a row only for a queue someone configured; a queue without one claims as
before. ``jobs.partition_key`` (NULL by default) names the tenant, account... a limit may be
partitioned by. ``queue_starts`` records the starts of rate-limited queues for their sliding
windows. ``claim_limited_jobs()`` claims from limited queues under a transaction advisory lock
per queue, so counting what runs and claiming more is one step for all workers on all hosts.
A change to ``queues`` notifies the ``<schema>.queues`` channel (workers re-read their settings)
and the jobs channel with the queue's name (a resumed queue is claimed at once).

Revision ID: 0009
Revises: 0008
"""

from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


PARTITION = """CASE q.partition
    WHEN 'job' THEN j.name
    WHEN 'key' THEN coalesce(j.partition_key, '')
    WHEN 'job,key' THEN jsonb_build_array(j.name, j.partition_key)::text
    ELSE '' END"""
"""The partition job ``j`` counts in under queue ``q``'s partition mode: ``''`` (the whole
queue), its name, its key (``''`` without one), or ``[name, key]`` as JSON text. Written out
where it is used: a function call per candidate job cost more than the rest of the claim."""


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(f"""
CREATE TABLE {s}.queues (
    name         text COLLATE "C" PRIMARY KEY,
    paused       boolean     NOT NULL DEFAULT false,
    concurrency  integer,
    rate_limit   integer,
    rate_period  float8,
    partition    text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queues_name_check CHECK (name ~ '^[A-Za-z0-9_.-]+$' AND length(name) <= 128),
    CONSTRAINT queues_concurrency_check CHECK (concurrency > 0),
    CONSTRAINT queues_rate_limit_check CHECK (rate_limit > 0),
    CONSTRAINT queues_rate_period_check CHECK (rate_period > 0),
    CONSTRAINT queues_rate_check CHECK ((rate_limit IS NULL) = (rate_period IS NULL)),
    CONSTRAINT queues_partition_check CHECK (partition IN ('job', 'key', 'job,key'))
)""")
    op.execute(f"ALTER TABLE {s}.jobs ADD COLUMN partition_key text")
    op.execute(f"""
CREATE TABLE {s}.queue_starts (
    queue       text COLLATE "C" NOT NULL,
    partition   text        NOT NULL,
    started_at  timestamptz NOT NULL
)""")
    op.execute(f"CREATE INDEX queue_starts_idx ON {s}.queue_starts (queue, started_at)")
    op.execute(f"""
CREATE FUNCTION {s}.notify_queue_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.queues', coalesce(NEW.name, OLD.name));
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.jobs', coalesce(NEW.name, OLD.name));
    RETURN NULL;
END
$$""")
    op.execute(f"""
CREATE TRIGGER queues_notify_changed AFTER INSERT OR UPDATE OR DELETE ON {s}.queues
    FOR EACH ROW EXECUTE FUNCTION {s}.notify_queue_change()""")
    for verb, paused in (("pause", "true"), ("resume", "false")):
        op.execute(f"""
CREATE FUNCTION {s}.{verb}_queue(queue text) RETURNS void LANGUAGE sql AS $$
INSERT INTO {s}.queues (name, paused) VALUES (queue, {paused})
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
$$""")
    op.execute(claim_function(schema))


def claim_function(schema: str) -> str:
    """``claim_limited_jobs()`` as this revision defines it (0011 replaces it)."""
    s = f'"{schema}"'
    return f"""
CREATE FUNCTION {s}.claim_limited_jobs(queue_names text[], claim_limit integer, worker uuid)
RETURNS TABLE (id bigint, queue text, name text, args jsonb, kwargs jsonb, priority smallint,
               attempt integer, max_attempts integer, claim_token uuid, batch_id bigint,
               free_in float8)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q record;
    now_ timestamptz;
    taken integer := 0;
    returned integer;
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
        now_ := clock_timestamp();
        IF q.rate_limit IS NOT NULL THEN
            DELETE FROM {s}.queue_starts AS st
             WHERE st.queue = q.name
               AND st.started_at <= now_ - make_interval(secs => q.rate_period);
        END IF;
        RETURN QUERY
        WITH used AS (
            SELECT c.part, sum(c.running)::integer AS running, sum(c.started)::integer AS started,
                   min(c.oldest) AS oldest
              FROM (SELECT {PARTITION} AS part,
                           1 AS running, 0 AS started, NULL::timestamptz AS oldest
                      FROM {s}.jobs AS j
                     WHERE j.state = 'running' AND j.queue = q.name AND q.concurrency IS NOT NULL
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
            -- saturated partitions are skipped, so the jobs behind them are reached; each other
            -- partition takes its share, in claim order, from a bounded window
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
                     LIMIT CASE WHEN q.partition IS NULL THEN claim_limit
                                ELSE 1000 + claim_limit END) AS w
              LEFT JOIN budgets AS b ON b.part = w.part
        ), chosen AS (
            SELECT c.id, c.part FROM candidates AS c
             WHERE c.n <= c.budget
             ORDER BY c.priority, c.scheduled_at, c.id
             LIMIT claim_limit - taken
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
        taken := taken + returned - 1;
    END LOOP;
END
$$"""


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP FUNCTION {s}.claim_limited_jobs(text[], integer, uuid)")
    op.execute(f"DROP FUNCTION {s}.pause_queue(text)")
    op.execute(f"DROP FUNCTION {s}.resume_queue(text)")
    op.execute(f"DROP TABLE {s}.queues")
    op.execute(f"DROP FUNCTION {s}.notify_queue_change()")
    op.execute(f"DROP TABLE {s}.queue_starts")
    op.execute(f"ALTER TABLE {s}.jobs DROP COLUMN partition_key")
