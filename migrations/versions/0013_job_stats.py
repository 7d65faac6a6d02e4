"""Job statistics kept in the database: how many runs ended how, and how long they took.

Workers count the outcomes they write and add the counts every second, per minute, queue, job
name and outcome, in a row of their own ``slot`` so that two workers seldom update one row. Each
row counts the runs per run-time bucket (``DURATION_BUCKETS`` in ``pgjobs/_sql.py``) and sums
their seconds. The leader folds minutes older than two hours into
one row per queue, name and outcome at ``minute = '-infinity'``: the table stays small, the last
two hours keep their minutes, and the sum of all rows only grows, so totals survive every restart.

Revision ID: 0013
Revises: 0012
"""

from alembic import context, op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BUCKETS = 15
"""Counts per row in ``job_stats.buckets``: one below each of the 14 bounds, and one above."""


def upgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"""
CREATE TABLE {s}.job_stats (
    minute   timestamptz NOT NULL,
    queue    text COLLATE "C" NOT NULL,
    name     text        NOT NULL,
    outcome  text        NOT NULL,
    slot     smallint    NOT NULL,
    runs     bigint      NOT NULL,
    seconds  float8      NOT NULL,
    buckets  bigint[]    NOT NULL,
    PRIMARY KEY (minute, queue, name, outcome, slot),
    CONSTRAINT job_stats_outcome_check CHECK (
        outcome IN ('completed', 'retried', 'discarded', 'cancelled', 'snoozed')),
    CONSTRAINT job_stats_buckets_check CHECK (cardinality(buckets) = {BUCKETS})
)""")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP TABLE {s}.job_stats")
