"""The dashboard over real HTTP: every page against a real database, the actions and their
guards (CSRF, Origin, read-only, authentication), escaping, redaction, bad input, a database
that cannot answer, and mounting in other applications. The browser tests click through the
same pages in Chromium."""

from __future__ import annotations

import asyncio
import html
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import pgjobs
from pgjobs.web import BasicAuth, TokenAuth, dashboard
from tests import jobs_app, web_app
from tests.helpers import count, rows, run_burst, run_cli, value
from tests.web_server import serving

PAGES = ("/", "/live", "/queues", "/jobs", "/workers", "/cron", "/batches", "/metrics")
XSS = ["<script>window.__xss=1</script>", '"><img src=x onerror="window.__xss=2">']


class Browser:
    """An HTTP client that keeps cookies and sends forms as the dashboard's pages do."""

    def __init__(self, base: str, **kwargs: Any) -> None:
        self.base = base
        self.client = httpx.Client(base_url=base, follow_redirects=False, **kwargs)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def token(self) -> str:
        if "pgjobs_csrf" not in self.client.cookies:
            self.get("/jobs")
        return str(self.client.cookies["pgjobs_csrf"])

    def post(
        self,
        path: str,
        data: dict[str, str] | None = None,
        *,
        origin: str | None = None,
        csrf: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        form = {"csrf": self.token()} if csrf else {}
        form.update(data or {})
        headers = {"origin": self.base if origin is None else origin}
        return self.client.post(path, data=form, headers=headers, **kwargs)


@pytest.fixture
def web(app: pgjobs.App) -> Iterator[Browser]:
    with serving(app) as base, Browser(base) as browser:
        yield browser


def discarded(db: psycopg.Connection[Any], job_id: int, message: str = "boom") -> None:
    trace = f"Traceback (most recent call last):\nRuntimeError: {message}"
    error = {"attempt": 1, "class": "builtins.RuntimeError", "message": message, "traceback": trace}
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'discarded', attempt = 1, finished_at = now(),"
        " errors = jsonb_build_array(%s::jsonb) WHERE id = %s",
        (psycopg.types.json.Jsonb(error), job_id),
    )


def state(db: psycopg.Connection[Any], job_id: int) -> str:
    return str(value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id))


