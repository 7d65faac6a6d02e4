"""The dashboard in a real browser: ``pgjobs web`` serving a test's database to Chromium, with
real ``pgjobs worker`` processes running the jobs that the pages show and change.

Every run saves screenshots of each page into the test's ``tmp_path``; with
``PGJOBS_SCREENSHOTS=docs/screenshots`` it refreshes the guide's too.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect
from playwright.sync_api import Error as PlaywrightError

import pgjobs
from tests import web_app
from tests.helpers import WorkerProcess, count, eventually, rows, value

if TYPE_CHECKING:
    from tests.browser import Dashboard

pytest_plugins = ("tests.browser",)  # its fixtures: dashboards, workers, the browser

pytestmark = pytest.mark.browser

LOCK = 7_301
"""The advisory lock that ``web.held`` jobs wait on while the test holds it."""

SCRIPT = "<script>window.__xss=1</script>"
ATTRIBUTE = '"><img src=x onerror="window.__xss=2">'


def state(db: psycopg.Connection[Any], job_id: int) -> str:
    return str(value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id))


def states(db: psycopg.Connection[Any], ids: Sequence[int]) -> list[str]:
    found = dict(rows(db, "SELECT id, state FROM pgjobs.jobs WHERE id = ANY(%s)", ids))
    return [found.get(i, "-") for i in ids]


def nav(page: Page, label: str) -> None:
    """Follow the header's link to page ``label``."""
    page.locator("header nav").get_by_role("link", name=label, exact=True).click()


def tab(page: Page, job_state: str) -> None:
    """Follow the jobs page's tab of ``job_state``."""
    page.locator("nav.tabs").get_by_role("link", name=job_state, exact=True).click()
    expect(page.locator("nav.tabs [aria-current=page]")).to_have_text(job_state)


def job_row(page: Page, job_id: int) -> Locator:
    """The row of job ``job_id`` in the jobs table."""
    link = page.get_by_role("link", name=str(job_id), exact=True)
    return page.locator("table.jobs tbody tr").filter(has=link)


def row_of(page: Page, name: str) -> Locator:
    """The table row whose first cell is ``name``."""
    return page.locator("main tbody tr").filter(
        has=page.locator("td:first-child", has_text=re.compile(rf"^{re.escape(name)}\b"))
    )


def notice(page: Page) -> Locator:
    return page.locator("p.notice")


def heading(page: Page) -> Locator:
    return page.locator("main h1")


def csrf_cookie(context: BrowserContext) -> str:
    return next(c["value"] for c in context.cookies() if c["name"] == "pgjobs_csrf")


def reload_until(page: Page, locator: Locator, text: str, timeout: float = 15.0) -> None:
    """Reload ``page`` until ``locator`` reads ``text``: a page that does not refresh itself."""

    def shows() -> bool:
        page.reload()
        return locator.inner_text().strip() == text

    eventually(shows, timeout, interval=0.2)


