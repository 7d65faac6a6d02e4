"""A unique job holds its key at least until it ends.

``jobs.unique_states`` must include scheduled, available, running and retryable. A job moves
between those states without an enqueue (a promotion, a retry, a rescue), and no such move may
meet another holder of its key: with a key held only while available, two copies scheduled for
later would both be promoted, and the promotion of every due job would fail on the index. The
finished states may still be added, to hold a key after the end.

Revision ID: 0012
Revises: 0011
"""

from alembic import context, op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

STATES = "'scheduled', 'available', 'running', 'retryable', 'completed', 'discarded', 'cancelled'"
"""The states of ``jobs_state_check`` when this revision was written."""

UNTIL_END = "'scheduled', 'available', 'running', 'retryable'"
"""The states every unique job holds its key in."""


def upgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"""
ALTER TABLE {s}.jobs
    DROP CONSTRAINT jobs_unique_states_check,
    ADD CONSTRAINT jobs_unique_states_check CHECK (
        (unique_key IS NULL) = (unique_states IS NULL)
        AND unique_states <@ ARRAY[{STATES}]::text[]
        AND unique_states @> ARRAY[{UNTIL_END}]::text[])""")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"""
ALTER TABLE {s}.jobs
    DROP CONSTRAINT jobs_unique_states_check,
    ADD CONSTRAINT jobs_unique_states_check CHECK (
        (unique_key IS NULL) = (unique_states IS NULL)
        AND cardinality(unique_states) > 0
        AND unique_states <@ ARRAY[{STATES}]::text[])""")