def test_every_page_answers_with_the_security_headers(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("first")
    for path in (*PAGES, f"/jobs/{job_id}", *(f"/jobs?state={s}" for s in pgjobs_states())):
        response = web.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    cookie = httpx.get(f"{web.base}/queues").headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def pgjobs_states() -> tuple[str, ...]:
    return ("scheduled", "available", "running", "retryable", "completed", "discarded", "cancelled")


def test_the_overview_counts_states_runs_and_queues(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    jobs_app.noop.enqueue("done")
    run_burst(app)
    app.enqueue_many([jobs_app.noop.call(str(i)) for i in range(7)])
    jobs_app.noop.options(queue="later").enqueue_in(3600, "later")
    discarded(db, jobs_app.noop.enqueue("dead"))
    text = web.get("/live").text
    counts = {label: n for n, label in re.findall(r"<span>([\d,]+)</span>(\w[\w ]*)", text)}
    assert counts["available"] == "7" and counts["scheduled"] == "1"
    assert counts["discarded"] == "1" and counts["processed"] == "1"
    assert "1 completed" in text  # the graph's caption: this minute's run
    assert re.search(r">default</a></td>\s*<td class=\"num\">7</td>", text)


def test_jobs_pages_follow_one_another_without_gaps_or_repeats(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    ids = app.enqueue_many([jobs_app.noop.call(str(i)) for i in range(123)])
    db.execute(  # ended in one statement: one finished_at for all, the id breaks the tie
        "UPDATE pgjobs.jobs SET state = 'completed', attempt = 1, finished_at = now()"
        " WHERE id = ANY(%s)",
        (ids[:110],),
    )
    for state_name, expected in (
        ("completed", sorted(ids[:110], reverse=True)),
        ("available", ids[110:]),
    ):
        seen: list[int] = []
        path: str | None = f"/jobs?state={state_name}"
        while path is not None:
            page = web.get(path)
            assert page.status_code == 200
            seen += [int(i) for i in re.findall(r'/jobs/(\d+)">\1</a>', page.text)]
            found = re.search(r'rel="next" href="([^"]+)"', page.text)
            path = None if found is None else found[1].replace("&amp;", "&")
        assert seen == expected, state_name


def test_a_filter_reads_a_bounded_stretch_and_links_on(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    from pgjobs.web._listing import SCAN

    app.enqueue_many([jobs_app.noop.call(str(i)) for i in range(SCAN + 10)])
    needle = jobs_app.anything.enqueue(needle="the one")
    first = web.get("/jobs", params={"state": "available", "name": "anything"})
    assert "No available job matches among the 2,000 read" in first.text
    assert f"/jobs/{needle}" not in first.text
    further = re.search(r'href="([^"]+)">look further', first.text)
    assert further is not None
    second = web.get(further[1].replace("&amp;", "&"))
    assert f'/jobs/{needle}">{needle}</a>' in second.text
    found = web.get("/jobs", params={"state": "available", "search": "the one"})
    assert f"/jobs/{needle}" not in found.text  # beyond the first 2,000 too
    queue = web.get("/jobs", params={"state": "available", "queue": "nowhere"})
    assert "No available job matches" in queue.text


def test_job_page_shows_arguments_errors_and_timeline(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.anything.enqueue(1, to="someone@example.org")
    discarded(db, job_id, "the mail server said no")
    page = web.get(f"/jobs/{job_id}").text
    assert "someone@example.org" in page and "the mail server said no" in page
    assert "Traceback (most recent call last)" in page
    assert "builtins.RuntimeError" in page
    for line in ("enqueued", "scheduled for", "started", "ended", "unique key", "batch"):
        assert f"<dt>{line}</dt>" in page


def test_job_page_shows_the_result_and_the_progress(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    done = jobs_app.returns.enqueue({"thumbnails": ["<b>a.png</b>"]})
    run_burst(app)
    page = web.get(f"/jobs/{done}").text
    assert "<h2>Result</h2>" in page
    assert "&lt;b&gt;a.png&lt;/b&gt;" in page and "<b>a.png" not in page
    running = jobs_app.noop.enqueue()
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'running', attempted_at = now(), attempt = 1,"
        " worker_id = gen_random_uuid(), claim_token = gen_random_uuid(), progress = 0.4,"
        " progress_message = 'resized <4> of 10', progress_at = now() WHERE id = %s",
        (running,),
    )
    page = web.get(f"/jobs/{running}").text
    assert '<progress max="1" value="0.4"></progress> 40% resized &lt;4&gt; of 10' in page
    assert "A job has a result once it has completed." in page
    waiting = web.get(f"/jobs/{jobs_app.noop.enqueue()}").text
    assert "No progress reported yet." in waiting


def test_job_page_shows_the_meta_as_text(web: Browser, app: pgjobs.App) -> None:
    tagged = jobs_app.noop.options(meta={"request_id": "<r-42>"}).enqueue()
    page = web.get(f"/jobs/{tagged}").text
    assert "<dt>meta</dt>" in page
    assert "r-42" in page and "<r-42>" not in page  # escaped, never markup
    plain = web.get(f"/jobs/{jobs_app.noop.enqueue()}").text
    assert "<dt>meta</dt><dd>-</dd>" in plain


def test_payloads_in_arguments_and_errors_are_shown_as_text(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.anything.enqueue(*XSS, key=XSS[1])
    discarded(db, job_id, XSS[0] + XSS[1])
    for path in (f"/jobs/{job_id}", "/jobs?state=discarded"):
        page = web.get(path).text
        assert "<script>window" not in page and "<img src=x" not in page
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=" in page


def test_retry_cancel_run_now_and_delete_change_one_job_each(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    dead, waiting, later, other = (jobs_app.noop.enqueue(str(i)) for i in range(4))
    discarded(db, dead)
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'scheduled', scheduled_at = now() + interval"
        " '1 hour' WHERE id = %s",
        (later,),
    )
    caplog.set_level(logging.INFO, logger="pgjobs.web")
    response = web.post(f"/jobs/{dead}/retry", {"next": "/jobs?state=discarded"})
    assert response.status_code == 303 and response.headers["location"] == "/jobs?state=discarded"
    assert state(db, dead) == "available"
    assert "job 1 will run again" in web.get("/jobs?state=discarded").text.replace(
        str(dead), "1"
    )  # the notice, shown once
    assert "will run again" not in web.get("/jobs?state=discarded").text
    assert web.post(f"/jobs/{waiting}/cancel").status_code == 303
    assert state(db, waiting) == "cancelled"
    assert web.post(f"/jobs/{later}/run").status_code == 303
    assert state(db, later) == "available"
    assert value(db, "SELECT scheduled_at <= now() FROM pgjobs.jobs WHERE id = %s", later)
    assert web.post(f"/jobs/{waiting}/delete").status_code == 303
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = %s", waiting) == 0
    assert state(db, other) == "available"
    actions = [(r.action, r.target) for r in caplog.records if hasattr(r, "action")]
    assert actions == [
        ("retry", f"job {dead}"),
        ("cancel", f"job {waiting}"),
        ("run now", f"job {later}"),
        ("delete", f"job {waiting}"),
    ]


def test_an_action_the_job_cannot_take_says_why_and_changes_nothing(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    available = jobs_app.noop.enqueue("now")
    running = jobs_app.noop.enqueue("running")
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'running', attempt = 1, attempted_at = now(),"
        " worker_id = gen_random_uuid() WHERE id = %s",
        (running,),
    )
    refused = web.post(f"/jobs/{available}/run")
    assert refused.status_code == 409 and "only a scheduled or retryable job" in refused.text
    refused = web.post(f"/jobs/{running}/retry")
    assert refused.status_code == 409 and "running" in refused.text
    refused = web.post(f"/jobs/{running}/delete")
    assert refused.status_code == 409 and "cancel it instead" in refused.text
    with app.batch(on_complete=jobs_app.noop.call("done")) as batch:
        member = batch.add(jobs_app.noop.call("member"))
    refused = web.post(f"/jobs/{member}/delete")
    assert refused.status_code == 409 and "batch" in refused.text
    assert [state(db, j) for j in (available, running, member)] == [
        "available",
        "running",
        "available",
    ]
    assert web.post("/jobs/987654321/retry").status_code == 404
    assert "Traceback" not in refused.text


def test_retry_all_takes_the_filters_of_the_page(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    ours = [jobs_app.noop.enqueue(str(i)) for i in range(3)]
    theirs = jobs_app.noop.options(queue="other").enqueue("x")
    for job_id in (*ours, theirs):
        discarded(db, job_id)
    response = web.post("/jobs/retry", {"state": "discarded", "queue": "default", "name": ""})
    assert response.status_code == 303
    assert [state(db, j) for j in ours] == ["available"] * 3
    assert state(db, theirs) == "discarded"
    assert web.post("/jobs/retry", {"state": "running"}).status_code == 400


def test_queues_pause_and_resume_from_the_page(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    jobs_app.noop.options(queue="mailers").enqueue("x")
    assert web.post("/queues/mailers/pause").status_code == 303
    assert value(db, "SELECT paused FROM pgjobs.queues WHERE name = 'mailers'") is True
    page = web.get("/queues").text
    assert "paused" in page and "/queues/mailers/resume" in page
    assert web.post("/queues/mailers/resume").status_code == 303
    assert value(db, "SELECT paused FROM pgjobs.queues WHERE name = 'mailers'") is False
    assert web.post("/queues/bad%20name/pause").status_code == 400


def test_a_post_without_the_token_or_from_elsewhere_is_refused(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    discarded(db, job_id)
    for response in (
        web.post(f"/jobs/{job_id}/retry", csrf=False),
        web.post(f"/jobs/{job_id}/retry", {"csrf": "forged"}),
        web.post(f"/jobs/{job_id}/retry", origin="http://evil.example"),
        web.client.post(f"/jobs/{job_id}/retry", data={"csrf": web.token()}),  # no Origin
        httpx.post(
            f"{web.base}/jobs/{job_id}/retry",
            data={"csrf": web.token()},
            headers={"origin": web.base},
        ),  # the token without its cookie
    ):
        assert response.status_code == 403
        assert "Traceback" not in response.text
    assert state(db, job_id) == "discarded"
    referer = web.client.post(
        f"/jobs/{job_id}/retry", data={"csrf": web.token()}, headers={"referer": f"{web.base}/jobs"}
    )
    assert referer.status_code == 303 and state(db, job_id) == "available"


def test_bad_input_gets_a_clear_4xx_and_no_traceback(web: Browser, app: pgjobs.App) -> None:
    jobs_app.noop.enqueue("x")
    cases = {
        "/jobs/123456789": (404, "there is no job 123456789"),
        "/jobs/99999999999999999999999999": (404, "there is no job"),
        "/jobs/abc": (404, ""),
        "/jobs?state=everything": (400, "state must be one of"),
        "/jobs?after=not-json": (400, "the page link is damaged"),
        "/jobs?after=%5B1e999%5D": (400, "the page link is damaged"),
        "/jobs?state=available&after=%5B%22default%22%2C0%2C%22yesterday%22%2C1%5D": (400, ""),
        "/jobs?state=completed&after=%5B%222026-01-01T00:00:00%22%2C1%5D": (400, ""),
        "/jobs?state=completed&after=%5B%222026-01-01T00:00:00%2B00:00%22%2C" + "9" * 30 + "%5D": (
            400,
            "damaged",
        ),
        "/jobs?queue=no%20spaces": (400, "is not a queue name"),
        "/jobs?search=" + "x" * 201: (400, "at most 200 characters"),
        "/jobs?search=a%00b": (400, "at most 200 characters"),
        "/nowhere": (404, ""),
    }
    for path, (status, message) in cases.items():
        response = web.get(path)
        assert response.status_code == status, path
        assert message in response.text, path
        assert "Traceback" not in response.text and "File " not in response.text
    huge = web.post("/jobs/retry", {"state": "discarded", "padding": "x" * 20_000})
    assert huge.status_code == 400
    assert web.get("/jobs/1/retry").status_code == 405
    past_the_end = "%5B%22default%22%2C0%2C%222999-01-01T00:00:00%2B00:00%22%2C1%5D"
    assert web.get(f"/jobs?state=available&after={past_the_end}").status_code == 200


def test_malformed_parameters_on_every_route_get_a_4xx_and_no_traceback(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    deep = "[" * 5000 + "]" * 5000
    cases = {
        "/jobs?after=" + deep: (400, "the page link is damaged"),
        "/jobs?state=completed&after=" + deep: (400, "the page link is damaged"),
        '/jobs?after=["' + "q" * 5000 + '",0,"2026-01-01T00:00:00+00:00",1]': (400, "damaged"),
        "/jobs?after=%ff%fe": (400, "damaged"),
        "/jobs?after=%00": (400, "damaged"),
        "/jobs?state=%00": (400, "state must be one of"),
        "/jobs?name=%ff%00": (400, "a job name is at most"),
        "/jobs?search=%ff%00": (400, "at most 200 characters"),
        "/jobs/" + "9" * 5000: (404, "there is no job"),
    }
    for path in (*PAGES, f"/jobs/{job_id}"):  # a query the page does not read is no trouble
        cases[path + "?state=%ff&after=%00&x=" + "9" * 5000] = (
            400 if path == "/jobs" else 200,
            "",
        )
    for path, (status, message) in cases.items():
        response = httpx.get(web.base + path)
        assert response.status_code == status, path[:80]
        assert message in response.text, path[:80]
        assert "Traceback" not in response.text and "File " not in response.text
    for path, status in (
        ("/cron/a%00b/pause", 400),
        ("/cron/a%00b/run", 400),
        ("/cron/%ff%fe/resume", 409),
        ("/cron/nothing-here/run", 409),
        ("/queues/a%00b/pause", 400),
        (f"/jobs/{'9' * 5000}/retry", 404),
    ):
        response = web.post(path)
        assert response.status_code == status, path[:80]
        assert "Traceback" not in response.text
        assert "the database cannot answer" not in response.text
    token = web.token()
    for body, status in (
        (f"csrf={token}&state=discarded&next=/%00%0d%0ax".encode(), 303),
        (f"csrf={token}&state=discarded&next=/%ff%fe".encode(), 303),
        (f"csrf={token}&state=%00".encode(), 400),
        (f"csrf={token}&state=discarded&queue=%00".encode(), 400),
        (f"csrf={token}&state=discarded&name=%ff%00".encode(), 400),
        (f"csrf={token}&state=discarded&name={'9' * 5000}".encode(), 400),
        (f"csrf={token}&state=discarded&x=".encode() + b"\xff\xfe", 400),
    ):
        response = web.client.post(
            "/jobs/retry",
            content=body,
            headers={"origin": web.base, "content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == status, body[:80]
        assert "\x00" not in response.headers.get("location", "")
        assert "Traceback" not in response.text
    assert state(db, job_id) == "available"


def test_cron_entries_of_any_name_are_shown_and_actionable(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """Names that pgjobs of today refuses to declare, but that a table may hold."""
    names = ("reports/daily", "a%b?c#d e&f", "日報/x/pause", "/")
    for name in names:
        db.execute(
            "INSERT INTO pgjobs.cron_entries (name, job_name, queue, priority, max_attempts,"
            " expression, timezone, catch_up) VALUES (%s, 'noop', 'default', 0, 1, '0 3 * * *',"
            " 'UTC', 'none')",
            (name,),
        )
    page = web.get("/cron")
    assert page.status_code == 200
    paused = "SELECT paused FROM pgjobs.cron_entries WHERE name = %s"
    for name in names:
        assert f"<td>{html.escape(name)}</td>" in page.text
        path = f"/cron/{quote(name, safe='')}"
        assert f'action="{web.base}{path}/pause"' in page.text
        assert f'action="{web.base}{path}/run"' in page.text
        assert web.post(f"{path}/pause").status_code == 303 and value(db, paused, name)
        assert f'action="{web.base}{path}/resume"' in web.get("/cron").text
        assert web.post(f"{path}/resume").status_code == 303 and not value(db, paused, name)
        ran = web.post(f"{path}/run")
        assert ran.status_code == 303
        assert value(db, "SELECT last_job_id IS NOT NULL FROM pgjobs.cron_entries WHERE name = %s",
                     name)  # fmt: skip


def test_a_declared_entry_that_no_worker_stored_yet_is_shown_and_actionable(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """The dashboard acts through the app, which stores an entry it declares before acting on it,
    as the CLI does."""
    web_app.app.configure(database_url=database_url)
    path = f"/cron/{quote(web_app.NIGHTLY, safe='')}"
    try:
        with serving(web_app.app) as base, Browser(base) as web:
            assert f"<td>{html.escape(web_app.NIGHTLY)}</td>" in web.get("/cron").text
            assert web.post(f"{path}/pause").status_code == 303
            assert web.post(f"{path}/run").status_code == 303
    finally:
        web_app.app.close()
    assert rows(
        db,
        "SELECT paused, last_job_id IS NOT NULL FROM pgjobs.cron_entries WHERE name = %s",
        web_app.NIGHTLY,
    ) == [(True, True)]


def test_read_only_shows_everything_and_changes_nothing(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    discarded(db, job_id)
    with serving(app, read_only=True) as base, Browser(base) as web:
        page = web.get(f"/jobs/{job_id}").text
        assert "read-only" in page and '<form method="post"' not in page
        assert '<form method="post"' not in web.get("/queues").text
        refused = web.post(f"/jobs/{job_id}/retry")
        assert refused.status_code == 403 and "read-only" in refused.text
    assert state(db, job_id) == "discarded"


def test_basic_auth_and_a_token_keep_strangers_out(app: pgjobs.App) -> None:
    with serving(app, auth=BasicAuth("ops", "s3cret-pass")) as base:
        stranger = httpx.get(f"{base}/queues")
        assert stranger.status_code == 401
        assert stranger.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/queues", auth=("ops", "wrong")).status_code == 401
        assert httpx.get(f"{base}/queues", auth=("ops", "s3cret-pass")).status_code == 200
    token = "a-long-random-token-0123456789"
    with serving(app, auth=TokenAuth(token)) as base, Browser(base) as web:
        sent = web.get("/queues")
        assert sent.status_code == 303 and sent.headers["location"].endswith("/sign-in")
        assert web.get("/queues", headers={"authorization": f"Bearer {token}"}).status_code == 200
        wrong = web.post("/sign-in", {"token": "wrong"})
        assert wrong.status_code == 401 and "not this dashboard" in wrong.text
        assert "pgjobs_token" not in web.client.cookies
        assert web.get("/queues").status_code == 303
        assert web.post("/sign-in", {"token": token}).status_code == 303
        assert web.get("/queues").status_code == 200


def elsewhere() -> httpx.Client:
    """A client from another loopback address than the tests' own (127.0.0.1)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pgjobs.web" and hasattr(r, "refused")]


def test_failed_basic_sign_ins_make_their_client_wait_and_are_logged(
    app: pgjobs.App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgjobs.web")
    password = "s3cret-pass"
    with serving(app, auth=BasicAuth("ops", password)) as base:
        assert httpx.get(f"{base}/queues").status_code == 401  # no credentials: not a failure
        for guess in range(5):
            wrong = httpx.get(f"{base}/queues", auth=("ops", f"guess-{guess}"))
            assert wrong.status_code == 401
        assert httpx.get(f"{base}/metrics", auth=("root", "guess-5")).status_code == 429
        waits = httpx.get(f"{base}/queues", auth=("ops", password))  # not even checked
        assert waits.status_code == 429 and "Traceback" not in waits.text
        assert 1 <= int(waits.headers["retry-after"]) <= 30 and "try again in" in waits.text
        with elsewhere() as other:
            assert other.get(f"{base}/queues", auth=("ops", password)).status_code == 200
    logged = refusals(caplog)
    assert [r.refused for r in logged] == ["wrong"] * 5 + ["waiting"] * 2
    assert {(r.client, r.user) for r in logged} == {("127.0.0.1", "ops"), ("127.0.0.1", "root")}
    assert all(r.levelno == logging.WARNING for r in logged)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "guess-" not in text and password not in text and "127.0.0.1" in text


def test_failed_token_sign_ins_make_their_client_wait_and_are_logged(
    app: pgjobs.App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgjobs.web")
    token = "a-long-random-token-0123456789"
    with serving(app, auth=TokenAuth(token)) as base, Browser(base) as web:
        assert web.get("/sign-in").status_code == 200
        for guess in range(3):
            bearer = {"authorization": f"Bearer wrong-token-{guess}"}
            assert httpx.get(f"{base}/queues", headers=bearer).status_code == 303
        assert web.post("/sign-in", {"token": "wrong-token-3"}).status_code == 401
        stale = httpx.get(f"{base}/queues", headers={"cookie": "pgjobs_token=wrong-token-4"})
        assert stale.status_code == 303 and 'pgjobs_token=""' in stale.headers["set-cookie"]
        waits = web.post("/sign-in", {"token": token})
        assert waits.status_code == 429 and "pgjobs_token" not in web.client.cookies
        bearer = {"authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/queues", headers=bearer).status_code == 429
        with elsewhere() as other:
            assert other.get(f"{base}/queues", headers=bearer).status_code == 200
    logged = refusals(caplog)
    assert [r.refused for r in logged] == ["wrong"] * 5 + ["waiting"] * 2
    assert all(r.client == "127.0.0.1" and r.user is None for r in logged)
    assert "wrong-token" not in "\n".join(r.getMessage() for r in caplog.records)


def test_an_auth_hook_names_who_acted_in_the_log(
    app: pgjobs.App, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def staff_only(request: Any) -> str | bool:
        return request.headers.get("x-user", "") == "ada" and "ada"

    job_id = jobs_app.noop.enqueue("x")
    caplog.set_level(logging.INFO, logger="pgjobs.web")
    with serving(app, auth=staff_only) as base:
        assert httpx.get(f"{base}/").status_code == 401
        with Browser(base, headers={"x-user": "ada"}) as web:
            assert web.post(f"/jobs/{job_id}/cancel").status_code == 303
    (record,) = [r for r in caplog.records if getattr(r, "action", None) == "cancel"]
    assert record.user == "ada" and f"job {job_id}" in record.getMessage()


def test_redaction_hides_secrets_and_turns_off_the_search(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    def redact(name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        return args, {k: "***" if k == "password" else v for k, v in kwargs.items()}

    job_id = jobs_app.anything.enqueue("login", password="hunter2-secret")
    with serving(app, redact=redact) as base, Browser(base) as web:
        for path in (f"/jobs/{job_id}", "/jobs?state=available"):
            page = web.get(path).text
            assert "hunter2-secret" not in page and "***" in page
        refused = web.get("/jobs", params={"search": "hunter2"})
        assert refused.status_code == 400 and "redacted" in refused.text


def test_a_secret_hidden_from_the_arguments_is_hidden_from_the_errors_too(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    def redact(name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        return args, {k: "***" if k == "password" else v for k, v in kwargs.items()}

    secret = "hunter2-secret"
    job_id = jobs_app.anything.enqueue("login", password=secret, user="ada")
    discarded(db, job_id, f"login refused for ada with password {secret!r}")
    with serving(app, redact=redact) as base, Browser(base) as web:
        for path in (f"/jobs/{job_id}", "/jobs?state=discarded"):
            page = web.get(path).text
            assert secret not in page, path
            assert "login refused for ada with password" in page, path
        assert "RuntimeError: login refused" in web.get(f"/jobs/{job_id}").text  # the traceback


def test_a_redact_error_hook_sees_every_error_text_shown(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    seen: list[tuple[str, str]] = []

    def redact_error(name: str, text: str) -> str:
        seen.append((name, text))
        return text.replace("sk-live-0123456789", "sk-live-…")

    job_id = jobs_app.anything.enqueue("charge")
    discarded(db, job_id, "the card API refused key sk-live-0123456789")
    with serving(app, redact_error=redact_error) as base, Browser(base) as web:
        for path in (f"/jobs/{job_id}", "/jobs?state=discarded"):
            page = web.get(path).text
            assert "sk-live-0123456789" not in page and "sk-live-…" in page, path
        assert web.get("/jobs", params={"search": "charge"}).status_code == 200  # arguments shown
    assert {name for name, _ in seen} == {"anything"}
    assert any(text.startswith("Traceback") for _, text in seen)


def test_a_database_that_cannot_answer_gets_a_503_without_secrets() -> None:
    app = pgjobs.App(
        database_url="postgresql://ops:pa55-word@127.0.0.1:1/nowhere", connect_timeout=1
    )
    with serving(app) as base:
        for path in ("/", "/jobs", "/jobs/1"):
            response = httpx.get(base + path)
            assert response.status_code == 503, path
            assert "pa55-word" not in response.text and "Traceback" not in response.text
        scrape = httpx.get(f"{base}/metrics")
        assert scrape.status_code == 200 and "pgjobs_up 0.0" in scrape.text


def test_metrics_are_served_beside_the_pages(web: Browser, app: pgjobs.App) -> None:
    jobs_app.noop.enqueue("x")
    scrape = web.get("/metrics").text
    assert "pgjobs_up 1.0" in scrape
    assert 'pgjobs_jobs{queue="default",state="available"} 1.0' in scrape


def test_mounted_under_a_path_in_starlette_links_and_returns_there(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    discarded(db, job_id)

    @asynccontextmanager
    async def lifespan(host: Starlette) -> AsyncIterator[None]:
        yield
        await app.aclose()  # the host application closes pgjobs' connections

    host = Starlette(routes=[Mount("/admin/jobs", dashboard(app))], lifespan=lifespan)
    with serving(app, host, lifespan=True) as base, Browser(base) as web:
        page = web.get("/admin/jobs/jobs?state=discarded").text
        assert f'{base}/admin/jobs/jobs/{job_id}"' in page
        assert 'href="http://' in page and "/admin/jobs/static/dashboard.css" in page
        cookie = web.get("/admin/jobs/queues").headers.get("set-cookie", "")
        assert "path=/admin/jobs/" in cookie.lower() or "pgjobs_csrf" in web.client.cookies
        done = web.post(
            f"/admin/jobs/jobs/{job_id}/retry", {"next": "/admin/jobs/jobs?state=discarded"}
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/admin/jobs/jobs?state=discarded"
        outside = web.post(f"/admin/jobs/jobs/{job_id}/cancel", {"next": "https://evil.example/"})
        assert outside.headers["location"] == "/admin/jobs/"
    assert state(db, job_id) == "cancelled"


def test_mounted_in_flask_through_a_wsgi_adapter(app: pgjobs.App) -> None:
    from a2wsgi import ASGIMiddleware
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    job_id = jobs_app.noop.enqueue("x")
    flask_app = Flask(__name__)
    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/jobs": ASGIMiddleware(dashboard(app))}
    )
    page = flask_app.test_client().get(f"/jobs/jobs/{job_id}")
    assert page.status_code == 200
    assert f"Job {job_id}" in page.get_data(as_text=True)
    adapter = flask_app.wsgi_app.mounts["/jobs"]
    asyncio.run_coroutine_threadsafe(app.aclose(), adapter.loop).result(10)


def test_pgjobs_web_refuses_to_listen_abroad_without_authentication(database_url: str) -> None:
    for host in ("0.0.0.0", "127.0.0.1.invalid", "localhost.invalid"):
        abroad = run_cli(database_url, "web", "--host", host)
        assert abroad.returncode == 2, host
        assert "without authentication" in abroad.stderr and "Traceback" not in abroad.stderr
    half = run_cli(database_url, "web", "--user", "ops")
    assert half.returncode == 2 and "go together" in half.stderr
    short = run_cli(database_url, "web", env={"PGJOBS_WEB_TOKEN": "short"})
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
    assert "short" not in short.stderr.replace("shorter than 16", "")


def test_pgjobs_web_refuses_a_blank_or_repetitive_token_in_one_line(database_url: str) -> None:
    for token in (" " * 16, "a" * 40, " " + "a-long-random-token-0123456789"):
        weak = run_cli(database_url, "web", "--host", "127.0.0.1.invalid",
                       env={"PGJOBS_WEB_TOKEN": token})  # fmt: skip
        assert weak.returncode == 2, repr(token)
        assert weak.stderr.startswith("Error: PGJOBS_WEB_TOKEN") and weak.stderr.count("\n") == 1
        assert "secrets.token_urlsafe(32)" in weak.stderr
        assert not token.strip() or token.strip() not in weak.stderr
    password = run_cli(database_url, "web", "--user", "ops", env={"PGJOBS_WEB_PASSWORD": "    "})
    assert password.returncode == 2 and "PGJOBS_WEB_PASSWORD" in password.stderr
    assert password.stderr.count("\n") == 1


def test_counts_past_the_cap_are_estimates_that_say_so(
    web: Browser, app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    from pgjobs.web._counts import CAP

    app.enqueue_many([jobs_app.noop.call() for _ in range(CAP + 500)])
    jobs_app.noop.options(queue="small").enqueue("x")
    db.execute("ANALYZE pgjobs.jobs")
    live = web.get("/live").text
    counts = {label: n for n, label in re.findall(r"<span>([≈\d,]+)</span>(\w+)", live)}
    assert counts["available"].startswith("≈")
    estimate = int(counts["available"].strip("≈").replace(",", ""))
    assert 0.8 * (CAP + 501) <= estimate <= 1.2 * (CAP + 501)
    queues = web.get("/queues").text
    assert re.search(r">default</a></td>\s*<td class=\"num\">≈[\d,]+</td>", queues)
    assert re.search(r">small</a></td>\s*<td class=\"num\">1</td>", queues)


def test_without_authentication_it_answers_only_to_loopback_names(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    discarded(db, job_id)
    with serving(app) as base:
        port = base.rsplit(":", 1)[1]
        rebound = {"host": f"attacker.example:{port}", "origin": f"http://attacker.example:{port}"}
        assert httpx.get(f"{base}/jobs", headers=rebound).status_code == 403
        with Browser(base) as web:
            token = web.token()
            refused = web.client.post(f"/jobs/{job_id}/retry", data={"csrf": token},
                                      headers=rebound)  # fmt: skip
            assert refused.status_code == 403
            assert state(db, job_id) == "discarded"
            for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
                assert httpx.get(f"{base}/queues", headers={"host": host}).status_code == 200
    with serving(app, auth=BasicAuth("ops", "s3cret-pass")) as base:
        named = httpx.get(f"{base}/queues", auth=("ops", "s3cret-pass"),
                          headers={"host": "jobs.example.org"})  # fmt: skip
        assert named.status_code == 200  # behind authentication, any name the proxy gives


def test_a_name_that_merely_starts_like_loopback_is_refused(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """``127.0.0.1.nip.io`` resolves to 127.0.0.1 for anyone: a page of another site that reads
    the dashboard through it could take its CSRF token and cancel a job."""
    job_id = jobs_app.noop.enqueue("x")
    with serving(app) as base:
        port = base.rsplit(":", 1)[1]
        for name in ("127.0.0.1.nip.io", "127.attacker.example", "localhost.evil.example",
                     "localhost.", "127.1", "2130706433", "[::ffff:127.0.0.1]"):  # fmt: skip
            host = f"{name}:{port}"
            page = httpx.get(f"{base}/jobs", headers={"host": host})
            assert page.status_code == 403, name
            assert "pgjobs_csrf" not in page.cookies and "csrf" not in page.text, name
            cancel = httpx.post(  # as the page of that name would, with the token read
                f"{base}/jobs/{job_id}/cancel",
                data={"csrf": "known"},
                headers={"host": host, "origin": f"http://{host}", "cookie": "pgjobs_csrf=known"},
            )
            assert cancel.status_code == 403, name
        for host in ("", "user@127.0.0.1", f"ops@localhost:{port}"):
            assert httpx.get(f"{base}/jobs", headers={"host": host}).status_code == 403, host
        assert httpx.get(f"{base}/jobs", headers={"host": f"[::1]:{port}"}).status_code == 200
    assert state(db, job_id) == "available"


@pytest.mark.fresh_database
def test_a_read_only_database_refuses_an_action_with_its_reason(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.noop.enqueue("x")
    discarded(db, job_id)
    name = value(db, "SELECT current_database()")
    alter = "ALTER DATABASE {} SET default_transaction_read_only = on"
    db.execute(psycopg.sql.SQL(alter).format(psycopg.sql.Identifier(name)))
    app.close()  # connections made from now on are read-only
    with serving(app) as base, Browser(base) as web:
        assert web.get(f"/jobs/{job_id}").status_code == 200
        refused = web.post(f"/jobs/{job_id}/retry")
        assert refused.status_code == 503
        assert "read-only transaction" in refused.text and "nothing was changed" in refused.text
        assert "Traceback" not in refused.text
    assert state(db, job_id) == "discarded"


def test_pgjobs_web_says_when_it_cannot_listen(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli(database_url, "web", "--port", str(port))
    assert busy.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr and "Traceback" not in busy.stderr
    env = {"PGJOBS_WEB_TOKEN": "a-long-random-token-0123456789"}
    nowhere = run_cli(database_url, "web", "--host", "no-such-host.invalid", env=env)
    assert nowhere.returncode == 1 and "cannot listen on no-such-host.invalid" in nowhere.stderr
