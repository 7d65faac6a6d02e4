"""Alembic environment for pgjobs' own tables.

Run through ``pgjobs migrate`` (or :func:`pgjobs.migrate`), which passes the target schema in
``config.attributes["schema"]`` and, online, a connection in ``config.attributes["connection"]``.
The version table lives inside the pgjobs schema, so pgjobs never shares the application's
``alembic_version``. A transaction-level advisory lock makes concurrent migrations wait for each
other instead of racing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

config = context.config
schema: str = config.attributes["schema"]

if context.is_offline_mode():
    context.configure(
        url="postgresql://",
        literal_binds=True,
        version_table_schema=schema,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        context.run_migrations()
else:
    connection = config.attributes["connection"]
    with connection.begin():
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"pgjobs.migrate:{schema}"},
        )
        # a schema made for a migrator role (CREATE SCHEMA ... AUTHORIZATION) is used as it is:
        # the role may lack CREATE on the database, which CREATE SCHEMA IF NOT EXISTS checks first
        if not connection.execute(
            text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
        ).first():
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        context.configure(
            connection=connection, version_table_schema=schema, transactional_ddl=True
        )
        # read under the lock: what this run found, for `pgjobs migrate`'s "0004 -> 0005"
        config.attributes["revision_before"] = context.get_context().get_current_revision()
        context.run_migrations()
