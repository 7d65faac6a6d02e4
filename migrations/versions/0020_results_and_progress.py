"""Job results, progress, and waiting for a job to end.

``jobs.result`` holds what a completed job returned, as JSON (``NULL`` for ``None``). A partial
index on ``finished_at`` of the rows with a result lets the leader clear results past their
retention without reading the rows that have none.

``jobs.progress`` (0 to 1), ``progress_message`` and ``progress_at`` are what the running attempt
last reported; they are cleared when the job goes back for another attempt.

``result_waiters`` (UNLOGGED: a waiter lost with a server crash has lost its connection too)
holds one row per caller waiting for a job to end (``App.wait_for``). A statement-level trigger
on ``jobs`` (after any UPDATE or DELETE, whoever runs it: the previous release's workers too)
notifies ``<schema>.results`` with the id of each awaited job that has ended or is gone, and
deletes those rows. With no waiter it costs one look at an empty table per statement, and takes
no notification lock. ``await_job()`` registers a waiter and returns the job's state, the row
share-locked, so either the trigger of the statement that ends the job sees the waiter, or the
waiter sees the job ended: no wake-up is lost in between.

Revision ID: 0020
Revises: 0018
"""

from alembic import context, op

revision = "0020"
down_revision = "0018"
branch_labels = None
depends_on = None

ENDED = "('completed', 'discarded', 'cancelled')"


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(f"""
ALTER TABLE {s}.jobs
    ADD COLUMN result jsonb,
    ADD COLUMN progress real CONSTRAINT jobs_progress_range_check
        CHECK (progress >= 0 AND progress <= 1),
    ADD COLUMN progress_message text,
    ADD COLUMN progress_at timestamptz""")
    op.execute(f"""
CREATE INDEX jobs_result_finished_idx ON {s}.jobs (finished_at) WHERE result IS NOT NULL""")
    op.execute(f"""
CREATE UNLOGGED TABLE {s}.result_waiters (
    job_id         bigint      NOT NULL,
    waiter         uuid        NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, waiter)
)""")
    op.execute(f"""
CREATE FUNCTION {s}.notify_result_waiters() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    gone bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM {s}.result_waiters) THEN
        RETURN NULL;
    END IF;
    FOR gone IN DELETE FROM {s}.result_waiters AS w
                 WHERE NOT EXISTS (SELECT FROM {s}.jobs AS j
                                    WHERE j.id = w.job_id AND j.state NOT IN {ENDED})
                RETURNING w.job_id
    LOOP
        PERFORM pg_notify('{schema}.results', gone::text);
    END LOOP;
    RETURN NULL;
END
$$""")
    op.execute(f"""
CREATE TRIGGER jobs_notify_result_waiters AFTER UPDATE OR DELETE ON {s}.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_result_waiters()""")
    op.execute(f"""
CREATE FUNCTION {s}.await_job(awaited bigint, waiter uuid) RETURNS text LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    found_state text;
BEGIN
    -- the share lock waits for a statement that is changing the row to commit, so the state
    -- read is final or the waiter is visible to the trigger of the statement that ends the job
    SELECT j.state INTO found_state FROM {s}.jobs AS j WHERE j.id = awaited FOR SHARE;
    IF found_state IS NOT NULL AND found_state NOT IN {ENDED} THEN
        INSERT INTO {s}.result_waiters (job_id, waiter) VALUES (awaited, waiter)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN found_state;
END
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.await_job(bigint, uuid) IS
'Register waiter for job awaited, unless it has ended; returns its state (NULL: no such job).
Listen on the <schema>.results channel first: the job''s id is notified there once it ends.'""")
    op.execute(f"""
CREATE FUNCTION {s}.forget_waiter(awaited bigint, waiter uuid) RETURNS void LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog AS $$
DELETE FROM {s}.result_waiters AS w WHERE w.job_id = awaited AND w.waiter = forget_waiter.waiter
$$""")
    # they run as the owner: `pgjobs grants` gives EXECUTE on the two meant to be called
    for function in (
        "notify_result_waiters()",
        "await_job(bigint, uuid)",
        "forget_waiter(bigint, uuid)",
    ):
        op.execute(f"REVOKE EXECUTE ON FUNCTION {s}.{function} FROM PUBLIC")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP FUNCTION {s}.forget_waiter(bigint, uuid)")
    op.execute(f"DROP FUNCTION {s}.await_job(bigint, uuid)")
    op.execute(f"DROP TRIGGER jobs_notify_result_waiters ON {s}.jobs")
    op.execute(f"DROP FUNCTION {s}.notify_result_waiters()")
    op.execute(f"DROP TABLE {s}.result_waiters")
    op.execute(f"DROP INDEX {s}.jobs_result_finished_idx")
    op.execute(f"""
ALTER TABLE {s}.jobs DROP COLUMN result, DROP COLUMN progress, DROP COLUMN progress_message,
    DROP COLUMN progress_at""")
