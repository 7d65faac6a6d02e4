"""Test databases on a PostgreSQL server, each as cheap as its test allows.

:func:`migrated_template` makes a database migrated to the newest revision, for a pool to clone.

A :class:`DatabasePool` hands out clones of one template database (migrated, or empty). A clone a
test has finished with goes back to the pool emptied: its tables truncated, its sequences and
statistics reset, about 0.06 s instead of a clone and a drop. It is dropped instead when emptying
could not make it the template again: the test left a session connected, or changed what
truncation keeps (the catalog: tables, functions, grants, owners, the database's settings; or
the rows the template itself holds, such as the migration's version). So a test that changes
such things is isolated all the same; :meth:`DatabasePool.fresh` only spares it the check.

Each test process (each pytest-xdist worker) has pools of its own: every name is random.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from .. import _migrate, _settings
from .._errors import ConfigError
from ._server import DSN_VARIABLE

USER_SCHEMAS = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
"""The schemas a test may create or change (a ``pg_namespace n`` condition)."""

CATALOG = f"""
SELECT 'schema ' || n.nspname || ' ' || n.nspowner::regrole || ' ' || coalesce(n.nspacl::text, '')
  FROM pg_namespace n WHERE {USER_SCHEMAS}
UNION ALL
SELECT 'relation ' || c.oid || ' ' || c.oid::regclass || ' ' || c.relkind::text || ' '
       || c.relowner::regrole || ' ' || coalesce(c.relacl::text, '') || ' '
       || coalesce(c.reloptions::text, '') || ' ' || c.relpersistence::text || ' '
       || c.relrowsecurity || ' ' || c.relforcerowsecurity || ' ' || c.relreplident::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMAS}
UNION ALL
SELECT 'column ' || a.attrelid::regclass || ' ' || a.attnum || ' ' || a.attname || ' '
       || a.atttypid::regtype || ' ' || a.atttypmod || ' ' || a.attnotnull || ' '
       || a.attisdropped || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' '
       || coalesce(a.attacl::text, '')
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND {USER_SCHEMAS}
UNION ALL
SELECT 'constraint ' || co.conrelid::regclass || ' ' || co.contypid || ' ' || co.conname || ' '
       || pg_get_constraintdef(co.oid)
  FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace WHERE {USER_SCHEMAS}
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMAS}
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMAS}
UNION ALL
SELECT 'view ' || c.oid::regclass || ' ' || pg_get_viewdef(c.oid)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('v', 'm') AND {USER_SCHEMAS}
UNION ALL
SELECT 'sequence ' || s.seqrelid::regclass || ' ' || s.seqtypid::regtype || ' ' || s.seqstart
       || ' ' || s.seqincrement || ' ' || s.seqmin || ' ' || s.seqmax || ' ' || s.seqcycle
  FROM pg_sequence s
UNION ALL
SELECT 'function ' || p.oid || ' ' || p.oid::regprocedure || ' ' || p.proowner::regrole || ' '
       || coalesce(p.proacl::text, '') || ' ' || coalesce(p.proconfig::text, '') || ' '
       || p.prosecdef || ' ' || md5(coalesce(p.prosrc, ''))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMAS}
UNION ALL
SELECT 'type ' || t.oid::regtype || ' ' || t.typowner::regrole || ' '
       || coalesce(t.typacl::text, '')
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typrelid = 0 AND {USER_SCHEMAS}
UNION ALL
SELECT 'policy ' || p.polrelid::regclass || ' ' || p.polname || ' ' || p.polcmd::text || ' '
       || p.polpermissive || ' ' || p.polroles::text || ' '
       || coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' '
       || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
  FROM pg_policy p
UNION ALL
SELECT 'default acl ' || d.defaclrole::regrole || ' ' || d.defaclnamespace || ' '
       || d.defaclobjtype::text || ' ' || d.defaclacl::text
  FROM pg_default_acl d
UNION ALL
SELECT 'extension ' || e.extname || ' ' || e.extversion FROM pg_extension e
UNION ALL
SELECT 'event trigger ' || e.evtname FROM pg_event_trigger e
UNION ALL
SELECT 'settings ' || s.setrole || ' ' || s.setconfig::text
  FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
 WHERE d.datname = current_database()
UNION ALL
SELECT 'database ' || d.datdba::regrole || ' ' || coalesce(d.datacl::text, '') || ' '
       || d.datconnlimit || ' ' || d.datallowconn
  FROM pg_database d WHERE d.datname = current_database()
