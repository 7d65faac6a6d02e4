"""A token per claim: every write after a claim is fenced on it.

A claim commits without waiting for the disk, so a database crash can undo it; the worker may then
claim the same job again with the same attempt number. Id, attempt and worker cannot tell the two
claims apart; a random token drawn by each claim can.

Revision ID: 0005
Revises: 0004
"""

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"ALTER TABLE {s}.jobs ADD COLUMN claim_token uuid")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"ALTER TABLE {s}.jobs DROP COLUMN claim_token")
