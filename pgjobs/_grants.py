"""The GRANT statements that give a database role one kind of access to pgjobs' schema.

The statements themselves are in :mod:`pgjobs._sql` (``GRANT_*``); this module picks them for the
roles named, quotes the names and explains each block, for ``pgjobs grants``. The roles are
described in docs/roles.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import _sql
from ._errors import ConfigError

KINDS = {
    "migrator": (_sql.GRANT_MIGRATOR, "owns the schema and runs `pgjobs migrate`"),
    "enqueuer": (_sql.GRANT_ENQUEUER, "inserts jobs, e.g. the web application"),
    "worker": (_sql.GRANT_WORKER, "runs `pgjobs worker`: claims jobs, writes their outcomes"),
    "inspector": (_sql.GRANT_INSPECTOR, "reads tables and views, e.g. dashboards, `pgjobs stats`"),
}
"""Each kind of role: its statements and what it is for, in the order they are printed."""

MAX_NAME_BYTES = 63
"""PostgreSQL's longest identifier; a longer role name would be cut short, naming another role."""


def grant_statements(schema: str, roles: Mapping[str, Sequence[str]]) -> str:
    """The statements for ``roles`` (kind → role names), a commented block per role.

    ``schema`` is a validated schema name; role names are quoted as identifiers, so any role
    name PostgreSQL accepts is written as it is. The statements can run again at no harm:
    run them after each ``pgjobs migrate``, which may add tables.
    """
    unknown = sorted(set(roles) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown kind of role {unknown[0]!r}; kinds: {', '.join(KINDS)}")
    if not any(roles.values()):
        raise ConfigError(
            "name at least one role: " + ", ".join(f"--{kind} ROLE" for kind in KINDS)
        )
    quoted_schema = quote_identifier(schema)
    blocks = [
        f"-- pgjobs schema {quoted_schema}, as a superuser: the migrator's statement before the"
        " first `pgjobs migrate`, the others after it and after each upgrade"
    ]
    for kind, (template, purpose) in KINDS.items():
        for role in roles.get(kind, ()):
            statements = template.format(schema=quoted_schema, role=quote_identifier(role))
            blocks.append(f"-- {kind} {quote_identifier(role)}: {purpose}\n{statements.strip()}")
    return "\n\n".join(blocks)


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier: ``"name"``, any ``"`` in it doubled."""
    if not name or "\x00" in name or len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(
            f"{name!r} is not a PostgreSQL name: 1 to {MAX_NAME_BYTES} bytes, no NUL character"
        )
    return '"' + name.replace('"', '""') + '"'
