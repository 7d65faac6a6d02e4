"""The PostgreSQL server the comparison runs on: one fresh database per measurement."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class SetupError(Exception):
    """The comparison cannot run at all (bad URL, server unreachable): one line for the user."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class Server:
    """Creates and drops the ``bench_<system>_<n>`` databases on the server ``url`` points to.

    ``url`` must be a ``postgresql://`` URL whose user may create databases; its own database
    is only used to create and drop the others.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.netloc:
            raise SetupError(
                f"--database-url {url!r}: expected a URL such as "
                "postgresql://postgres@127.0.0.1:5432/test"
            )
        self.url = url
        self._counter = 0
        try:
            self._admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise SetupError(f"cannot connect to {url}: {_one_line(exc)}") from None

    def close(self) -> None:
        self._admin.close()

    def url_for(self, database: str) -> str:
        """``url`` pointing at another database on the same server."""
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def facts(self) -> dict[str, Any]:
        """The server's version and the settings that move the figures, for the JSON report."""
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "shared_buffers",
            "max_wal_size",
            "wal_level",
        )
        rows = self._admin.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
            (list(names),),
        ).fetchall()
        return {str(name): str(value) for name, value in rows}

    @contextmanager
    def database(self, system: str) -> Iterator[str]:
        """A new, empty ``bench_<system>_<n>`` database for one measurement; dropped afterwards."""
        self._counter += 1
        name = f"bench_{system}_{self._counter}".replace("-", "_").lower()
        if not _NAME.fullmatch(name):
            raise SetupError(f"{name!r} is not a usable database name")
        self._drop(name)
        try:
            self._admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise SetupError(f"cannot create database {name}: {_one_line(exc)}") from None
        try:
            yield self.url_for(name)
        finally:
            self._drop(name)

    def _drop(self, name: str) -> None:
        self._admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def settle(url: str) -> None:
    """After a pre-fill and before a timed burn-down, for every system alike: fresh planner
    statistics, and a checkpoint so none falls inside the timed window."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        with suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")
