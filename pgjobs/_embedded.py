"""An embedded PostgreSQL for trying pgjobs with no database configured.

Uses the ``pgserver`` wheel (``pip install 'pgjobs[embedded]'``) with its data in ``./.pgjobs/``.
Production always names its database; this exists so a newcomer can run a worker in one command.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from ._errors import ConfigError

log = logging.getLogger("pgjobs")

DATA_DIRECTORY = Path(".pgjobs")

_server: Any = None


def embedded_database_url() -> str:
    """Start (or reuse) the embedded server and return its URL; it stops when this process ends."""
    global _server
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import pgserver
    except ImportError:
        raise ConfigError(
            "no database configured: set PGJOBS_DATABASE_URL (or DATABASE_URL), or install "
            "the embedded server with `pip install 'pgjobs[embedded]'`"
        ) from None
    if _server is None:
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        DATA_DIRECTORY.mkdir(exist_ok=True)
        start = pgserver.get_server  # type: ignore[attr-defined]
        _server = start(DATA_DIRECTORY.resolve(), cleanup_mode="stop")
    url: str = _server.get_uri()
    log.info(
        "no database configured: using embedded PostgreSQL in ./%s/ (set PGJOBS_DATABASE_URL "
        "to use your own)",
        DATA_DIRECTORY,
    )
    return url
