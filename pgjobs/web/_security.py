"""Who may see the dashboard, and which requests may change something.

- **Authentication**: an ``auth`` hook takes the request and answers whether it may go on (a
  string answer is the user's name, for the log of actions). :class:`BasicAuth` and
  :class:`TokenAuth` are hooks for the standalone ``pgjobs web``; a host application passes its
  own.
- **CSRF**: every form carries the token of a ``SameSite=Strict`` cookie (double submit), and a
  POST is taken only when its ``Origin`` (or, lacking one, its ``Referer``) names this host.
- **Headers**: a Content-Security-Policy that allows the dashboard's own script and style and
  nothing inline, no framing, no sniffing, no caching.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import ipaddress
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import ConfigError
from ._throttle import SignInThrottle

log = logging.getLogger("pgjobs.web")

Auth = Callable[[Request], "bool | str | Awaitable[bool | str]"]
"""An authentication hook: truthy lets the request in; a string is the user's name."""

CSRF_COOKIE = "pgjobs_csrf"
CSRF_FIELD = "csrf"
TOKEN_COOKIE = "pgjobs_token"  # noqa: S105 (a cookie name)

HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""Sent with every page and fragment."""


class Forbidden(Exception):
    """A state change refused: its message says why."""


class Unauthenticated(Exception):
    """The auth hook said no."""

    def __init__(self, challenge: str | None) -> None:
        super().__init__("sign in to see the dashboard")
        self.challenge = challenge


class TooManySignIns(Exception):
    """The client failed to sign in too often: its credentials are not checked for a while."""

    def __init__(self, wait: float) -> None:
        self.retry_after = max(math.ceil(wait), 1)
        super().__init__(
            f"too many failed sign-ins from your address: try again in {self.retry_after} s"
        )


def client_address(request: Request) -> str:
    """The address the request came from (as the server tells it), ``-`` if none."""
    return request.client.host if request.client else "-"


def _checked(throttle: SignInThrottle, client: str, user: str | None, right: bool) -> bool:
    """Whether a sign-in is let in: ``right``, and not from a client that must wait.

    Raises:
        TooManySignIns: the client failed too often lately; ``right`` was not looked at.
    """
    wait = throttle.wait(client)
    if wait > 0:
        log.warning(
            "sign-in refused unchecked: %s from %s failed too often; next try in %.0f s",
            _shown(user),
            client,
            wait,
            extra={"refused": "waiting", "client": client, "user": user},
        )
        raise TooManySignIns(wait)
    if right:
        throttle.succeeded(client)
        return True
    failures = throttle.failed(client)
    log.warning(
        "sign-in refused: wrong credentials for %s from %s (%d in a row)",
        _shown(user),
        client,
        failures,
        extra={"refused": "wrong", "client": client, "user": user},
    )
    return False


def _shown(user: str | None) -> str:
    """A user name given by anyone, for the log: quoted, so that it cannot forge a line."""
    return "-" if user is None else repr(user)


MIN_TOKEN = 16
"""Characters of a token, at least."""

MIN_PASSWORD = 8
"""Characters of a basic-auth password, at least."""

MIN_DIFFERENT = 5
"""Different characters in a token or password, at least."""

GOOD_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'  # noqa: S105 (advice)
"""How to make a good token or password."""


def weakness(secret: str, minimum: int) -> str | None:
    """Why ``secret`` is too weak to guard the dashboard (``None``: it is not): shorter than
    ``minimum`` characters, fewer than :data:`MIN_DIFFERENT` different ones, or white space at
    either end (which a copy and paste adds or drops unseen). The answer never quotes it."""
    if secret != secret.strip():
        return "it begins or ends with a space or another blank"
    if len(secret) < minimum:
        return f"it is shorter than {minimum} characters"
    if len(set(secret)) < MIN_DIFFERENT:
        return f"it has fewer than {MIN_DIFFERENT} different characters"
    return None


def _refuse_weak(secret: str, minimum: int, setting: str) -> None:
    problem = weakness(secret, minimum)
    if problem is not None:
        raise ConfigError(
            f"{setting} is too weak: {problem}; use at least {minimum} characters, random ones, "
            f"e.g. from {GOOD_SECRET}"
        )


@dataclass(frozen=True)
class BasicAuth:
    """An :data:`Auth` hook that takes HTTP basic credentials (compared in constant time); the
    browser asks for them.

    Raises:
        ConfigError: the password is shorter than :data:`MIN_PASSWORD` characters, has fewer
            than :data:`MIN_DIFFERENT` different ones, or begins or ends with white space.
    """

    user: str
    password: str = field(repr=False)
    throttle: SignInThrottle = field(default_factory=SignInThrottle, repr=False, compare=False)
    """Who failed to sign in lately, and how long each must wait."""
    challenge: ClassVar[str] = 'Basic realm="pgjobs", charset="UTF-8"'

    def __post_init__(self) -> None:
        _refuse_weak(self.password, MIN_PASSWORD, "the web password (PGJOBS_WEB_PASSWORD)")

    def __call__(self, request: Request) -> bool | str:
        """The user's name if the request carries the right credentials.

        Raises:
            TooManySignIns: its client failed too often lately (see :class:`SignInThrottle`).
        """
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False  # none given: the browser asks for them
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            given = b""
        expected = f"{self.user}:{self.password}".encode()
        right = hmac.compare_digest(given, expected)
        user = given.partition(b":")[0].decode(errors="replace") if given else None
        return self.user if _checked(self.throttle, client_address(request), user, right) else False


@dataclass(frozen=True)
class TokenAuth:
    """An :data:`Auth` hook that takes ``Authorization: Bearer <token>``, or the cookie that the
    dashboard's sign-in form sets.

    Raises:
        ConfigError: the token is shorter than :data:`MIN_TOKEN` characters, has fewer than
            :data:`MIN_DIFFERENT` different ones, or begins or ends with white space.
    """

    token: str = field(repr=False)
    throttle: SignInThrottle = field(default_factory=SignInThrottle, repr=False, compare=False)
    """Who failed to sign in lately, and how long each must wait."""

    def __post_init__(self) -> None:
        _refuse_weak(self.token, MIN_TOKEN, "PGJOBS_WEB_TOKEN (the web token)")

    def __call__(self, request: Request) -> bool:
        """Whether the request carries the token.

        Raises:
            TooManySignIns: its client failed too often lately (see :class:`SignInThrottle`).
        """
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = request.cookies.get(TOKEN_COOKIE, "")
        return self.signs_in(request, given)

    def signs_in(self, request: Request, given: str) -> bool:
        """Whether ``given``, sent by ``request``'s client, is the token; nothing given is no
        failed sign-in.

        Raises:
            TooManySignIns: the client failed too often lately; ``given`` was not looked at.
        """
        if not given:
            return False
        return _checked(self.throttle, client_address(request), None, self.accepts(given))

    def accepts(self, given: str) -> bool:
        """Whether ``given`` is the token (compared in constant time)."""
        return hmac.compare_digest(given.encode(), self.token.encode())


async def authenticated(auth: Auth | None, request: Request) -> str | None:
    """The user's name (``None`` if the hook gives none).

    Raises:
        Unauthenticated: the hook said no.
    """
    if auth is None:
        return None
    answer = auth(request)
    if inspect.isawaitable(answer):
        answer = await answer
    if not answer:
        raise Unauthenticated(getattr(auth, "challenge", None))
    return answer if isinstance(answer, str) else None


def csrf_token(request: Request) -> str:
    """This browser's CSRF token: its cookie's, or a new one that the response sets."""
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)


def check_state_change(request: Request, form: Mapping[str, str]) -> None:
    """Refuse a POST that another site could have sent.

    Raises:
        Forbidden: the form's token is not the cookie's, or the request comes from elsewhere.
    """
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None or urlsplit(origin).netloc != request.headers.get("host"):
        raise Forbidden("this form was sent from another site (Origin); reload the page")
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = form.get(CSRF_FIELD, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), given.encode()):
        raise Forbidden("this form's security token is missing or stale; reload the page")


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
    """ASGI middleware that answers only requests addressed to a loopback name.

    A dashboard without authentication listens on loopback only, but a page of another site
    can reach it there through a name of its own that resolves to 127.0.0.1 (DNS rebinding):
    the browser then sends that name as ``Host``, and this middleware refuses it.
    """

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
