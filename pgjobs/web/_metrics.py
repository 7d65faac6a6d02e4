"""Prometheus metrics over HTTP (``pgjobs[metrics]``): the dashboard's ``/metrics`` page, and the
whole application of ``pgjobs metrics``, both behind the dashboard's authentication."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .._app import App
from ._security import HEADERS, Auth, TooManySignIns, Unauthenticated, authenticated
from ._server import alone
from ._site import secured

BEARER_CHALLENGE = 'Bearer realm="pgjobs"'
"""What a scraper without the token is told to send."""


def metrics_page(app: App, auth: Auth | None) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint that answers a scrape of ``app``'s metrics, behind ``auth``."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from ..metrics import registry

    collectors = registry(app)

    async def metrics(request: Request) -> Response:
        await authenticated(auth, request)
        body = await run_in_threadpool(generate_latest, collectors)
        return secured(Response(body, media_type=CONTENT_TYPE_LATEST), request)

    return metrics


def metrics_application(app: App, auth: Auth | None) -> Starlette:
    """The application of ``pgjobs metrics``: ``/metrics`` behind ``auth`` and nothing else; it
    closes ``app``'s connections as the server stops, and without ``auth`` answers only to
    loopback host names."""

    def refused(request: Request, exc: Exception) -> Response:
        if isinstance(exc, TooManySignIns):
            headers = {**HEADERS, "Retry-After": str(exc.retry_after)}
            return PlainTextResponse(str(exc), status_code=429, headers=headers)
        challenge = getattr(exc, "challenge", None) or BEARER_CHALLENGE
        headers = {**HEADERS, "WWW-Authenticate": challenge}
        return PlainTextResponse("authentication required", status_code=401, headers=headers)

    web = Starlette(
        routes=[Route("/metrics", metrics_page(app, auth))],
        exception_handlers={Unauthenticated: refused, TooManySignIns: refused},
    )
    return alone(web, app, auth)
