"""Unique jobs: a key a job holds while it is in states of its own choosing.

``unique_key`` and ``unique_states`` are NULL for plain jobs. A partial unique index holds each
key once among the jobs that are in one of their own ``unique_states``: enqueue inserts with
``ON CONFLICT`` on it, so two enqueuers of one key can never both insert, whatever their timing,
and a job frees its key by leaving those states (or by its inserting transaction rolling back).
Plain jobs have no entry in the index: their inserts and state changes only evaluate its
predicate.

Revision ID: 0007
Revises: 0006
"""

from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STATES = "'scheduled', 'available', 'running', 'retryable', 'completed', 'discarded', 'cancelled'"
"""The states of ``jobs_state_check`` when this revision was written."""


def upgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"""
ALTER TABLE {s}.jobs
    ADD COLUMN unique_key text,
    ADD COLUMN unique_states text[],
    ADD CONSTRAINT jobs_unique_states_check CHECK (
        (unique_key IS NULL) = (unique_states IS NULL)
        AND cardinality(unique_states) > 0
        AND unique_states <@ ARRAY[{STATES}]::text[])""")
    op.execute(f"""
CREATE UNIQUE INDEX jobs_unique_key_idx ON {s}.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state = ANY (unique_states)""")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP INDEX {s}.jobs_unique_key_idx")
    op.execute(
        f"ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_unique_states_check,"
        " DROP COLUMN unique_states, DROP COLUMN unique_key"
    )
