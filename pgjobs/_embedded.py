"""An embedded PostgreSQL for trying pgjobs with no database configured.

Uses the ``pgserver`` wheel (``pip install 'pgjobs[embedded]'``) with its data in ``./.pgjobs/``.
Production always names its database; this exists so a newcomer can run a worker in one command.

The server runs while a pgjobs process uses it: each records its pid in
``./.pgjobs/.handle_pids.json``, and the last one to let go stops it (:func:`stop_embedded_server`,
at interpreter exit or before ``os._exit``). A process killed outright cannot let go; the next one
to let go forgets it.
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from ._errors import ConfigError

log = logging.getLogger("pgjobs")

DATA_DIRECTORY = Path(".pgjobs")

_server: Any = None


def embedded_database_url() -> str:
    """Start (or reuse) the embedded server and return its URL; this process lets go of it at
    exit (see :func:`stop_embedded_server`)."""
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
        atexit.register(stop_embedded_server)  # runs first; pgserver's own hook then does nothing
    url: str = _server.get_uri()
    log.info(
        "no database configured: using embedded PostgreSQL in ./%s/ (set PGJOBS_DATABASE_URL "
        "to use your own)",
        DATA_DIRECTORY,
    )
    return url


def stop_embedded_server() -> None:
    """Let go of the embedded server, stopping it unless another live process uses it; nothing
    if this process did not start one. Runs at interpreter exit: call it before ``os._exit``."""
    global _server
    server, _server = _server, None
    if server is None:
        return
    with server._lock:  # pgserver's lock on the list of pids, across processes
        pids = server.global_process_id_list
        for pid in pids.get():
            if not _alive(pid):
                pids.get_and_remove(pid)
    server.cleanup()  # the last one out stops it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