UNION ALL
SELECT 'large objects ' || count(*) FROM pg_largeobject_metadata
"""
"""One line per object a truncation does not reset, in no particular order."""

TABLES = f"""
SELECT format('%I.%I', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {USER_SCHEMAS}
 ORDER BY 1
"""

SEQUENCES = f"""
SELECT format('%I.%I', n.nspname, c.relname), coalesce(s.last_value, s.start_value),
       s.last_value IS NOT NULL
  FROM pg_sequences s
  JOIN pg_namespace n ON n.nspname = s.schemaname
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.sequencename
 WHERE {USER_SCHEMAS}
 ORDER BY 1
"""

SETTLE_SECONDS = 2.0
"""How long a released database's last sessions get to end (a killed worker's backends notice
at once; a backend still ending shows for a moment) before the database is dropped instead."""


def database_url_for(server_url: str, dbname: str) -> str:
    """``server_url`` (a postgresql:// URL) pointed at database ``dbname``."""
    parts = urlsplit(server_url)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ConfigError(f"{DSN_VARIABLE} must be a postgresql:// URL, not {server_url!r}")
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def unique_name(prefix: str) -> str:
    """A database name no other test process (nor other run on the server) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def migrated_template(
    server_url: str, prefix: str = "pgjobs_template", then: Callable[[str], None] | None = None
) -> Iterator[str]:
    """The name of a new database on ``server_url`` migrated to the newest revision (and given
    to ``then(url)``, to add tables of the tests' own), dropped at the end."""
    name = unique_name(prefix)
    create_database(server_url, name)
    try:
        url = database_url_for(server_url, name)
        _migrate.migrate(_settings.load_settings({"database_url": url}))
        if then is not None:
            then(url)
        yield name
    finally:
        drop_database(server_url, name)


class DatabasePool:
    """Clones of ``template`` (a database on ``server_url`` that nobody connects to) for tests.

    :meth:`lease` yields a clone as the template was: a new one, or one a test used and that
    :meth:`_reset` made the template again. :meth:`fresh` yields a new clone that is dropped
    afterwards. The template's catalog and the rows of its non-empty tables are read once,
    when the pool starts; a used clone whose own differ is dropped, not reset.
    """

    def __init__(self, server_url: str, template: str, prefix: str) -> None:
        self.server_url = server_url
        self.template = template
        self.prefix = prefix
        self._idle: list[str] = []
        self._leased: set[str] = set()
        self._admin = psycopg.connect(server_url, autocommit=True)
        with psycopg.connect(self.url(template), autocommit=True) as conn:
            tables = [row[0] for row in conn.execute(TABLES)]
            seeded = [
                t
                for t in tables
                if conn.execute(f"SELECT EXISTS (TABLE {t})").fetchone() == (True,)
            ]
            sequences = conn.execute(SEQUENCES).fetchall()
            self._fingerprint_query = CATALOG + "".join(
                f"UNION ALL SELECT 'rows {t} ' || coalesce((SELECT string_agg(r::text, ',' "
                f"ORDER BY r::text) FROM {t} r), '')\n"
                for t in seeded
            )
            self._fingerprint = self._read_fingerprint(conn)
        emptied = [t for t in tables if t not in seeded]
        steps = [f"TRUNCATE {', '.join(emptied)}"] if emptied else []
        steps += [f"SELECT setval('{name}', {last}, {called})" for name, last, called in sequences]
        steps.append("SELECT pg_stat_reset()")
        self._reset_script = ";\n".join(steps)

    def url(self, dbname: str) -> str:
        return database_url_for(self.server_url, dbname)

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        """The name of a database like the template, this test's alone until it ends."""
        name = self._idle.pop() if self._idle else self._clone()
        self._leased.add(name)
        try:
            yield name
        finally:
            self._leased.discard(name)
            if self._reset(name):
                self._idle.append(name)
            else:
                self._drop(name)

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        """The name of a new clone of the template, dropped at the end."""
        name = self._clone()
        self._leased.add(name)
        try:
            yield name
        finally:
            self._leased.discard(name)
            self._drop(name)

    def close(self) -> None:
        """Drop every clone (a test still running has lost its database) and let go."""
        for name in [*self._idle, *self._leased]:
            self._drop(name)
        self._idle.clear()
        self._admin.close()

    def _clone(self) -> str:
        name = unique_name(self.prefix)
        self._admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)
            )
        )
        return name

    def _drop(self, name: str) -> None:
        self._admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def _read_fingerprint(self, conn: psycopg.Connection[Any]) -> list[str]:
        return sorted(row[0] for row in conn.execute(self._fingerprint_query))

    def _settled(self, name: str) -> bool:
        """Whether no session (but a reset's own) is connected to ``name``, waiting a little."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            row = self._admin.execute(
                "SELECT (SELECT count(*) FROM pg_stat_activity"
                "         WHERE datname = %(name)s AND backend_type = 'client backend')"
                " + (SELECT count(*) FROM pg_prepared_xacts WHERE database = %(name)s)",
                {"name": name},
            ).fetchone()
            if row == (0,):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def _reset(self, name: str) -> bool:
        """Make ``name`` like the template again; ``False`` when it cannot be, so must go."""
        if not self._settled(name):
            return False  # a process the test left behind would go on using it
        try:
            with psycopg.connect(self.url(name), autocommit=True) as conn:
                if self._read_fingerprint(conn) != self._fingerprint:
                    return False
                conn.execute(self._reset_script)
        except psycopg.Error:
            return False  # a table gone, the database read-only, …: it is not the template
        return True
