"""Job results, progress, and waiting for a job to end.

``jobs.result`` holds what a completed job returned, as JSON (``NULL`` for ``None``). A partial
index on ``finished_at`` of the rows with a result lets the leader clear results past their
retention without reading the rows that have none.

``jobs.progress`` (0 to 1), ``progress_message`` and ``progress_at`` are what a running attempt
last reported. They are never cleared: a report older than the job's latest claim
(``attempted_at``) is an earlier attempt's, and readers leave it out.

``jobs.awaited`` is set by ``await_job()`` when somebody waits for the job (``App.wait_for``).
Row triggers notify ``<schema>.results`` with the id of an awaited job as it ends or is deleted,
whoever ends it (the previous release's workers too). Their ``WHEN`` tests the row itself, so a
job nobody waits for pays no function call and no notification lock. ``await_job()`` sets the
flag with an UPDATE, which waits for a statement that is changing the row: either that
statement sees the flag (and notifies), or the waiter then reads the state it left.

Revision ID: 0020
Revises: 0018
"""

from alembic import context, op

revision = "0020"
down_revision = "0019"
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
    ADD COLUMN progress_at timestamptz,
    ADD COLUMN awaited boolean""")
    op.execute(f"""
CREATE INDEX jobs_result_finished_idx ON {s}.jobs (finished_at) WHERE result IS NOT NULL""")
    op.execute(f"""
CREATE FUNCTION {s}.notify_awaited_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{schema}.results', OLD.id::text);
    RETURN NULL;
END
$$""")
    op.execute(f"""
CREATE TRIGGER jobs_awaited_ended AFTER UPDATE OF state ON {s}.jobs
    FOR EACH ROW WHEN (NEW.awaited AND NEW.state IN {ENDED}
                       AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION {s}.notify_awaited_job()""")
    op.execute(f"""
CREATE TRIGGER jobs_awaited_deleted AFTER DELETE ON {s}.jobs
    FOR EACH ROW WHEN (OLD.awaited) EXECUTE FUNCTION {s}.notify_awaited_job()""")
    op.execute(f"""
CREATE FUNCTION {s}.await_job(awaited_id bigint) RETURNS text LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    found_state text;
BEGIN
    -- the UPDATE waits for a statement changing the row to commit, and then sees what it left
    UPDATE {s}.jobs AS j SET awaited = true
     WHERE j.id = awaited_id AND j.state NOT IN {ENDED} AND j.awaited IS NOT TRUE;
    SELECT j.state INTO found_state FROM {s}.jobs AS j WHERE j.id = awaited_id;
    RETURN found_state;
END
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.await_job(bigint) IS
'Mark job awaited_id as awaited unless it has ended, and return its state (NULL: no such job).
LISTEN on the <schema>.results channel first: the job''s id is notified there once it ends.'""")
    # await_job runs as the owner: `pgjobs grants` gives EXECUTE to the roles that may wait
    for function in ("notify_awaited_job()", "await_job(bigint)"):
        op.execute(f"REVOKE EXECUTE ON FUNCTION {s}.{function} FROM PUBLIC")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP FUNCTION {s}.await_job(bigint)")
    op.execute(f"DROP TRIGGER jobs_awaited_deleted ON {s}.jobs")
    op.execute(f"DROP TRIGGER jobs_awaited_ended ON {s}.jobs")
    op.execute(f"DROP FUNCTION {s}.notify_awaited_job()")
    op.execute(f"DROP INDEX {s}.jobs_result_finished_idx")
    op.execute(f"""
ALTER TABLE {s}.jobs DROP COLUMN result, DROP COLUMN progress, DROP COLUMN progress_message,
    DROP COLUMN progress_at, DROP COLUMN awaited""")
