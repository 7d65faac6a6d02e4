"""Indexes to read finished jobs a page at a time, the latest ended first.

The dashboard lists the jobs of one finished state by ``(finished_at, id)``. ``jobs_finished_idx``
gains ``id``, so that jobs that ended in one statement (one ``finished_at``) are not sorted
before a page is read. Completed jobs are most of that index; discarded and cancelled jobs may be
a few among millions there, and a page of them would walk the whole history: a partial index
holds them alone, and costs nothing for a job that completes.

The dashboard counts a state's jobs up to 10,000 and asks the planner beyond: statistics on
``(state, queue)`` together let ANALYZE estimate a queue's available jobs without taking the two
columns for independent (most finished jobs may be of other queues).

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
    _finished_index(s, "finished_at, id")
    op.execute(f"CREATE STATISTICS {s}.jobs_state_queue_stats (mcv) ON state, queue FROM {s}.jobs")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP STATISTICS {s}.jobs_state_queue_stats")
    op.execute(f"DROP INDEX {s}.jobs_discarded_cancelled_idx")
    _finished_index(s, "finished_at")


def _finished_index(s: str, columns: str) -> None:
    op.execute(f"DROP INDEX {s}.jobs_finished_idx")
    op.execute(f"""
CREATE INDEX jobs_finished_idx ON {s}.jobs ({columns})
    WHERE state IN ('completed', 'discarded', 'cancelled')""")
