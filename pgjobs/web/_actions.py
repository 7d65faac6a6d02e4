"""The dashboard's state changes: each a POST that passes authentication, the read-only switch
and the CSRF checks, calls one of the app's admin operations (the ones the CLI calls, each one
guarded statement), logs who did what, and returns to the page it came from with a notice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qsl, quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .._settings import QUEUE_NAME
from ._listing import BadRequest, filters
from ._security import TOKEN_COOKIE, Forbidden, TokenAuth, check_state_change
from ._site import NOTICE_COOKIE, Site, path_job_id, root, secured

T = TypeVar("T")

MAX_FORM = 16 * 1024
"""Bytes of a form: the dashboard's forms hold a few short fields."""

RETRYABLE_STATES = ("retryable", "discarded", "cancelled", "completed")
"""What "retry all" may be asked for."""

Change = Callable[[Request, dict[str, str]], Awaitable[tuple[str, object, str]]]
"""A change: ``(request, form) -> (action, target, notice)``."""


class Actions:
    """The POST endpoints of one :class:`Site`."""

    def __init__(self, site: Site) -> None:
        self.site = site

    async def _change(self, request: Request, change: Change) -> Response:
        if self.site.options.read_only:
            raise Forbidden("this dashboard is read-only")
        user = await self.site.user(request)
        form = await _form(request)
        check_state_change(request, form)
        action, target, notice = await change(request, form)
        self.site.logged(request, user, action, target)
        response = RedirectResponse(_back(request, form), status_code=303)
        response.set_cookie(  # quoted: a header is Latin-1, a job's name may not be
            NOTICE_COOKIE,
            quote(notice),
            max_age=60,
            httponly=True,
            samesite="strict",
            path=root(request),
        )
        return secured(response, request)

    async def retry(self, request: Request) -> Response:
        async def change(request: Request, form: dict[str, str]) -> tuple[str, object, str]:
            job_id = path_job_id(request)
            if not await self._refused_as_conflict(self.site.app.retry_async(job_id)):
                raise HTTPException(404, f"there is no job {job_id}")
            return "retry", f"job {job_id}", f"job {job_id} will run again"

        return await self._change(request, change)

    async def retry_all(self, request: Request) -> Response:
        async def change(request: Request, form: dict[str, str]) -> tuple[str, object, str]:
            state = form.get("state", "discarded")
            if state not in RETRYABLE_STATES:
                raise BadRequest(f"retry all takes one of {', '.join(RETRYABLE_STATES)}")
            queue, name = filters(form)
            count = await self._refused_as_conflict(
                self.site.app.retry_all_async(
                    states=[state],
                    queues=None if queue is None else [queue],
                    names=None if name is None else [name],
                )
            )
            target = f"{state} jobs" + (f" of queue {queue}" if queue else "")
            target += f" named {name}" if name else ""
            return "retry all", target, f"{count} {target} will run again"

        return await self._change(request, change)

    async def cancel(self, request: Request) -> Response:
        async def change(request: Request, form: dict[str, str]) -> tuple[str, object, str]:
            job_id = path_job_id(request)
            outcome = await self._refused_as_conflict(self.site.app.cancel_async(job_id))
            if outcome is None:
                raise HTTPException(404, f"there is no job {job_id}")
            notices = {
                "cancelled": f"job {job_id} cancelled",
                "cancelling": f"job {job_id} is running: its worker was told to cancel it",
            }
            return "cancel", f"job {job_id}", notices.get(outcome, f"job {job_id}: {outcome}")

        return await self._change(request, change)

    async def delete(self, request: Request) -> Response:
        async def change(request: Request, form: dict[str, str]) -> tuple[str, object, str]:
            job_id = path_job_id(request)
            if not await self._refused_as_conflict(self.site.app.delete_job_async(job_id)):
                raise HTTPException(404, f"there is no job {job_id}")
            return "delete", f"job {job_id}", f"job {job_id} deleted"

        return await self._change(request, change)

    async def run_now(self, request: Request) -> Response:
        async def change(request: Request, form: dict[str, str]) -> tuple[str, object, str]:
            job_id = path_job_id(request)
            if not await self._refused_as_conflict(self.site.app.run_job_now_async(job_id)):
                raise HTTPException(404, f"there is no job {job_id}")
            return "run now", f"job {job_id}", f"job {job_id} is available now"

        return await self._change(request, change)

    async def pause_queue(self, request: Request) -> Response:
        app = self.site.app
        return await self._switch(
            request, app.pause_queue_async, _queue, "pause", "queue", "paused: running jobs finish"
        )

    async def resume_queue(self, request: Request) -> Response:
        app = self.site.app
        return await self._switch(
            request, app.resume_queue_async, _queue, "resume", "queue", "resumed"
        )

    async def pause_cron(self, request: Request) -> Response:
        app = self.site.app
        return await self._switch(
            request, app.pause_cron_async, _entry, "pause", "cron entry", "paused"
        )

    async def resume_cron(self, request: Request) -> Response:
        app = self.site.app
        return await self._switch(
            request, app.resume_cron_async, _entry, "resume", "cron entry", "resumed"
        )

    async def _switch(
        self,
        request: Request,
        operation: Callable[[str], Awaitable[None]],
        named: Callable[[Request], str],
        action: str,
        kind: str,
        done: str,
    ) -> Response:
        """Pause or resume the queue or cron entry the path names."""

        async def change(request: Request, form: dict[str, str]) -> tuple[str, object, str]:
            name = named(request)
            await self._refused_as_conflict(operation(name))
            return action, f"{kind} {name}", f"{kind} {name} {done}"

        return await self._change(request, change)

    async def run_cron(self, request: Request) -> Response:
        async def change(request: Request, form: dict[str, str]) -> tuple[str, object, str]:
            name = _entry(request)
            job_id = await self._refused_as_conflict(self.site.app.run_cron_async(name))
            return "run now", f"cron entry {name}", f"cron entry {name} enqueued job {job_id}"

        return await self._change(request, change)

    async def sign_in(self, request: Request) -> Response:
        """Keep the token the form was given in a cookie, if it is the right one."""
        form = await _form(request)
        check_state_change(request, form)
        auth = self.site.options.auth
        if not isinstance(auth, TokenAuth) or not auth.signs_in(request, form.get("token", "")):
            return await self.site.render(
                request, "sign_in.html", 401, refused="that is not this dashboard's token"
            )
        response = RedirectResponse(root(request), status_code=303)
        response.set_cookie(
            TOKEN_COOKIE,
            form.get("token", ""),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=root(request),
        )
        return secured(response, request)

    async def _refused_as_conflict(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ValueError as exc:  # the operation's refusal, which says why
            raise _Conflict(str(exc)) from None


class _Conflict(HTTPException):
    """The job or entry is not in a state the action can change."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise BadRequest("this form is too large")
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=20))
    except ValueError:
        raise BadRequest("this form cannot be read: reload the page") from None


def _entry(request: Request) -> str:
    """The cron entry the path names: any text (``/`` included, sent as ``%2F``) but NUL."""
    name: str = request.path_params["name"]
    if "\x00" in name:
        raise BadRequest("a cron entry's name holds no NUL character")
    return name


def _queue(request: Request) -> str:
    name: str = request.path_params["name"]
    if not QUEUE_NAME.fullmatch(name):
        raise BadRequest(f"{name!r} is not a queue name (letters, digits, _.-)")
    return name


def _back(request: Request, form: dict[str, str]) -> str:
    """Where to go after the change: the form's own page, if it is one of the dashboard's."""
    target, home = form.get("next", ""), root(request)
    if target.startswith(home) and not target.startswith("//") and "\\" not in target:
        return target
    return home
