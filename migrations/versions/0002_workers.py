"""Worker registry, leader lease, cancellation requests and the cancel_job() SQL function.

Revision ID: 0002
Revises: 0001
"""

from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(f"""
CREATE TABLE {s}.workers (
    id            uuid        PRIMARY KEY,
    hostname      text        NOT NULL,
    pid           integer     NOT NULL,
    queues        text        NOT NULL,
    concurrency   integer     NOT NULL,
    lock_key      integer,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
)""")
    op.execute(f"""
CREATE TABLE {s}.leases (
    name        text        PRIMARY KEY,
    worker_id   uuid        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
)""")
    op.execute(f"ALTER TABLE {s}.jobs ADD COLUMN cancel_requested_at timestamptz")
    op.execute(f"""
CREATE FUNCTION {s}.cancel_job(job_id bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    current_state text;
BEGIN
    LOOP  -- again only if the job changed state between two statements (claimed, rescued)
        UPDATE {s}.jobs SET state = 'cancelled', finished_at = now()
         WHERE id = job_id AND state IN ('scheduled', 'available', 'retryable');
        IF FOUND THEN
            RETURN 'cancelled';
        END IF;
        UPDATE {s}.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())
         WHERE id = job_id AND state = 'running';
        IF FOUND THEN
            PERFORM pg_notify('{schema}.cancel', job_id::text);
            RETURN 'cancelling';
        END IF;
        SELECT state INTO current_state FROM {s}.jobs WHERE id = job_id;
        IF current_state IS NULL THEN
            RETURN NULL;
        ELSIF current_state IN ('completed', 'discarded', 'cancelled') THEN
            RETURN 'already ' || current_state;
        END IF;
    END LOOP;
END
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.cancel_job(bigint) IS
'Cancel a job. A waiting one is cancelled at once and never runs: returns ''cancelled''.
A running one is asked to stop and ends cancelled: returns ''cancelling''. One that had ended is
left alone: returns ''already completed'', ''already discarded'' or ''already cancelled''.
NULL: no such job.'""")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP FUNCTION {s}.cancel_job(bigint)")
    op.execute(f"ALTER TABLE {s}.jobs DROP COLUMN cancel_requested_at")
    op.execute(f"DROP TABLE {s}.leases")
    op.execute(f"DROP TABLE {s}.workers")
