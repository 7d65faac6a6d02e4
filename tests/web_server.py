"""A dashboard served over real HTTP by uvicorn in a thread of the test process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

import pgjobs
from pgjobs.web import standalone
from tests.helpers import eventually


@contextmanager
def serving(
    app: pgjobs.App, asgi: Any = None, *, lifespan: bool = False, **options: Any
) -> Iterator[str]:
    """Serve ``asgi`` (by default the dashboard of ``app`` with ``options``, which closes the
    app's connections as it stops) on a free loopback port; yields its base URL."""
    config = uvicorn.Config(
        asgi or standalone(app, **options),
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="on" if asgi is None or lifespan else "off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started or thread.is_alive() is False)
        assert server.started, "the dashboard did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
