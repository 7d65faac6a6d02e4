"""A loopback TCP proxy in front of PostgreSQL that can cut chosen connections on demand.

Network faults are what pgjobs' reconnect logic exists for, and they cannot be made by stopping
the server: a half-open link (no FIN, no RST, nothing arrives) and a reset both need something in
the path. The proxy reads each client's StartupMessage to learn its ``application_name``, so a test
can cut one pgjobs role (``...:claim``) and leave the others alone.

Its asyncio loop runs in a background thread, so synchronous tests drive it with plain calls.
Limit: the proxy's own kernel still acknowledges TCP keepalive probes on a blackholed link, so
only application-level timeouts notice a blackhole here, not ``keepalives_*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

T = TypeVar("T")
Matcher = str | Callable[[str], bool]

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def _predicate(matching: Matcher) -> Callable[[str], bool]:
    """A string matches application names ending with it; a callable is used as it is."""
    if isinstance(matching, str):
        suffix = matching
        return lambda name: name.endswith(suffix)
    return matching


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a connection with an RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _pause(writer: asyncio.StreamWriter) -> None:
    """Stop reading from a connection, leaving it open."""
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.pause_reading()


class _Link:
    """One client connection and, once its startup was forwarded, its server connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.application_name = ""
        self.named = False  # application_name is known
        self.state = "startup"  # then open, blackholed, reset or closed
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.pumps: list[asyncio.Task[None]] = []
        self.finished = asyncio.Event()

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client] if self.server is None else [self.client, self.server]


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to the target; ``blackhole`` and ``reset`` cut links."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._links: list[_Link] = []
        self._blackholes: list[Callable[[str], bool]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def start(self) -> FaultProxy:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Close every connection and the listener, then end the loop thread."""
        if self._loop is None or self._thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def url_for(self, base_url: str) -> str:
        """``base_url`` (postgresql://...) pointed at this proxy, with TLS off."""
        parts = urlsplit(base_url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "sslmode"]
        query.append(("sslmode", "disable"))
        return urlunsplit(
            parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}", query=urlencode(query))
        )

    def blackhole(self, matching: Matcher) -> int:
        """Stop forwarding, both ways, on matching links, now and for new ones until ``heal()``.

        Both sockets stay open: no FIN, no RST. Returns how many open links were cut.
        """
        return self._call(self._cut(_predicate(matching), reset=False))

    def reset(self, matching: Matcher) -> int:
        """Close matching links, blackholed ones too, with an RST to both ends; returns how many."""
        return self._call(self._cut(_predicate(matching), reset=True))

    def heal(self) -> None:
        """Let new connections through again; links already blackholed stay dead."""
        self._call(self._set_blackholes([]))

    def connections(self) -> list[tuple[str, str]]:
        """``(application_name, state)`` for every connection the proxy has accepted."""
        return self._call(self._snapshot())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "FaultProxy.start() first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _snapshot(self) -> list[tuple[str, str]]:
        return [(link.application_name, link.state) for link in self._links]

    async def _set_blackholes(self, rules: list[Callable[[str], bool]]) -> None:
        self._blackholes = rules

    async def _cut(self, matches: Callable[[str], bool], *, reset: bool) -> int:
        if not reset:
            self._blackholes.append(matches)
        cuttable = {"startup", "open", "blackholed"} if reset else {"startup", "open"}
        cut = 0
        for link in self._links:
            if link.state not in cuttable or not link.named:
                continue
            if not matches(link.application_name):
                continue
            cut += 1
            if reset:
                link.state = "reset"
                for writer in link.writers():
                    _abort(writer)
                link.finished.set()
            else:
                self._silence(link)
        return cut

    def _silence(self, link: _Link) -> None:
        link.state = "blackholed"
        for pump in link.pumps:
            pump.cancel()
        for writer in link.writers():
            _pause(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.append(link)
        try:
            startup = await self._read_startup(reader, writer)
            link.application_name = _application_name(startup)
            link.named = True
            if any(rule(link.application_name) for rule in self._blackholes):
                self._silence(link)
            else:
                server_reader, link.server = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
                if link.state == "startup":
                    link.server.write(startup)
                    link.state = "open"
                    link.pumps = [
                        asyncio.create_task(self._pump(link, reader, link.server)),
                        asyncio.create_task(self._pump(link, server_reader, writer)),
                    ]
                elif link.state == "blackholed":  # cut while we were connecting
                    _pause(link.server)
                else:
                    _abort(link.server)
            await link.finished.wait()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for pump in link.pumps:
                pump.cancel()
            if link.state in {"startup", "open"}:
                link.state = "closed"
            for each in link.writers():
                each.close()
                with contextlib.suppress(OSError):
                    await each.wait_closed()

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Not in a finally: a pump cancelled by blackhole() must leave its sockets open.
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            if link.state == "open":  # one end was reset: pass the RST on to the other
                link.state = "reset"
                for each in link.writers():
                    _abort(each)
        link.finished.set()

    @staticmethod
    async def _read_startup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """The client's StartupMessage (or CancelRequest), declining TLS and GSS encryption."""
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            packet = head + await reader.readexactly(length - 8)
            if code not in {SSL_REQUEST, GSSENC_REQUEST}:
                return packet
            writer.write(b"N")
            await writer.drain()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for link in self._links:
            for writer in link.writers():
                _abort(writer)
            link.finished.set()
        await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)


def _application_name(startup: bytes) -> str:
    """``application_name`` from a StartupMessage's key/value pairs ("" if absent)."""
    fields = startup[8:].split(b"\0")
    params = dict(zip(fields[0::2], fields[1::2], strict=False))
    return params.get(b"application_name", b"").decode(errors="replace")
