"""Cron entries: one row per periodic job declared in code, and SQL functions to pause, resume
and run one now.

Workers upsert the entries their code declares (the definition columns only) and enqueue each
tick in one statement that first moves ``last_tick_at`` forward under the row's lock: a tick is
enqueued by whoever moves it, so exactly once across any number of workers.

Revision ID: 0010
Revises: 0009
"""

from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"""
CREATE TABLE {s}.cron_entries (
    name             text        PRIMARY KEY,
    job_name         text        NOT NULL,
    queue            text        NOT NULL,
    priority         smallint    NOT NULL,
    max_attempts     integer     NOT NULL,
    args             jsonb       NOT NULL DEFAULT '[]',
    kwargs           jsonb       NOT NULL DEFAULT '{{}}',
    tick_kwarg       text,
    expression       text        NOT NULL,
    timezone         text        NOT NULL,
    catch_up         text        NOT NULL,
    catch_up_window  interval,
    paused           boolean     NOT NULL DEFAULT false,
    last_tick_at     timestamptz,
    last_job_id      bigint,
    last_enqueued_at timestamptz,
    declared_at      timestamptz NOT NULL DEFAULT now(),
    seen_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cron_entries_catch_up_check CHECK (
        catch_up IN ('latest', 'none')
        OR (catch_up = 'window' AND catch_up_window > interval '0'))
)""")
    op.execute(f"""
CREATE FUNCTION {s}.pause_cron(entry text) RETURNS boolean LANGUAGE sql AS $$
    UPDATE {s}.cron_entries SET paused = true WHERE name = entry RETURNING true
$$""")
    op.execute(f"""
CREATE FUNCTION {s}.resume_cron(entry text) RETURNS boolean LANGUAGE sql AS $$
    UPDATE {s}.cron_entries SET paused = false WHERE name = entry RETURNING true
$$""")
    op.execute(f"""
CREATE FUNCTION {s}.run_cron(entry text) RETURNS bigint LANGUAGE sql AS $$
    WITH e AS (
        SELECT * FROM {s}.cron_entries WHERE name = entry FOR UPDATE
    ), inserted AS (
        INSERT INTO {s}.jobs (queue, name, args, kwargs, priority, max_attempts)
        SELECT queue, job_name, args,
               CASE WHEN tick_kwarg IS NULL THEN kwargs
                    ELSE kwargs || jsonb_build_object(tick_kwarg, now()) END,
               priority, max_attempts
        FROM e
        RETURNING id
    ), noted AS (
        UPDATE {s}.cron_entries AS c SET last_job_id = i.id, last_enqueued_at = now()
        FROM inserted AS i WHERE c.name = entry
        RETURNING c.last_job_id
    )
    SELECT last_job_id FROM noted
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.run_cron(text) IS
'Enqueue the job of a cron entry now, paused or not, without counting as a tick; returns its id,
NULL if there is no such entry.'""")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP FUNCTION {s}.run_cron(text)")
    op.execute(f"DROP FUNCTION {s}.resume_cron(text)")
    op.execute(f"DROP FUNCTION {s}.pause_cron(text)")
    op.execute(f"DROP TABLE {s}.cron_entries")