def test_every_page_from_the_nav_shows_what_the_database_holds(
    page: Page,
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
    workers: Callable[..., WorkerProcess],
    screenshot: Callable[[Page, str], None],
    console: list[str],
) -> None:
    """Overview, Queues, Jobs and each of its tabs, a job, Workers, Cron and Batches, reached by
    clicking, each with what the test made; the screenshots of the guide are taken on the way."""
    db.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
    worker = workers("--queues", "default,mail")
    worker.wait_for_log("cron: 1 entry declared")
    done = jobs.enqueue_many([web_app.report.call(f"report {i}") for i in range(6)])
    done += jobs.enqueue_many([web_app.send_mail.call(f"user{i}@example.com") for i in range(2)])
    failed = web_app.fragile.enqueue("smtp")
    with jobs.batch(description="nightly import") as batch:
        *imported, running = batch.enqueue_many(
            [
                web_app.report.call("row 1"),
                web_app.report.call("row 2"),
                web_app.held.options(meta={"request_id": "req-7f3a"}).call(LOCK),
            ]
        )
    scheduled = web_app.report.enqueue_in(3600, "tomorrow's digest")
    eventually(lambda: states(db, [*done, *imported]) == ["completed"] * 10)
    eventually(lambda: (state(db, failed), state(db, running)) == ("discarded", "running"))
    outcomes = "SELECT coalesce(sum(runs), 0) FROM pgjobs.job_stats WHERE outcome = %s"
    eventually(
        lambda: (value(db, outcomes, "completed"), value(db, outcomes, "discarded")) == (10, 1)
    )

    page.goto("/")
    expect(heading(page)).to_have_text("Overview")
    for job_state, shown in [("scheduled", "1"), ("running", "1"), ("discarded", "1")]:
        expect(page.locator(f"a.count.state-{job_state} span")).to_have_text(shown)
    expect(page.locator("a.count.state-completed")).to_have_text("10processed")
    expect(page.locator("figure.graph figcaption")).to_contain_text("10 completed")
    expect(page.locator("figure.graph figcaption")).to_contain_text("1 failed")
    expect(page.locator("a.count[href$='/workers']")).to_contain_text("1workers (10 slots)")
    screenshot(page, "overview")

    nav(page, "Queues")
    expect(heading(page)).to_have_text("Queues")
    expect(row_of(page, "mail")).to_contain_text("30 per 1.0 min")
    expect(row_of(page, "mail").locator("td").nth(4)).to_have_text("2")  # concurrency
    expect(row_of(page, "default").locator("td").nth(2)).to_have_text("1")  # running
    screenshot(page, "queues")

    nav(page, "Jobs")
    expect(heading(page)).to_have_text("Jobs")
    expect(page.locator("nav.tabs [aria-current=page]")).to_have_text("available")
    expect(page.locator("p.empty")).to_have_text("No available jobs.")
    tabs: list[tuple[str, list[int]]] = [
        ("scheduled", [scheduled]),
        ("running", [running]),
        ("retryable", []),
        ("completed", [*done, *imported]),
        ("cancelled", []),
        ("discarded", [failed]),
    ]
    for job_state, ids in tabs:
        tab(page, job_state)
        expect(page.locator("table.jobs tbody tr")).to_have_count(len(ids))
        for job_id in ids:
            expect(job_row(page, job_id)).to_be_visible()
    expect(job_row(page, failed)).to_contain_text("the mail server refused the connection")
    screenshot(page, "jobs")

    job_row(page, failed).get_by_role("link", name=str(failed)).click()
    expect(heading(page)).to_have_text(f"Job {failed} discarded")
    expect(page.locator("p.lead")).to_contain_text("web.fragile on queue default, attempt 1 of 1")
    expect(page.locator("details[open] summary")).to_contain_text(
        "RuntimeError: the mail server refused the connection"
    )
    expect(page.locator("pre.traceback")).to_contain_text("raise RuntimeError(message)")
    screenshot(page, "job")

    nav(page, "Workers")
    expect(heading(page)).to_have_text("Workers")
    host = row_of(page, socket.gethostname())
    expect(host.locator("td").nth(1)).to_have_text(str(worker.process.pid))
    expect(host.locator("td").nth(2)).to_have_text("default,mail")
    expect(host.get_by_role("link", name=str(running), exact=True)).to_be_visible()
    screenshot(page, "workers")

    eventually(lambda: value(db, "SELECT progress FROM pgjobs.jobs WHERE id = %s", running))
    host.get_by_role("link", name=str(running), exact=True).click()
    expect(heading(page)).to_have_text(f"Job {running} running")
    expect(page.locator("p.progress")).to_contain_text("40% imported 2 of 5 files")
    expect(page.locator("code.meta")).to_have_text('{"request_id": "req-7f3a"}')
    screenshot(page, "running-job")

    nav(page, "Cron")
    expect(heading(page)).to_have_text("Cron")
    nightly = row_of(page, web_app.NIGHTLY)
    expect(nightly).to_contain_text("0 3 * * * UTC")
    expect(nightly).to_contain_text("web.report on default")
    expect(nightly.locator("td").nth(3)).to_have_text(
        re.compile(r"(\d{4}-\d\d-\d\d 03:00:00 UTC\s*){3}")
    )
    expect(nightly.locator("td").nth(5)).to_have_text("active")
    screenshot(page, "cron")

    nav(page, "Batches")
    expect(heading(page)).to_have_text("Batches")
    progress = row_of(page, str(batch.id))
    expect(progress).to_contain_text("nightly import")
    expect(progress.locator("progress")).to_have_attribute("value", "2")
    expect(progress.locator("progress")).to_have_attribute("max", "3")
    expect(progress.locator("td.num")).to_have_text(["3", "1", "2", "0"])
    screenshot(page, "batches")
    assert console == []  # no script error, no refused resource or style on any page


