"""Opening pgjobs' own connections, and finding the psycopg connection behind a caller's object.

Every connection pgjobs opens names itself in ``application_name`` (``pgjobs-worker:<id>:<role>``
for workers), turns on TCP keepalives, and can skip prepared statements for transaction poolers.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg
import psycopg.conninfo

from ._errors import ConfigError, DatabaseError
from ._settings import Settings, mask_password

if TYPE_CHECKING:  # SQLAlchemy is imported only where a caller's object is unwrapped
    from sqlalchemy.engine import Connection as SQLAlchemyConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SQLAlchemyAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

Connection: TypeAlias = "psycopg.Connection[Any] | Session | SQLAlchemyConnection | None"
"""What ``conn=`` (and :meth:`Job.using <pgjobs.Job.using>`) takes in sync code: a psycopg 3
``Connection``, or a SQLAlchemy ``Session`` or ``Connection`` on the psycopg 3 driver, whose
transaction the call joins; ``None`` for pgjobs' own pool, where each call commits at once."""

AsyncConnection: TypeAlias = (
    "psycopg.AsyncConnection[Any] | AsyncSession | SQLAlchemyAsyncConnection | None"
)
"""What ``conn=`` takes in async code (the ``_async`` methods): a psycopg 3 ``AsyncConnection``
or a SQLAlchemy ``AsyncSession`` or ``AsyncConnection``; ``None`` for pgjobs' own pool."""

KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}

SERVER_STATEMENT_TIMEOUT = 30.0
"""Seconds the server lets a statement of pgjobs' own run (its statements take milliseconds)."""

LOCK_TIMEOUT = 3.0
"""Seconds a statement of pgjobs' own waits for a lock before failing with who holds it."""


def connect_kwargs(
    settings: Settings, application_name: str, *, limits: bool = False
) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.[Async]Connection.connect`` under ``settings``.

    ``limits``: the connection sets its own ``statement_timeout`` and ``lock_timeout`` (worker
    links, the client pool), so that a tiny server default cannot starve it and a lock held on
    the jobs table cannot hold it for long. Not behind a transaction pooler (``poll_only`` or no
    prepared statements), which may refuse startup options.
    """
    if not settings.database_url:
        raise DatabaseError(
            "no database configured: set PGJOBS_DATABASE_URL (or DATABASE_URL), "
            "or pass database_url=..."
        )
    conninfo = to_libpq_url(settings.database_url)
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        raise ConfigError(_malformed(settings.database_url)) from None
    kwargs = {
        "conninfo": conninfo,
        "application_name": application_name[:63],
        "connect_timeout": max(1, round(settings.connect_timeout)),
        "prepare_threshold": 5 if settings.prepared_statements else None,
        **KEEPALIVES,
    }
    if limits and settings.prepared_statements and not settings.poll_only:
        # first, so that settings of the user's own (the URL's options, else PGOPTIONS) win
        own = params.get("options") or os.environ.get("PGOPTIONS", "")
        kwargs["options"] = (
            f"-c statement_timeout={SERVER_STATEMENT_TIMEOUT * 1000:.0f} "
            f"-c lock_timeout={LOCK_TIMEOUT * 1000:.0f} {own}"
        ).strip()
    return kwargs


def _malformed(url: str) -> str:
    """Why ``url`` does not parse, without its password: libpq's reasons quote the text they
    choke on, so they are taken from parsing the masked text."""
    masked = mask_password(url)
    try:
        psycopg.conninfo.conninfo_to_dict(to_libpq_url(masked))
    except psycopg.ProgrammingError as exc:
        reason = one_line(exc)
    else:
        reason = (
            "its password does not parse: in a URL, percent-encode @ : / ? # % and spaces in it "
            "(%40 for @)"
        )
    return (
        f"database_url: {masked!r} is not a PostgreSQL URL or DSN ({reason}); "
        "expected e.g. postgresql://user@host:5432/dbname"
    )


def one_line(error: BaseException) -> str:
    """A driver error's message on one line (libpq's span several, with tabs)."""
    return " ".join(str(error).split())


def to_libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (``postgresql+psycopg://``) as well as libpq ones."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith(("postgresql+", "postgres+")):
        return f"postgresql://{rest}"
    return url


def connect(
    settings: Settings, application_name: str, *, autocommit: bool = True, limits: bool = False
) -> psycopg.Connection[Any]:
    """A new (autocommit) connection; connection failures become :class:`DatabaseError`."""
    try:
        return psycopg.Connection.connect(
            autocommit=autocommit, **connect_kwargs(settings, application_name, limits=limits)
        )
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the database: {one_line(exc)}") from exc


async def connect_async(
    settings: Settings, application_name: str, *, limits: bool = False
) -> psycopg.AsyncConnection[Any]:
    """The async twin of :func:`connect`."""
    try:
        return await psycopg.AsyncConnection.connect(
            autocommit=True, **connect_kwargs(settings, application_name, limits=limits)
        )
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to the database: {one_line(exc)}") from exc


def check_connection(settings: Settings, application_name: str) -> None:
    """Connect once and hang up, raising :class:`DatabaseError` with the server's reason.

    A connection pool retries a refused connection quietly until its timeout; done before a pool
    opens, this says at once that the password is wrong or the database does not exist.
    """
    connect(settings, application_name).close()


async def check_connection_async(settings: Settings, application_name: str) -> None:
    """The async twin of :func:`check_connection`."""
    await (await connect_async(settings, application_name)).close()


def unwrap_sync(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection behind a psycopg or SQLAlchemy ``Connection``, or a ``Session``.

    Work done on it joins the caller's current transaction (and savepoint).
    """
    if isinstance(conn, psycopg.Connection):
        return conn
    driver = _sqlalchemy_driver_connection(conn)
    if isinstance(driver, psycopg.Connection):
        return driver
    raise TypeError(_unsupported(conn))


async def unwrap_async(conn: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg async connection behind a psycopg ``AsyncConnection`` or SQLAlchemy
    ``AsyncSession``/``AsyncConnection``."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, AsyncConnection):
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if isinstance(driver, psycopg.AsyncConnection):
            return driver
    raise TypeError(_unsupported(conn))


def _sqlalchemy_driver_connection(conn: Any) -> Any:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, Connection):
        return conn.connection.driver_connection
    return None


def _unsupported(conn: Any) -> str:
    return (
        f"cannot enqueue on a {type(conn).__module__}.{type(conn).__qualname__}: pass a psycopg 3 "
        "connection or a SQLAlchemy Session/Connection using the psycopg driver "
        "(postgresql+psycopg://); use enqueue_async for async connections and sessions"
    )
