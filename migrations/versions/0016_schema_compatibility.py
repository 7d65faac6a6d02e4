"""The oldest pgjobs a schema still serves, for rolling upgrades.

Operators migrate first and then replace workers one by one, so the previous release's workers
run on the newest schema. Migrations expand and contract: a release adds tables, columns and
functions and never changes a function's result or a column's meaning in place (a changed
function gets a new versioned name, and the old one is dropped a release later). A worker reads
``schema_compatibility`` only when the schema is newer than it knows: it runs when
``oldest_revision`` is at most its own newest revision. A revision that drops what older
releases need raises ``oldest_revision`` to the oldest revision whose code does without it.

Revision ID: 0016
Revises: 0015
"""

from alembic import context, op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"""
CREATE TABLE {s}.schema_compatibility (
    only_row         boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    oldest_revision  text    NOT NULL CHECK (oldest_revision ~ '^[0-9]{{4}}$')
)""")
    op.execute(f"INSERT INTO {s}.schema_compatibility (oldest_revision) VALUES ('0015')")
    op.execute(f"""
COMMENT ON TABLE {s}.schema_compatibility IS
'One row: releases whose newest migration is oldest_revision or later work on this schema, even
when a newer release migrated it. Raised only by a revision that drops what older ones need.'""")


def downgrade() -> None:
    s = '"{}"'.format(context.config.attributes["schema"])
    op.execute(f"DROP TABLE {s}.schema_compatibility")