def test_a_discarded_job_retried_from_its_page_runs_again_and_completes(
    page: Page,
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
    workers: Callable[..., WorkerProcess],
    dialogs: list[str],
) -> None:
    workers()
    job_id = web_app.fragile.enqueue("smtp")
    eventually(lambda: state(db, job_id) == "discarded")

    page.goto("/")
    nav(page, "Jobs")
    tab(page, "discarded")
    expect(job_row(page, job_id)).to_contain_text("the mail server refused the connection")
    job_row(page, job_id).get_by_role("link", name=str(job_id)).click()
    expect(heading(page)).to_have_text(f"Job {job_id} discarded")
    expect(page.locator("details[open] summary")).to_contain_text(
        "attempt 1, "  # and when
    )
    expect(page.locator("details[open] summary")).to_contain_text(
        "RuntimeError: the mail server refused the connection"
    )
    traceback = page.locator("details[open] pre.traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("web_app.py")

    web_app.fix(db, "smtp")
    page.get_by_role("button", name="Retry", exact=True).click()
    expect(notice(page)).to_have_text(f"job {job_id} will run again")
    expect(page).to_have_url(re.compile(rf"/jobs/{job_id}$"))
    reload_until(page, page.locator("h1 .state"), "completed")
    expect(page.locator("p.lead")).to_contain_text("attempt 2 of 2")
    expect(notice(page)).to_have_count(0)  # shown once
    assert count(db, "SELECT count(*) FROM ledger WHERE job_id = %s", job_id) == 1
    assert dialogs == []


def test_a_queue_paused_from_the_queues_page_starts_no_job_until_resumed(
    page: Page,
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
    workers: Callable[..., WorkerProcess],
    dialogs: list[str],
    console: list[str],
) -> None:
    workers("--queues", "default,mail")
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.queues WHERE name = 'mail'") == 1)
    page.goto("/")
    nav(page, "Queues")
    mail = row_of(page, "mail")
    expect(mail.locator("td").nth(7)).to_have_text("running")

    mail.get_by_role("button", name="Pause").click()
    expect(notice(page)).to_have_text("queue mail paused: running jobs finish")
    assert dialogs == ["Pause queue mail? Running jobs finish; no new job starts."]
    expect(mail.locator("td").nth(7)).to_have_text("paused")
    assert value(db, "SELECT paused FROM pgjobs.queues WHERE name = 'mail'") is True

    waiting = [web_app.send_mail.enqueue(f"user{i}@example.com") for i in range(3)]
    alive = web_app.report.enqueue("the worker claims from default meanwhile")
    eventually(lambda: state(db, alive) == "completed")
    claimed = "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND attempt > 0"
    assert states(db, waiting) == ["available"] * 3
    assert count(db, claimed, waiting) == 0
    page.reload()
    expect(mail.locator("td").nth(1)).to_have_text("3")  # available

    mail.get_by_role("button", name="Resume").click()
    expect(notice(page)).to_have_text("queue mail resumed")
    # its concurrency is 2: the first claim after the resume may hold the third job back
    expect(mail.locator("td").nth(7)).to_have_text(re.compile(r"^(running|at its limit)$"))
    eventually(lambda: states(db, waiting) == ["completed"] * 3)
    reload_until(page, mail.locator("td").nth(1), "0")
    assert len(dialogs) == 1  # resuming asks nothing
    assert console == []


def test_arguments_and_errors_are_shown_as_text_never_run(
    contexts: Callable[..., BrowserContext],
    dashboard: Dashboard,
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
    workers: Callable[..., WorkerProcess],
    dialogs: list[str],
) -> None:
    """Markup in a job's arguments, its error or a search is text on every page. The page's
    Content-Security-Policy is bypassed: escaping alone must hold."""
    page = contexts(dashboard.url, bypass_csp=True).new_page()
    workers()
    failed = web_app.fragile.enqueue(SCRIPT, message=f"{SCRIPT} {ATTRIBUTE}")
    waiting = web_app.report.enqueue_in(3600, ATTRIBUTE)
    with jobs.batch(description=f"{SCRIPT} {ATTRIBUTE}") as batch:
        batch.add(web_app.report.call("in a batch"))
    eventually(lambda: state(db, failed) == "discarded")
    as_json = json.dumps(ATTRIBUTE)  # how arguments are shown: "\"><img src=x ...\""

    def only_text(url: str, *texts: str) -> None:
        page.goto(url)
        main = page.locator("main")
        for text in texts:
            expect(main).to_contain_text(text)
        expect(page.locator("main script, main img, [onerror]")).to_have_count(0)
        assert page.evaluate("typeof window.__xss") == "undefined"

    only_text("/jobs?state=discarded", SCRIPT, ATTRIBUTE)
    only_text(f"/jobs/{failed}", SCRIPT, ATTRIBUTE)
    only_text("/jobs?state=scheduled", as_json)
    only_text(f"/jobs/{waiting}", as_json)
    only_text("/batches", f"{SCRIPT} {ATTRIBUTE}")

    page.goto("/jobs?state=discarded")
    search = page.get_by_label("Arguments contain")
    for text in (SCRIPT, ATTRIBUTE):  # reflected into the search field's value="..."
        search.fill(text)
        page.get_by_role("button", name="Filter").click()
        expect(page).to_have_url(re.compile(r"search="))
        expect(search).to_have_value(text)
        expect(page.locator("main img, [onerror]")).to_have_count(0)
        assert page.evaluate("typeof window.__xss") == "undefined"
    expect(page.locator("p.empty")).to_have_text("No discarded job matches among the 1 read.")
    page.get_by_label("Arguments contain").fill(SCRIPT)
    page.get_by_role("button", name="Filter").click()
    expect(job_row(page, failed)).to_be_visible()
    assert dialogs == []


def test_a_change_without_the_token_or_from_another_origin_is_refused(
    page: Page, dashboard: Dashboard, jobs: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = web_app.report.enqueue_in(3600, "later")
    page.goto(f"/jobs/{job_id}")
    token = page.locator("form[action$='/cancel'] input[name=csrf]").get_attribute("value")
    assert token and token == csrf_cookie(page.context)
    cancel = f"{dashboard.url}/jobs/{job_id}/cancel"

    status = page.evaluate(
        """async (url) => (await fetch(url, {
            method: "POST", body: new URLSearchParams({next: "/"}), redirect: "manual"
        })).status""",
        cancel,
    )
    assert status == 403  # from the page itself, with its cookie and Origin, but no token

    def post(form: dict[str, str | float | bool], origin: str | None) -> tuple[int, str]:
        headers = {} if origin is None else {"Origin": origin}
        response = page.request.post(cancel, form=form, headers=headers, max_redirects=0)
        return response.status, response.text()

    status, text = post({"next": "/"}, dashboard.url)
    assert status == 403 and "security token is missing or stale" in text
    status, text = post({"csrf": "x" * len(token), "next": "/"}, dashboard.url)
    assert status == 403 and "security token is missing or stale" in text
    status, text = post({"csrf": token, "next": "/"}, "http://attacker.example")
    assert status == 403 and "sent from another site" in text
    status, text = post({"csrf": token, "next": "/"}, None)  # neither Origin nor Referer
    assert status == 403 and "sent from another site" in text
    assert state(db, job_id) == "scheduled"

    status, _ = post({"csrf": token, "next": "/"}, dashboard.url)
    assert status == 303  # the same request with both is taken: the refusals were the checks'
    assert state(db, job_id) == "cancelled"


def test_a_scheduled_job_is_cancelled_or_run_now_from_the_pages(
    page: Page,
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
    workers: Callable[..., WorkerProcess],
    dialogs: list[str],
) -> None:
    workers()
    doomed = web_app.report.enqueue_in(3600, "doomed")
    hurried = web_app.report.enqueue_in(3600, "hurried")

    page.goto("/jobs?state=scheduled")
    job_row(page, doomed).get_by_role("button", name="Cancel").click()
    expect(notice(page)).to_have_text(f"job {doomed} cancelled")
    assert dialogs == [f"Cancel job {doomed}?"]
    expect(page).to_have_url(re.compile(r"/jobs\?state=scheduled$"))
    expect(job_row(page, doomed)).to_have_count(0)
    expect(job_row(page, hurried)).to_have_count(1)
    assert state(db, doomed) == "cancelled"

    job_row(page, hurried).get_by_role("link", name=str(hurried)).click()
    expect(heading(page)).to_have_text(f"Job {hurried} scheduled")
    page.get_by_role("button", name="Run now").click()
    expect(notice(page)).to_have_text(f"job {hurried} is available now")
    reload_until(page, page.locator("h1 .state"), "completed")
    assert rows(db, "SELECT job_id, label FROM ledger") == [(hurried, "hurried")]
    assert state(db, doomed) == "cancelled"


def test_discarded_jobs_are_deleted_or_all_retried_from_the_discarded_tab(
    page: Page,
    dashboard: Dashboard,
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
    workers: Callable[..., WorkerProcess],
    dialogs: list[str],
) -> None:
    workers()
    gone = web_app.fragile.enqueue("lost")
    again = [web_app.fragile.enqueue("found") for _ in range(2)]
    eventually(lambda: states(db, [gone, *again]) == ["discarded"] * 3)

    page.goto(f"/jobs/{gone}")
    page.get_by_role("button", name="Delete").click()
    expect(notice(page)).to_have_text(f"job {gone} deleted")
    assert dialogs == [f"Delete job {gone} for good?"]
    expect(page).to_have_url(f"{dashboard.url}/jobs?state=discarded")
    expect(job_row(page, gone)).to_have_count(0)
    expect(page.locator("table.jobs tbody tr")).to_have_count(2)
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = %s", gone) == 0

    web_app.fix(db, "found")
    page.get_by_role("button", name="Retry all discarded").click()
    expect(notice(page)).to_have_text("2 discarded jobs will run again")
    assert dialogs[1:] == ["Retry every discarded job that matches?"]
    eventually(lambda: states(db, again) == ["completed"] * 2)
    page.reload()
    expect(page.locator("p.empty")).to_have_text("No discarded jobs.")

    response = page.goto(f"/jobs/{gone}")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("404")
    expect(page.locator("p").first).to_have_text(
        f"there is no job {gone} (it may have been pruned)"
    )


def test_a_cron_entry_is_paused_resumed_and_run_now_from_the_cron_page(
    page: Page,
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
    workers: Callable[..., WorkerProcess],
    dialogs: list[str],
    console: list[str],
) -> None:
    workers().wait_for_log("cron: 1 entry declared")
    paused = "SELECT paused FROM pgjobs.cron_entries WHERE name = %s"
    page.goto("/")
    nav(page, "Cron")
    nightly = row_of(page, web_app.NIGHTLY)
    expect(nightly.locator("td").nth(4)).to_have_text("-")  # never run

    nightly.get_by_role("button", name="Pause").click()
    expect(notice(page)).to_have_text(f"cron entry {web_app.NIGHTLY} paused")
    expect(nightly.locator("td").nth(5)).to_have_text("paused")
    assert value(db, paused, web_app.NIGHTLY) is True

    nightly.get_by_role("button", name="Resume").click()
    expect(notice(page)).to_have_text(f"cron entry {web_app.NIGHTLY} resumed")
    expect(nightly.locator("td").nth(5)).to_have_text("active")
    assert value(db, paused, web_app.NIGHTLY) is False

    nightly.get_by_role("button", name="Run now").click()
    expect(notice(page)).to_have_text(
        re.compile(rf"^cron entry {web_app.NIGHTLY} enqueued job \d+$")
    )
    match = re.search(r"enqueued job (\d+)", notice(page).inner_text())
    assert match is not None
    job_id = int(match[1])
    eventually(lambda: state(db, job_id) == "completed")
    assert rows(db, "SELECT job_id, label FROM ledger") == [(job_id, "nightly")]
    expect(nightly.locator("td").nth(4).get_by_role("link")).to_have_text(str(job_id))
    assert dialogs == []
    assert console == []


def test_the_overview_counts_follow_the_database_without_a_reload(
    page: Page, jobs: pgjobs.App, console: list[str]
) -> None:
    page.goto("/")
    available = page.locator("a.count.state-available span")
    expect(available).to_have_text("0")
    expect(page.locator("#live")).to_contain_text("No queue has jobs waiting or running.")
    page.evaluate("window.__same_document = true")

    jobs.enqueue_many([web_app.send_mail.call(f"user{i}@example.com") for i in range(3)])
    expect(available).to_have_text("3", timeout=10_000)  # no worker: they stay available
    expect(row_of(page, "mail").locator("td").nth(1)).to_have_text("3")
    assert page.evaluate("window.__same_document") is True
    assert console == []


def test_a_read_only_dashboard_shows_no_action_and_refuses_a_forged_change(
    dashboards: Callable[..., Dashboard],
    contexts: Callable[..., BrowserContext],
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
) -> None:
    dashboard = dashboards("--read-only")
    page = contexts(dashboard.url).new_page()
    waiting = web_app.report.enqueue_in(3600, "later")
    web_app.send_mail.enqueue("user@example.com")

    for url, shown in [
        ("/", "mail"),
        ("/queues", "mail"),
        ("/jobs?state=scheduled", str(waiting)),
        (f"/jobs/{waiting}", f"Job {waiting}"),
    ]:
        page.goto(url)
        expect(page.locator("main")).to_contain_text(shown)
        expect(page.locator("header .badge")).to_have_text("read-only")
        expect(page.locator("form[method=post]")).to_have_count(0)
        expect(page.get_by_role("button")).to_have_count(
            1 if url.startswith("/jobs?") else 0  # the filter's
        )

    token = csrf_cookie(page.context)
    for action in (f"/jobs/{waiting}/cancel", f"/jobs/{waiting}/run", "/queues/mail/pause"):
        response = page.request.post(
            f"{dashboard.url}{action}",
            form={"csrf": token, "next": "/"},
            headers={"Origin": dashboard.url},
            max_redirects=0,
        )
        assert response.status == 403, action
        assert "this dashboard is read-only" in response.text()
    assert state(db, waiting) == "scheduled"
    assert count(db, "SELECT count(*) FROM pgjobs.queues WHERE paused") == 0


def test_a_token_lets_in_only_the_browser_that_signed_in_with_it(
    dashboards: Callable[..., Dashboard], contexts: Callable[..., BrowserContext]
) -> None:
    token = secrets.token_urlsafe(24)
    dashboard = dashboards(env={"PGJOBS_WEB_TOKEN": token})
    page = contexts(dashboard.url).new_page()
    sign_in = f"{dashboard.url}/sign-in"

    page.goto("/jobs")
    expect(page).to_have_url(sign_in)
    expect(heading(page)).to_have_text("Sign in")
    page.get_by_label("Token").fill(secrets.token_urlsafe(24))
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(sign_in)
    page.goto("/jobs")
    expect(page).to_have_url(sign_in)

    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{dashboard.url}/")
    expect(heading(page)).to_have_text("Overview")
    nav(page, "Jobs")
    expect(heading(page)).to_have_text("Jobs")

    stranger = contexts(dashboard.url).new_page()
    stranger.goto("/")
    expect(stranger).to_have_url(sign_in)


def test_basic_credentials_let_in_only_the_right_user(
    dashboards: Callable[..., Dashboard], contexts: Callable[..., BrowserContext]
) -> None:
    password = secrets.token_urlsafe(16)
    dashboard = dashboards("--user", "admin", env={"PGJOBS_WEB_PASSWORD": password})

    admin = contexts(dashboard.url, http_credentials={"username": "admin", "password": password})
    page = admin.new_page()
    response = page.goto("/")
    assert response is not None and response.status == 200
    expect(heading(page)).to_have_text("Overview")
    nav(page, "Queues")
    expect(heading(page)).to_have_text("Queues")

    stranger = contexts(dashboard.url).new_page()
    # where a person would see a prompt, headless Chromium may give the navigation up
    # (net::ERR_INVALID_AUTH_CREDENTIALS): the answer is what counts
    with stranger.expect_response(f"{dashboard.url}/") as answer, suppress(PlaywrightError):
        stranger.goto("/")
    assert answer.value.status == 401
    assert answer.value.headers["www-authenticate"].startswith("Basic ")
    expect(heading(stranger)).to_have_count(0)

    wrong = {"username": "admin", "password": "not " + password}
    intruder = contexts(dashboard.url, http_credentials=wrong).new_page()
    response = intruder.goto("/")
    assert response is not None and response.status == 401
    expect(intruder.locator("h1")).to_have_text("401")


def test_an_overview_whose_sign_in_lapsed_sends_the_browser_to_sign_in(
    dashboards: Callable[..., Dashboard], contexts: Callable[..., BrowserContext]
) -> None:
    """Live refresh of a browser whose token cookie is gone (it expired, or the token changed):
    the page must not keep showing stale counts, nor the sign-in page inside the overview."""
    token = secrets.token_urlsafe(24)
    dashboard = dashboards(env={"PGJOBS_WEB_TOKEN": token})
    context = contexts(dashboard.url)
    page = context.new_page()
    page.goto("/sign-in")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(heading(page)).to_have_text("Overview")

    with page.expect_response(re.compile(r"/sign-in$"), timeout=10_000):
        context.clear_cookies()  # the next refresh of /live is sent to the sign-in page
    page.wait_for_function(
        """() => location.pathname === "/sign-in"
                 || document.querySelector("#live.stale, #live form") !== null"""
    )
    expect(
        page.locator("#live form, #live header"),
        "the sign-in page (with its own header and nav) was put inside the overview",
    ).to_have_count(0)
    expect(page).to_have_url(f"{dashboard.url}/sign-in")


def test_retry_all_of_a_job_name_beyond_latin_1_says_what_it_did(
    page: Page,
    jobs: pgjobs.App,
    db: psycopg.Connection[Any],
    workers: Callable[..., WorkerProcess],
    dialogs: list[str],
) -> None:
    """Job names are any text; the notice after "Retry all ... named NAME" is kept in a cookie."""
    workers()
    failed = [web_app.daily_report.enqueue() for _ in range(2)]
    eventually(lambda: states(db, failed) == ["discarded"] * 2)
    page.goto("/jobs?state=discarded")
    page.get_by_label("Job").fill(web_app.daily_report.name)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.jobs tbody tr")).to_have_count(2)

    with page.expect_response(re.compile(r"/jobs/retry$")) as answer:
        page.get_by_role(
            "button", name=f"Retry all discarded named {web_app.daily_report.name}"
        ).click()
    assert dialogs == ["Retry every discarded job that matches?"]
    retried = "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND attempt = 2"
    eventually(lambda: count(db, retried, failed) == 2)  # run again, and discarded again
    assert answer.value.status == 303
    expect(notice(page)).to_have_text(
        f"2 discarded jobs named {web_app.daily_report.name} will run again"
    )
