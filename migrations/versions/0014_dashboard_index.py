"""An index for the discarded and cancelled jobs, newest first.

The dashboard lists the jobs of one finished state by the time they ended. Completed jobs
are most of ``jobs_finished_idx``, so a page of them is read at once; discarded and cancelled
jobs may be a few among millions there, and a page of them would walk the whole history. This
partial index holds them alone and costs nothing for a job that completes.

Revision ID: 0014
Revises: 0013
"""

from alembic import context, op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"""
CREATE INDEX jobs_discarded_cancelled_idx ON {s}.jobs (state, finished_at, id)
    WHERE state IN ('discarded', 'cancelled')""")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP INDEX {s}.jobs_discarded_cancelled_idx")
