"""Which addresses and host names are this machine's alone, and the ASGI middleware that answers
only requests addressed to one: a server without authentication listens on loopback only, but a
page of another site can reach it there through a name of its own that resolves to 127.0.0.1
(DNS rebinding), and its browser then sends that name as ``Host``."""

from __future__ import annotations

import ipaddress
import re

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ._security import HEADERS


def is_loopback_address(address: str) -> bool:
    """Whether ``address`` (a listening address, without a port) is one only this machine
    reaches: an IPv4 address of 127.0.0.0/8 written as four decimal numbers, ``::1`` (bare or in
    brackets), or ``localhost``. A name that merely starts like one (``127.0.0.1.nip.io``) is
    another machine's as far as anyone knows."""
    if address == "localhost":
        return True
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return ip == _IPV6_LOOPBACK and ip.scope_id is None
    return ip in _IPV4_LOOPBACK


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine by a loopback address or ``localhost``, with
    or without a port: ``127.0.0.1:8188``, ``[::1]``, ``localhost``. Anything else (a name of a
    site's own that resolves to 127.0.0.1, ``127.1``, a trailing dot, user information, an empty
    header) is not."""
    found = _HOST.fullmatch(host)
    if found is None:
        return False
    return is_loopback_address(found["name"])


_HOST = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::[0-9]{1,5})?")
"""A ``Host`` header: a name or bracketed IPv6 address, then perhaps a port."""

_IPV4_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")


class LoopbackHosts:
    """ASGI middleware that answers only requests whose ``Host`` :func:`is_loopback_host`, and
    a 403 to any other."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_loopback_host(Headers(scope=scope).get("host", "")):
            response = PlainTextResponse(
                "without authentication this server answers only to a loopback address "
                "(127.0.0.1, [::1]) or localhost",
                status_code=403,
                headers=HEADERS,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
