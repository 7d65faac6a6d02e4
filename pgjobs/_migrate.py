"""Creating and upgrading pgjobs' tables with Alembic, and checking them before work starts."""

from __future__ import annotations

import functools
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from ._connection import connect, one_line
from ._errors import DatabaseError, SchemaError
from ._settings import Settings
from ._sql import queries_for

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("pgjobs")


def migrations_directory() -> Path:
    """Where the revisions are: inside the installed wheel, or ``migrations/`` in a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError(f"pgjobs migrations not found beside {package}; reinstall pgjobs")


@functools.cache
def head_revision() -> str:
    """The newest revision this version of pgjobs knows."""
    return max(_known_revisions())


@functools.cache
def _known_revisions() -> frozenset[str]:
    """Revision ids, read from the revision files' names (``0002_workers.py`` is ``0002``).

    Not through Alembic: a worker checks the schema at start, and importing Alembic and
    SQLAlchemy for that would cost it about 24 MB. A test holds this to Alembic's own answer.
    """
    versions = migrations_directory() / "versions"
    return frozenset(path.name.partition("_")[0] for path in versions.glob("[0-9]*_*.py"))


def migrate(settings: Settings) -> str | None:
    """Upgrade the schema to the newest revision. Safe to run again, and from two processes.

    Returns:
        The revision the schema was at before, ``None`` if it had no pgjobs tables.

    Raises:
        DatabaseError: the database refused, e.g. this role does not own the schema.
    """
    from alembic import command
    from alembic.util import CommandError
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: connect(settings, "pgjobs-migrate", autocommit=False),
        poolclass=NullPool,
    )
    config = _config(settings.schema)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except CommandError as exc:
        raise SchemaError(
            f"cannot migrate schema {settings.schema!r}: {exc}; if it was migrated by a newer "
            "pgjobs, upgrade pgjobs here too"
        ) from None
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.Error):
            raise _refused(settings.schema, "migrate", exc.orig) from None
        raise
    except psycopg.Error as exc:
        raise _refused(settings.schema, "migrate", exc) from None
    finally:
        engine.dispose()
    before: str | None = config.attributes.get("revision_before")
    return before


def migration_sql(schema: str) -> str:
    """The DDL of every revision, for a DBA to review and apply by hand."""
    from alembic import command

    buffer = io.StringIO()
    config = _config(schema, output=buffer)
    command.upgrade(config, "head", sql=True)
    return buffer.getvalue()


def schema_revision(settings: Settings) -> str | None:
    """The revision the database is at, or ``None`` when pgjobs' tables are not there."""
    with connect(settings, "pgjobs-check", limits=True) as conn:
        try:
            row = conn.execute(queries_for(settings.schema).schema_version).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        except psycopg.Error as exc:
            raise _refused(settings.schema, "read", exc) from None
    return None if row is None else str(row[0])


def _refused(schema: str, action: str, error: psycopg.Error) -> DatabaseError:
    """The database's refusal to ``action`` ("migrate", "read") ``schema``, on one line."""
    reason = error.diag.message_primary or one_line(error)
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        who = (
            "the role that owns it (or, for a new schema, one allowed to create schemas here)"
            if action == "migrate"
            else "a role granted USAGE on it"
        )
        return DatabaseError(f"cannot {action} schema {schema!r}: {reason}; connect as {who}")
    return DatabaseError(f"cannot {action} schema {schema!r}: {reason}")


def check_schema(settings: Settings) -> str:
    """The schema's revision; raise :class:`SchemaError` unless this pgjobs can work on it.

    The schema may be at this pgjobs' newest revision, or at a newer one that still serves it:
    migrations add and never change in place, and a revision that drops what older releases need
    records the oldest revision it still serves in ``schema_compatibility``. So during a rolling
    upgrade the previous release's workers go on (and start again) on the migrated schema.
    """
    current = schema_revision(settings)
    if current is None:
        raise SchemaError(
            f"pgjobs tables not found in schema {settings.schema!r}; run `pgjobs migrate` first"
        )
    if current in _known_revisions():
        if current != head_revision():
            raise SchemaError(
                f"pgjobs schema {settings.schema!r} is at revision {current}, this pgjobs needs "
                f"{head_revision()}; run `pgjobs migrate`"
            )
        return current
    oldest = _oldest_served(settings)
    if oldest is None or oldest > head_revision():
        raise SchemaError(
            f"pgjobs schema {settings.schema!r} is at revision {current}, which no longer serves "
            f"this pgjobs (revision {head_revision()}"
            + ("" if oldest is None else f"; it serves {oldest} and later")
            + "): upgrade pgjobs"
        )
    log.info(
        "pgjobs schema %r is at revision %s, newer than this pgjobs (%s) and serving it",
        settings.schema,
        current,
        head_revision(),
    )
    return current


def _oldest_served(settings: Settings) -> str | None:
    """The oldest revision whose code a newer schema still serves (``schema_compatibility``),
    or ``None`` when the schema does not say."""
    with connect(settings, "pgjobs-check", limits=True) as conn:
        try:
            row = conn.execute(queries_for(settings.schema).oldest_served_revision).fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
            return None
        except psycopg.Error as exc:
            raise _refused(settings.schema, "read", exc) from None
    return None if row is None else str(row[0])


def _config(schema: str, output: io.StringIO | None = None) -> Config:
    from alembic.config import Config

    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", str(migrations_directory()))
    config.attributes["schema"] = schema
    return config
