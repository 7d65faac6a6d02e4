"""docs/schema.sql is the schema that the migrations leave on an empty database."""

from __future__ import annotations

import difflib

import psycopg
import pytest

from tests.schema_dump import COMMAND, SCHEMA_SQL, dump, migrated_dump


def test_the_committed_schema_dump_is_what_the_migrations_make(server_url: str) -> None:
    made = migrated_dump(server_url)
    committed = SCHEMA_SQL.read_text() if SCHEMA_SQL.exists() else ""
    if made != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                made.splitlines(keepends=True),
                "docs/schema.sql (committed)",
                "docs/schema.sql (migrated)",
            )
        )
        pytest.fail(f"docs/schema.sql is out of date; regenerate it with `{COMMAND}`:\n{diff}")


def test_the_dump_shows_a_change_of_the_schema(database_url: str) -> None:
    """What the dump compares: a column, an index, a function body, a privilege."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = dump(conn)
        with conn.transaction(force_rollback=True):
            conn.execute("ALTER TABLE pgjobs.jobs ADD COLUMN note text")
            with_column = dump(conn)
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE INDEX jobs_note_idx ON pgjobs.jobs (name)")
            with_index = dump(conn)
        with conn.transaction(force_rollback=True):
            conn.execute("GRANT EXECUTE ON FUNCTION pgjobs.seal_batch(bigint) TO PUBLIC")
            granted = dump(conn)
        assert dump(conn) == before
    assert "    note text\n);" in with_column
    assert "CREATE INDEX jobs_note_idx ON pgjobs.jobs USING btree (name);" in with_index
    assert "REVOKE EXECUTE ON FUNCTION pgjobs.seal_batch(bigint) FROM PUBLIC;" in before
    assert "REVOKE EXECUTE ON FUNCTION pgjobs.seal_batch(bigint) FROM PUBLIC;" not in granted
