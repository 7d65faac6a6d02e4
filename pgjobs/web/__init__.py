"""The web dashboard (``pip install 'pgjobs[web]'``): an ASGI app to mount in a web application,
or to serve alone with ``pgjobs web``.

::

    from pgjobs.web import dashboard

    # Starlette or FastAPI
    app.mount("/jobs", dashboard(jobs_app, auth=lambda request: request.user.is_staff))

It shows the jobs of ``jobs_app``'s database (every worker's, on every host) and, unless
``read_only``, changes them with the same guarded statements as the CLI. See the guide's
"Dashboard" section. :func:`serve_metrics` serves the Prometheus metrics alone, behind the same
authentication (``pgjobs metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._app import App
from .._errors import ConfigError, DatabaseError
from .._settings import Settings
from ._actions import Actions
from ._listing import BadRequest
from ._metrics import metrics_application, metrics_page
from ._redaction import Redact, RedactError
from ._security import (
    TOKEN_COOKIE,
    Auth,
    BasicAuth,
    Forbidden,
    TokenAuth,
    TooManySignIns,
    Unauthenticated,
)
from ._server import alone, refuse_abroad, run
from ._site import Options, Site, error_page, root, secured
from ._views import Views

__all__ = [
    "Auth",
    "BasicAuth",
    "Redact",
    "RedactError",
    "TokenAuth",
    "dashboard",
    "serve",
    "serve_metrics",
    "standalone_auth",
]

log = logging.getLogger("pgjobs.web")


def dashboard(
    app: App,
    *,
    auth: Auth | None = None,
    read_only: bool = False,
    redact: Redact | None = None,
    metrics: bool = True,
    title: str = "pgjobs",
    redact_error: RedactError | None = None,
) -> Starlette:
    """The dashboard of ``app``'s jobs, as an ASGI application.

    Args:
        app: the App whose database to show; its registered jobs and cron entries are named.
        auth: called with each request (a Starlette ``Request``), sync or async: a false answer
            refuses it (401), a string answer is the user's name in the log of actions. ``None``
            lets everyone in: mount it behind your application's own authentication.
        read_only: show everything, change nothing (every POST is refused, no button shown).
        redact: ``(name, args, kwargs) -> (args, kwargs)``: the arguments to show for a job, for
            secrets in them. Every string or number (4 characters or more) it hides is blanked
            out of the job's error messages, tracebacks, unique key and partition too. With it,
            the search over arguments is off.
        metrics: serve Prometheus metrics at ``/metrics`` (needs ``pgjobs[metrics]``), behind
            the same ``auth``.
        title: the name at the top of each page.
        redact_error: ``(name, text) -> text``: what to show of each error message and
            traceback of a job (after ``redact``'s values are blanked out), for secrets that
            are not among its arguments.
    """
    site = Site(app, Options(auth, read_only, redact, title, redact_error))
    views, actions = Views(site), Actions(site)
    routes = [
        Route("/", views.overview, name="overview"),
        Route("/live", views.live, name="live"),
        Route("/queues", views.queues, name="queues"),
        Route("/queues/{name}/pause", actions.pause_queue, methods=["POST"], name="pause_queue"),
        Route("/queues/{name}/resume", actions.resume_queue, methods=["POST"], name="resume_queue"),
        Route("/jobs", views.jobs, name="jobs"),
        Route("/jobs/retry", actions.retry_all, methods=["POST"], name="retry_all"),
        Route("/jobs/{job_id}", views.job, name="job"),
        Route("/jobs/{job_id}/retry", actions.retry, methods=["POST"], name="retry"),
        Route("/jobs/{job_id}/cancel", actions.cancel, methods=["POST"], name="cancel"),
        Route("/jobs/{job_id}/delete", actions.delete, methods=["POST"], name="delete"),
        Route("/jobs/{job_id}/run", actions.run_now, methods=["POST"], name="run_now"),
        Route("/workers", views.workers, name="workers"),
        Route("/cron", views.cron, name="cron"),
        Route("/cron/{name:path}/pause", actions.pause_cron, methods=["POST"], name="pause_cron"),
        Route(
            "/cron/{name:path}/resume", actions.resume_cron, methods=["POST"], name="resume_cron"
        ),
        Route("/cron/{name:path}/run", actions.run_cron, methods=["POST"], name="run_cron"),
        Route("/batches", views.batches, name="batches"),
        Route("/sign-in", views.sign_in, name="sign_in"),
        Route("/sign-in", actions.sign_in, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("pgjobs.web", "static")]), name="static"),
    ]
    if metrics:
        routes.append(Route("/metrics", metrics_page(app, auth), name="metrics"))
    return Starlette(routes=routes, exception_handlers=_handlers(auth))


def serve(app: App, host: str, port: int, *, auth: Auth | None = None, **options: Any) -> None:
    """Serve :func:`dashboard` on ``http://host:port/`` with uvicorn until SIGTERM or SIGINT.

    Raises:
        ConfigError: ``host`` is not a loopback address and no ``auth`` is given.
        OSError: the address cannot be listened on (in use, not this host's, no such name).
    """
    refuse_abroad(host, auth, "the dashboard")
    run(standalone(app, auth=auth, **options), host, port, "the dashboard", "/")


def serve_metrics(app: App, host: str, port: int, *, auth: Auth | None = None) -> None:
    """Serve ``app``'s Prometheus metrics (``pgjobs[metrics]``) on ``http://host:port/metrics``
    with uvicorn until SIGTERM or SIGINT, behind ``auth`` as the dashboard would be: without it,
    only on a loopback address and to loopback host names.

    Raises:
        ConfigError: ``host`` is not a loopback address and no ``auth`` is given.
        OSError: the address cannot be listened on (in use, not this host's, no such name).
    """
    refuse_abroad(host, auth, "metrics")
    run(metrics_application(app, auth), host, port, "metrics", "/metrics")


def standalone(app: App, *, auth: Auth | None = None, **options: Any) -> Starlette:
    """:func:`dashboard` as the whole application of a server: it closes ``app``'s connections
    when the server stops, and without ``auth`` it answers only to loopback host names."""
    return alone(dashboard(app, auth=auth, **options), app, auth)


def standalone_auth(settings: Settings) -> Auth | None:
    """The authentication that ``web_user``/``web_password`` or ``web_token`` ask for.

    Raises:
        ConfigError: only half of the basic credentials, or both kinds, are given; the password
            or token is too weak (see :class:`BasicAuth` and :class:`TokenAuth`).
    """
    basic = (settings.web_user, settings.web_password)
    if (basic[0] is None) != (basic[1] is None):
        raise ConfigError(
            "web_user and web_password go together: give --user (PGJOBS_WEB_USER) and "
            "PGJOBS_WEB_PASSWORD, or neither"
        )
    if settings.web_user is not None and settings.web_token is not None:
        raise ConfigError("give a web user and password, or a web token; not both")
    if settings.web_user is not None and settings.web_password is not None:
        return BasicAuth(settings.web_user, settings.web_password)
    if settings.web_token is not None:
        return TokenAuth(settings.web_token)
    return None


def _database_trouble(exc: DatabaseError | psycopg.Error) -> str:
    """What to tell of a database error: pgjobs' own message, or the server's reason for a
    refusal (a read-only database, a lock wait that ran out); never a connection string."""
    if isinstance(exc, DatabaseError):
        return str(exc)
    reason = exc.diag.message_primary
    if reason:
        return f"the database refused: {reason}; nothing was changed"
    return "the database cannot answer now; try again soon"


def _handlers(auth: Auth | None) -> dict[Any, Callable[[Request, Exception], Any]]:
    def refused(request: Request, exc: Exception) -> Response:
        if isinstance(exc, Unauthenticated):
            response = error_page(request, 401, str(exc))
            if exc.challenge:
                response.headers["WWW-Authenticate"] = exc.challenge
            elif isinstance(auth, TokenAuth):
                sign_in = request.url_for("sign_in").path
                response = RedirectResponse(sign_in, status_code=303)
                if TOKEN_COOKIE in request.cookies:  # a stale token: sent again, it fails again
                    response.delete_cookie(TOKEN_COOKIE, path=root(request))
                return secured(response, request)
            return response
        if isinstance(exc, TooManySignIns):
            response = error_page(request, 429, str(exc))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        if isinstance(exc, BadRequest):
            return error_page(request, 400, str(exc))
        if isinstance(exc, Forbidden):
            return error_page(request, 403, str(exc))
        if isinstance(exc, HTTPException):
            return error_page(request, exc.status_code, str(exc.detail))
        if isinstance(exc, DatabaseError | psycopg.Error):
            log.warning("dashboard: the database cannot answer: %s", exc)
            return error_page(request, 503, _database_trouble(exc))
        log.error("dashboard: %s failed", request.url.path, exc_info=exc)
        return error_page(request, 500, "something went wrong; the log says what")

    kinds = (
        Unauthenticated,
        TooManySignIns,
        BadRequest,
        Forbidden,
        HTTPException,
        DatabaseError,
        psycopg.Error,
    )
    return {**dict.fromkeys(kinds, refused), Exception: refused}
