"""What every page and action of the dashboard shares: its settings, the database, rendering
with the security headers, and the log of actions."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, unquote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from .._app import App
from ._counts import CAP, Count, counted, plan_rows
from ._listing import job_id
from ._redaction import Redact, RedactError, redacted
from ._security import CSRF_COOKIE, HEADERS, Auth, authenticated, csrf_token
from ._sql import NO_JIT, WebQueries, web_queries_for

log = logging.getLogger("pgjobs.web")

NOTICE_COOKIE = "pgjobs_notice"
"""What the last action did, shown once on the page it returns to."""


@dataclass(frozen=True)
class Options:
    """How a dashboard was made (see :func:`pgjobs.web.dashboard`)."""

    auth: Auth | None
    read_only: bool
    redact: Redact | None
    title: str
    redact_error: RedactError | None = None


class Site:
    """One dashboard: the App whose database it shows, its options and its templates."""

    def __init__(self, app: App, options: Options) -> None:
        self.app = app
        self.options = options
        self.web: WebQueries = web_queries_for(app.settings.schema)
        environment = Environment(
            loader=PackageLoader("pgjobs.web", "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        environment.filters.update(
            ago=ago, moment=moment, seconds=seconds, pretty=pretty, brief=brief, segment=segment
        )
        self.templates = Jinja2Templates(env=environment)

    async def rows(self, *statements: tuple[str, Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
        """The rows of each statement, run one after the other in one transaction on pgjobs'
        pool, never prepared (a generic plan could not use the partial index that each page's
        state selects) and never compiled by JIT (whose start-up, tens of milliseconds, the
        planner's guesses about small tables can set off for statements that take one)."""
        _, *results = await self.app._read_async((NO_JIT, {}), *statements)
        return results

    async def count(self, exact: int, state: str, queue: str | None = None) -> Count:
        """``exact`` jobs of ``state`` (in ``queue``) counted up to the cap, or the planner's
        estimate if it was reached."""
        if exact < CAP:
            return counted(exact)
        (rows,) = await self.rows((self.web.estimate_jobs, {"state": state, "queue": queue}))
        return counted(exact, plan_rows(rows[0]["QUERY PLAN"]))

    def shown(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """``job`` as the redact hooks let it be seen: its arguments, and its errors and other
        texts without the values hidden from its arguments."""
        return redacted(job, self.options.redact, self.options.redact_error)

    async def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        fragment: bool = False,
        **context: Any,
    ) -> Response:
        """A page with its headers; a ``fragment`` (the part that live refresh fetches) leaves
        the notice of the last action to the next whole page."""
        token = csrf_token(request)
        notice = None if fragment else request.cookies.get(NOTICE_COOKIE)
        response = self.templates.TemplateResponse(
            request,
            template,
            {
                "options": self.options,
                "csrf": token,
                "here": _here(request),
                "notice": None if notice is None else unquote(notice),
                **context,
            },
            status_code=status,
        )
        if notice is not None:
            response.delete_cookie(NOTICE_COOKIE, path=root(request))
        return secured(response, request, token)

    def logged(self, request: Request, user: str | None, action: str, target: object) -> None:
        client = request.client.host if request.client else "-"
        log.info(
            "dashboard: %s %s by %s from %s",
            action,
            target,
            user or "-",
            client,
            extra={"action": action, "target": str(target), "user": user, "client": client},
        )

    async def user(self, request: Request) -> str | None:
        return await authenticated(self.options.auth, request)


def secured(response: Response, request: Request, token: str | None = None) -> Response:
    """``response`` with the security headers, and the CSRF cookie if the browser has none."""
    response.headers.update(HEADERS)
    if token is not None and request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=root(request),
        )
    return response


def error_page(request: Request, status: int, message: str) -> Response:
    """A plain page for a refused request: no template, no traceback, nothing from the app."""
    home = escape(root(request))
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>pgjobs: "
        f"{status}</title><h1>{status}</h1><p>{escape(message)}</p>"
        f'<p><a href="{home}">The dashboard</a></p></html>'
    )
    return secured(HTMLResponse(body, status_code=status), request)


def path_job_id(request: Request) -> int:
    """The job id the path names.

    Raises:
        HTTPException: 404, it names none (not a number, or beyond a ``bigint``).
    """
    text: str = request.path_params["job_id"]
    found = job_id(text)
    if found is None:
        shown = text if len(text) <= 30 else text[:29] + "…"
        raise HTTPException(404, f"there is no job {shown}")
    return found


def root(request: Request) -> str:
    """The path the dashboard is mounted at, ``/`` at the top."""
    mounted: str = request.scope.get("root_path") or ""
    return mounted + "/" if not mounted.endswith("/") else mounted


def _here(request: Request) -> str:
    """The page's own path and query, where an action returns to."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``3 s ago``, ``in 5 min``: a moment relative to now."""
    if moment is None:
        return "-"
    delta = ((now or datetime.now(UTC)) - moment).total_seconds()
    text = seconds(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.1f} s"


def moment(value: datetime | str | None) -> str:
    """A moment in UTC to the second; ``value`` may be ISO 8601 text (an error's ``at``)."""
    if value is None:
        return "-"
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        return str(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def segment(value: str) -> str:
    """``value`` as one segment of a path (for a ``path`` parameter): every ``/``, ``%``, ``?``,
    ``#``, space or other character that is not plain ASCII percent-encoded."""
    return quote(value, safe="")


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def brief(value: Sequence[Any] | Mapping[str, Any] | None, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
