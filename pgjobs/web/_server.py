"""Serving one of pgjobs' ASGI applications alone (``pgjobs web``, ``pgjobs metrics``): no
address abroad without authentication, only loopback host names without it, the socket bound
before uvicorn starts, and the App's connections closed as the server stops."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from starlette.applications import Starlette

from .._app import App
from .._errors import ConfigError
from ._loopback import LoopbackHosts, is_loopback_address
from ._security import Auth

log = logging.getLogger("pgjobs.web")


def refuse_abroad(host: str, auth: Auth | None, what: str) -> None:
    """Refuse to serve ``what`` on a ``host`` that is not loopback without ``auth``.

    Raises:
        ConfigError: saying how to give authentication.
    """
    if auth is None and not is_loopback_address(host):
        raise ConfigError(
            f"refusing to serve {what} on {host} without authentication: give --user and "
            "PGJOBS_WEB_PASSWORD, or PGJOBS_WEB_TOKEN, or listen on 127.0.0.1 behind a proxy "
            "that authenticates"
        )


def alone(web: Starlette, app: App, auth: Auth | None) -> Starlette:
    """``web`` as the whole application of a server: it closes ``app``'s connections when the
    server stops, and without ``auth`` it answers only to loopback host names."""

    @asynccontextmanager
    async def closing(web: Starlette) -> AsyncIterator[None]:
        yield
        await app.aclose()

    web.router.lifespan_context = closing
    if auth is None:
        web.add_middleware(LoopbackHosts)
    return web


def run(web: Starlette, host: str, port: int, what: str, path: str) -> None:
    """Serve ``web`` on ``http://host:port`` with uvicorn until SIGTERM or SIGINT, saying that
    ``what`` is served at ``path``.

    Raises:
        OSError: the address cannot be listened on (in use, not this host's, no such name).
    """
    import uvicorn

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.create_server((host, port), family=family) as listening:
        config = uvicorn.Config(
            web,
            host=host,
            port=listening.getsockname()[1],
            log_config=None,
            access_log=False,
            server_header=False,
        )
        shown = f"[{host}]" if ":" in host else host
        log.info("serving %s on http://%s:%s%s", what, shown, config.port, path)
        with _stopping_cleanly():
            uvicorn.Server(config).run(sockets=[listening])


@contextmanager
def _stopping_cleanly() -> Iterator[None]:
    """Make a stop on SIGTERM or SIGINT a normal return: once stopped, uvicorn raises the signal
    again for the handler it found, which by default would end the process by that signal (or
    with a KeyboardInterrupt) rather than with exit status 0."""
    if threading.current_thread() is not threading.main_thread():
        yield  # uvicorn takes no signal there either
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, _handled) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _handled(signum: int, frame: object) -> None:
    """The signal stopped the server already."""
