"""A guard on inserted jobs: a role that does not own the table may insert only new jobs.

New means what pgjobs' enqueue writes: state ``available`` or ``scheduled``, attempt 0, and no
worker, claim token, attempt or finish time, cancellation request or errors. Their arguments
(``args`` and ``kwargs`` as text) are at most 1 MiB, pgjobs' own limit. So a role granted INSERT
alone (an enqueuer) can neither forge a running or finished job nor store arguments that every
worker would have to load.

The owner of the table, and any member of its role, is exempt: it can drop the guard anyway, and
pgjobs' own tools (``pgjobs bench``) and tests insert finished jobs. One statement-level trigger
reads the inserted rows once, after the statement, from the transition table the notification
trigger already keeps: about 0.6 µs per job (1 µs with small arguments) against 3-7 µs for a
trigger per row, and nothing for the owner's inserts. It runs with ``search_path`` set to
``pg_catalog`` alone, so that an inserting role's own function named ``pg_has_role`` (say) is not
called in its place.

Revision ID: 0006
Revises: 0005
"""

from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MAX_ARGUMENTS_BYTES = 1024 * 1024
"""pgjobs.MAX_PAYLOAD_BYTES when this revision was written; frozen here, as revisions are."""


def upgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"""
CREATE FUNCTION {s}.guard_inserted_jobs() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog  -- the inserting role's own functions must not stand in for these
AS $$
DECLARE
    owner_role oid := (SELECT relowner FROM pg_class WHERE oid = TG_RELID);
    job record;
BEGIN
    IF pg_has_role(current_user, owner_role, 'MEMBER') THEN
        RETURN NULL;
    END IF;
    SELECT id, name, state, attempt,
           octet_length(args::text) + octet_length(kwargs::text) AS size
      INTO job
      FROM inserted
     WHERE state NOT IN ('available', 'scheduled') OR attempt <> 0 OR worker_id IS NOT NULL
        OR claim_token IS NOT NULL OR attempted_at IS NOT NULL OR finished_at IS NOT NULL
        OR cancel_requested_at IS NOT NULL OR errors <> '[]'
        OR octet_length(args::text) + octet_length(kwargs::text) > {MAX_ARGUMENTS_BYTES}
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF job.size > {MAX_ARGUMENTS_BYTES} THEN
        RAISE EXCEPTION USING
            ERRCODE = 'check_violation', CONSTRAINT = 'jobs_arguments_size_check',
            MESSAGE = 'job ' || job.id || ' (' || job.name || '): its arguments are '
                      || job.size || ' bytes as text, over the {MAX_ARGUMENTS_BYTES}-byte limit',
            HINT = 'Store large data in a table of your own and pass its id.';
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'role ' || current_user || ' may insert only new jobs, not job ' || job.id
                  || ' (' || job.name || ') in state ' || job.state || ', attempt ' || job.attempt,
        DETAIL = 'A new job is available or scheduled, at attempt 0, with no worker_id, '
                 'claim_token, attempted_at, finished_at, cancel_requested_at or errors.',
        HINT = 'Only the owner of ' || quote_ident(TG_TABLE_SCHEMA) || '.'
               || quote_ident(TG_TABLE_NAME) || ' (' || owner_role::regrole
               || ') and its members may insert other jobs.';
END
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.guard_inserted_jobs() IS
'A role that does not own the jobs table may insert only new jobs (available or scheduled,
attempt 0, no worker, claim token, attempt or finish time, cancellation request or errors) with
arguments (args and kwargs as text) of at most {MAX_ARGUMENTS_BYTES} bytes.'""")
    op.execute(f"""
CREATE TRIGGER jobs_guard_inserted AFTER INSERT ON {s}.jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.guard_inserted_jobs()""")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP TRIGGER jobs_guard_inserted ON {s}.jobs")
    op.execute(f"DROP FUNCTION {s}.guard_inserted_jobs()")
