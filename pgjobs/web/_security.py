"""Who may see the dashboard, and which requests may change something.

- **Authentication**: an ``auth`` hook takes the request and answers whether it may go on (a
  string answer is the user's name, for the log of actions). :class:`BasicAuth` and
  :class:`TokenAuth` are hooks for the standalone ``pgjobs web``; a host application passes its
  own. Each refuses a weak secret, and makes a client that failed too often wait (``_sign_in``).
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
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from starlette.requests import Request

from .._errors import ConfigError
from ._sign_in import GOOD_SECRET, MIN_PASSWORD, MIN_TOKEN, SignInThrottle, weakness

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
        ConfigError: the password is too weak: shorter than :data:`MIN_PASSWORD` characters, or
            see :func:`weakness`.
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
        ConfigError: the token is too weak: shorter than :data:`MIN_TOKEN` characters, or see
            :func:`weakness`.
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
