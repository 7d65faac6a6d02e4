"""The ``pgjobs`` command: enqueue, jobs, stats, retry, and the promise that bad input exits 2
with a one-line message, no traceback and nothing written.

Commands run in this process (:func:`~tests.helpers.invoke`); the worker, and the exit statuses of
the real program, run as subprocesses."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.rows import dict_row

import pgjobs
from pgjobs.cli import STATES
from tests import jobs_app, queues_app
from tests.helpers import WorkerProcess, eventually, invoke, run_burst, run_cli

APP = ("--app", "tests.jobs_app:app")
UNREACHABLE = "postgresql://nobody@127.0.0.1:9/nowhere"


def enqueue(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return invoke(database_url, *APP, "enqueue", *args)


def job_row(db: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT *, scheduled_at - inserted_at AS delay FROM pgjobs.jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None, f"no job {job_id}"
    return row


def job_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM pgjobs.jobs").fetchone()
    assert row is not None
    return int(row[0])


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, no traceback, and one ``Error:`` line (besides click's usage hint)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    message = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith(("Usage: ", "Try '"))
    ]
    assert len(message) == 1, result.stderr
    assert message[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in message[0], result.stderr
    assert result.stdout == ""


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def table(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines()]


# --- enqueue ---------------------------------------------------------------------------------


def test_enqueue_prints_the_new_id(database_url: str, db: psycopg.Connection[Any]) -> None:
    result = enqueue(database_url, "noop", "--args", '["x"]')
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout)
    row = job_row(db, job_id)
    assert (row["name"], row["args"], row["kwargs"], row["state"]) == (
        "noop",
        ["x"],
        {},
        "available",
    )
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("default", 0, 25)


def test_enqueue_options(database_url: str, db: psycopg.Connection[Any]) -> None:
    result = enqueue(
        database_url,
        "noop",
        "--kwargs",
        '{"label": "k"}',
        "--queue",
        "mailers",
        "--priority=-3",
        "--max-attempts",
        "2",
    )
    assert result.returncode == 0, result.stderr
    row = job_row(db, int(result.stdout))
    assert (row["args"], row["kwargs"]) == ([], {"label": "k"})
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("mailers", -3, 2)


@pytest.mark.parametrize(
    ("text", "seconds"), [("5m", 300), ("90", 90), ("30s", 30), ("2h", 7200), ("1d", 86400)]
)
def test_enqueue_in_schedules_by_the_database_clock(
    database_url: str, db: psycopg.Connection[Any], text: str, seconds: int
) -> None:
    result = enqueue(database_url, "noop", "--in", text)
    assert result.returncode == 0, result.stderr
    row = job_row(db, int(result.stdout))
    assert row["state"] == "scheduled"
    assert row["delay"] == timedelta(seconds=seconds)


def test_enqueue_at_keeps_the_offset(database_url: str, db: psycopg.Connection[Any]) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    when = (datetime.now(UTC) + timedelta(days=2)).astimezone(india)
    result = enqueue(database_url, "noop", "--at", when.isoformat())
    assert result.returncode == 0, result.stderr
    row = job_row(db, int(result.stdout))
    assert row["state"] == "scheduled"
    assert row["scheduled_at"] == when  # the same instant, not 09:00 read as UTC


def test_enqueue_at_in_the_past_is_available_now(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    result = enqueue(database_url, "noop", "--at", "2001-02-03T04:05:06-07:00")
    assert result.returncode == 0, result.stderr
    row = job_row(db, int(result.stdout))
    assert row["state"] == "available"
    assert row["scheduled_at"] == datetime(2001, 2, 3, 11, 5, 6, tzinfo=UTC)


BAD_ENQUEUES = [
    pytest.param([*APP, "enqueue", "missing"], "missing", id="unknown-job"),
    pytest.param([*APP, "enqueue", "noop", "--args", '["x"'], "--args", id="args-invalid-json"),
    pytest.param([*APP, "enqueue", "noop", "--args", '{"a": 1}'], "--args", id="args-not-array"),
    pytest.param([*APP, "enqueue", "noop", "--args", '"x"'], "--args", id="args-string"),
    pytest.param([*APP, "enqueue", "noop", "--kwargs", "[1]"], "--kwargs", id="kwargs-not-object"),
    pytest.param([*APP, "enqueue", "noop", "--at", "2030-01-01T09:00"], "--at", id="naive-at"),
    pytest.param([*APP, "enqueue", "noop", "--at", "tomorrow"], "--at", id="unparsable-at"),
    pytest.param([*APP, "enqueue", "noop", "--in", "5x"], "--in", id="bad-in-unit"),
    pytest.param([*APP, "enqueue", "noop", "--in", "m"], "--in", id="bad-in-no-number"),
    pytest.param([*APP, "enqueue", "noop", "--in", "-5m"], "--in", id="negative-in"),
    pytest.param([*APP, "enqueue", "noop", "--in", "nan"], "--in", id="in-nan"),
    pytest.param([*APP, "enqueue", "noop", "--in", "inf"], "--in", id="in-infinite"),
    pytest.param([*APP, "enqueue", "noop", "--in", ""], "--in", id="in-empty"),
    pytest.param(
        [*APP, "enqueue", "noop", "--in", "1e13"],  # 300,000 years: past timestamptz's range
        "--in",
        id="in-out-of-range",
    ),
    pytest.param([*APP, "enqueue", "noop", "--at", ""], "--at", id="at-empty"),
    pytest.param(
        [*APP, "enqueue", "noop", "--in", "5m", "--at", "2030-01-01T09:00+00:00"],
        "at",
        id="at-and-in",
    ),
    pytest.param([*APP, "enqueue", "noop", "--queue", "a b"], "queue", id="bad-queue"),
    pytest.param(
        [*APP, "enqueue", "anything", "--kwargs", '{"k": "\\u0000"}'],
        'kwargs["k"]: contains a NUL',
        id="kwargs-nul",
    ),
    pytest.param(
        [*APP, "enqueue", "anything", "--args", '["\udcff"]'],  # the byte 0xff: not UTF-8
        "args[0]: contains a lone surrogate",
        id="args-not-utf8",
    ),
    pytest.param([*APP, "enqueue", "noop", "--priority", "40000"], "priority", id="bad-priority"),
    pytest.param([*APP, "enqueue", "noop", "--max-attempts", "0"], "max_attempts", id="attempts-0"),
    pytest.param(
        [*APP, "enqueue", "noop", "--max-attempts", "2147483648"],
        "max_attempts: must be from 1 to 2147483647",
        id="attempts-past-integer",
    ),
    pytest.param(
        [*APP, "enqueue", "noop", "--max-attempts", "99999999999"],
        "max_attempts",
        id="attempts-99999999999",
    ),
    pytest.param(
        [*APP, "enqueue", "anything", "--args", "[" * 20000 + "]" * 20000],
        "--args: nested deeper than 64 levels",
        id="args-nested-past-the-json-parser",
    ),
    pytest.param(
        [*APP, "enqueue", "anything", "--kwargs", '{"a": ' + "[" * 20000 + "]" * 20000 + "}"],
        "--kwargs: nested deeper than 64 levels",
        id="kwargs-nested-past-the-json-parser",
    ),
    pytest.param(
        [*APP, "enqueue", "anything", "--args", "[" * 100 + "]" * 100],
        "nested deeper than 64 levels",
        id="args-nested-too-deep",
    ),
    pytest.param([*APP, "enqueue", "noop", "--args", '["a\\u0000b"]'], "NUL", id="nul-in-argument"),
    pytest.param(
        ["--app", "tests.no_such_module:app", "enqueue", "noop"],
        "cannot import",
        id="app-module-missing",
    ),
    pytest.param(
        ["--app", "tests.jobs_app:record", "enqueue", "noop"],
        "not a pgjobs.App",
        id="app-attribute-not-an-app",
    ),
    pytest.param(
        ["--app", "tests.jobs_app:nothing", "enqueue", "noop"],
        "not a pgjobs.App",
        id="app-attribute-missing",
    ),
    pytest.param(
        ["--app", "tests.jobs_app", "enqueue", "noop"], "MODULE:ATTRIBUTE", id="app-without-colon"
    ),
    pytest.param(["enqueue", "noop"], "--app", id="no-app"),
    pytest.param(
        ["--database-url", "not-a-url", *APP, "enqueue", "noop"],
        "not a PostgreSQL URL",
        id="database-url-not-a-url",
    ),
    pytest.param([*APP, "enqueue", "noop", "--args", '["a", "b", "c"]'], "noop", id="args-misfit"),
    pytest.param([*APP, "enqueue", "noop", "--kwargs", '{"conn": 1}'], "conn", id="kwargs-conn"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD_ENQUEUES)
def test_bad_enqueue_exits_2_and_writes_nothing(
    database_url: str, db: psycopg.Connection[Any], args: list[str], fragment: str
) -> None:
    result = invoke(database_url, *args)
    assert job_count(db) == 0
    assert_usage_error(result, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["cron", "run", "\udcff"], "name: contains a lone surrogate", id="cron-run"),
        pytest.param(["cron", "pause", "\udcff"], "name: contains a lone", id="cron-pause"),
        pytest.param(["jobs", "--queue", "\udcff"], "queues: contains a lone", id="jobs-queue"),
        pytest.param(
            ["retry", "--all", "--name", "\udcff"], "names: contains a lone", id="retry-name"
        ),
    ],
)
def test_a_name_that_is_not_utf8_exits_2(
    database_url: str, db: psycopg.Connection[Any], args: list[str], fragment: str
) -> None:
    """Bytes that are not UTF-8 on the command line (here 0xff) reach Python as lone
    surrogates, which no PostgreSQL text can hold."""
    assert_usage_error(invoke(database_url, *args), fragment)


def test_database_url_flag_wins_over_the_environment(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    result = invoke(UNREACHABLE, "--database-url", database_url, *APP, "enqueue", "noop")
    assert result.returncode == 0, result.stderr
    assert job_row(db, int(result.stdout))["name"] == "noop"


def test_the_program_exits_2_on_bad_input_with_one_line(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """The installed ``pgjobs`` program itself, not the command run in this process."""
    result = run_cli(database_url, *APP, "enqueue", "noop", "--in", "5x")
    assert job_count(db) == 0
    assert_usage_error(result, "--in")


def test_unreachable_database_exits_1_without_a_traceback() -> None:
    result = run_cli(UNREACHABLE, *APP, "enqueue", "noop", env={"PGJOBS_CONNECT_TIMEOUT": "1"})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")
    assert result.stdout == ""


# --- jobs and stats --------------------------------------------------------------------------


@pytest.fixture
def three_jobs(app: pgjobs.App) -> dict[str, int]:
    """A discarded job (3 failed attempts, "boom"), then an available and a scheduled one."""
    discarded = jobs_app.always_fails.enqueue()
    run_burst(app)
    available = jobs_app.noop.enqueue("now")
    scheduled = jobs_app.noop.options(queue="mailers").enqueue_in(3600, "later")
    return {"discarded": discarded, "available": available, "scheduled": scheduled}


def test_jobs_json(database_url: str, three_jobs: dict[str, int]) -> None:
    everything = json_lines(invoke(database_url, "jobs", "--json"))
    assert [j["id"] for j in everything] == [
        three_jobs["scheduled"],
        three_jobs["available"],
        three_jobs["discarded"],
    ]
    assert [j["state"] for j in everything] == ["scheduled", "available", "discarded"]

    (dead,) = json_lines(invoke(database_url, "jobs", "--json", "--state", "discarded"))
    assert (dead["name"], dead["attempt"], dead["max_attempts"]) == ("always_fails", 3, 3)
    assert [e["message"] for e in dead["errors"]] == ["boom"] * 3

    (mailer,) = json_lines(invoke(database_url, "jobs", "--json", "--queue", "mailers"))
    assert (mailer["id"], mailer["args"], mailer["queue"]) == (
        three_jobs["scheduled"],
        ["later"],
        "mailers",
    )

    waiting = invoke(database_url, "jobs", "--json", "--state", "available", "--state", "scheduled")
    assert [j["id"] for j in json_lines(waiting)] == [
        three_jobs["scheduled"],
        three_jobs["available"],
    ]
    both = invoke(database_url, "jobs", "--json", "--queue", "default", "--state", "scheduled")
    assert json_lines(both) == []
    newest = invoke(database_url, "jobs", "--json", "--limit", "1")
    assert [j["id"] for j in json_lines(newest)] == [three_jobs["scheduled"]]


def test_jobs_table(database_url: str, three_jobs: dict[str, int]) -> None:
    lines = invoke(database_url, "jobs")
    assert lines.returncode == 0, lines.stderr
    header, *rows = lines.stdout.splitlines()
    assert header.split() == [
        "id",
        "queue",
        "name",
        "state",
        "attempt",
        "scheduled_at",
        "last",
        "error",
    ]
    by_id = {int(row.split()[0]): row for row in rows}
    assert set(by_id) == set(three_jobs.values())
    dead = by_id[three_jobs["discarded"]].split()
    assert dead[1:5] == ["default", "always_fails", "discarded", "3/3"]
    assert dead[-1] == "boom"
    assert by_id[three_jobs["scheduled"]].split()[1:5] == ["mailers", "noop", "scheduled", "0/25"]

    filtered = table(invoke(database_url, "jobs", "--queue", "mailers", "--state", "scheduled"))
    assert [row[0] for row in filtered] == ["id", str(three_jobs["scheduled"])]


def test_jobs_refuses_an_unknown_state(database_url: str) -> None:
    assert_usage_error(invoke(database_url, "jobs", "--state", "finished"), "--state")


def test_stats(database_url: str, app: pgjobs.App) -> None:
    empty = invoke(database_url, "stats", "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == {}

    jobs_app.always_fails.enqueue()
    run_burst(app)
    jobs_app.noop.enqueue("now")
    jobs_app.noop.options(queue="mailers").enqueue_in(3600, "later")
    jobs_app.noop.options(queue="mailers").enqueue_in(3600, "later")

    counts = invoke(database_url, "stats", "--json")
    assert counts.returncode == 0, counts.stderr
    assert json.loads(counts.stdout) == {
        "default": {"available": 1, "discarded": 1},
        "mailers": {"scheduled": 2},
    }

    header, *rows = table(invoke(database_url, "stats"))
    assert header == ["queue", *STATES]
    by_queue = {row[0]: dict(zip(STATES, map(int, row[1:]), strict=True)) for row in rows}
    assert by_queue["default"] == {s: int(s in ("available", "discarded")) for s in STATES}
    assert by_queue["mailers"] == {s: 2 if s == "scheduled" else 0 for s in STATES}
    assert set(by_queue) == {"default", "mailers"}


# --- retry -----------------------------------------------------------------------------------


def test_retry_gives_a_discarded_job_one_more_attempt(
    database_url: str, db: psycopg.Connection[Any], app: pgjobs.App
) -> None:
    job_id = jobs_app.always_fails.enqueue()
    run_burst(app)
    assert job_row(db, job_id)["state"] == "discarded"

    result = invoke(database_url, "retry", str(job_id))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"job {job_id} will run again"
    row = job_row(db, job_id)
    assert (row["state"], row["attempt"], row["max_attempts"]) == ("available", 3, 4)
    assert row["finished_at"] is None
    run_burst(app)
    row = job_row(db, job_id)
    assert (row["state"], row["attempt"], len(row["errors"])) == ("discarded", 4, 4)
    ran = db.execute("SELECT attempt FROM ledger WHERE job_id = %s ORDER BY at", (job_id,))
    assert [r[0] for r in ran.fetchall()] == [1, 2, 3, 4]


def test_retry_of_a_missing_job_exits_2(database_url: str, db: psycopg.Connection[Any]) -> None:
    assert_usage_error(invoke(database_url, "retry", "987654"), "no job 987654")
    assert job_count(db) == 0


def test_retry_of_a_running_job_is_refused(
    database_url: str, db: psycopg.Connection[Any], app: pgjobs.App
) -> None:
    job_id = jobs_app.noop.enqueue("busy")
    db.execute(
        "UPDATE pgjobs.jobs SET state = 'running', attempt = 1, attempted_at = now(), "
        "worker_id = gen_random_uuid() WHERE id = %s",
        (job_id,),
    )
    before = job_row(db, job_id)

    result = invoke(database_url, "retry", str(job_id))

    assert_usage_error(result, f"job {job_id} is running")
    assert job_row(db, job_id) == before


def test_worker_takes_app_after_the_command(database_url: str, db: psycopg.Connection[Any]) -> None:
    enqueued = invoke(database_url, *APP, "enqueue", "noop", "--args", '["after"]')
    assert enqueued.returncode == 0, enqueued.stderr
    result = run_cli(database_url, "worker", "--app", "tests.jobs_app:app", "--burst")
    assert result.returncode == 0, result.stderr
    assert job_row(db, int(enqueued.stdout))["state"] == "completed"


@pytest.fixture
def queued_app(database_url: str) -> Iterator[pgjobs.App]:
    """``tests.queues_app``: jobs on the queues default, mailers, reports and imports."""
    queues_app.app.configure(database_url=database_url)
    yield queues_app.app
    queues_app.app.close()


def enqueue_on_every_queue() -> dict[str, int]:
    return {
        "default": queues_app.plain.enqueue(),
        "mailers": queues_app.mail.enqueue(),
        "reports": queues_app.report.enqueue(),
        "imports": queues_app.plain.options(queue="imports").enqueue(),
    }


def states(db: psycopg.Connection[Any], ids: dict[str, int]) -> dict[str, str]:
    return {queue: job_row(db, job_id)["state"] for queue, job_id in ids.items()}


def test_a_worker_serves_every_queue_its_app_declares_unless_told(
    database_url: str, db: psycopg.Connection[Any], queued_app: pgjobs.App
) -> None:
    worker = ("--app", "tests.queues_app:app", "worker", "--burst")
    ids = enqueue_on_every_queue()
    result = run_cli(database_url, *worker)
    assert result.returncode == 0, result.stderr
    assert states(db, ids) == dict.fromkeys(ids, "completed")
    assert "queues default:1,imports:1,mailers:1,reports:1" in result.stderr

    ids = enqueue_on_every_queue()
    result = run_cli(database_url, *worker, "--queues", "mailers,imports")
    assert result.returncode == 0, result.stderr
    assert states(db, ids) == {
        "default": "available",
        "mailers": "completed",
        "reports": "available",
        "imports": "completed",
    }
    # the queues of the app that this worker leaves to others are named
    assert "not served here: default, reports" in result.stderr

    result = run_cli(database_url, *worker, env={"PGJOBS_QUEUES": "reports"})
    assert result.returncode == 0, result.stderr
    assert states(db, ids)["reports"] == "completed"
    assert states(db, ids)["default"] == "available"


def test_worker_help_says_which_queues_it_serves_by_default() -> None:
    result = invoke(None, "worker", "--help")
    assert result.returncode == 0, result.stderr
    assert "default: every queue the app declares" in " ".join(result.stdout.split())


# --- version, --app, ids, secrets, refusals ----------------------------------------------------


def test_version() -> None:
    result = run_cli(None, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pgjobs {importlib.metadata.version('pgjobs')}\n"


@pytest.mark.parametrize("path", ["tests.jobs_app:app", "tests.jobs_app.app"])
def test_app_paths_resolve_like_pkgutil(
    database_url: str, db: psycopg.Connection[Any], path: str
) -> None:
    result = invoke(database_url, "--app", path, "enqueue", "noop")
    assert result.returncode == 0, result.stderr
    assert job_row(db, int(result.stdout))["name"] == "noop"


@pytest.mark.parametrize("command", ["retry", "cancel"])
@pytest.mark.parametrize("job_id", [str(2**63), str(10**30), "12abc"])
def test_job_ids_outside_bigint_are_refused(
    database_url: str, db: psycopg.Connection[Any], command: str, job_id: str
) -> None:
    assert_usage_error(invoke(database_url, command, job_id), "JOB_ID")
    assert job_count(db) == 0


PASSWORD = "s3cr3t-Pw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://bob:{PASSWORD}%zz@127.0.0.1:5432/app",  # bad percent-encoding
        f"postgresql://bob:{PASSWORD}@[::1/app",  # libpq quotes the whole URL back
        f"postgresql://bob:{PASSWORD}@127.0.0.1:5432/app?nonsense=1",
        f"host=127.0.0.1 password={PASSWORD} junk",
        f"host=127.0.0.1 password={PASSWORD} with-a-space dbname=app",
        f"postgresql://bob@127.0.0.1/app?password={PASSWORD}&bad",
    ],
)
def test_a_malformed_url_is_refused_without_its_password(
    database_url: str, db: psycopg.Connection[Any], url: str
) -> None:
    result = invoke(UNREACHABLE, "--database-url", url, *APP, "enqueue", "noop")
    assert PASSWORD not in result.stdout + result.stderr
    assert_usage_error(result, "database_url: ", "is not a PostgreSQL URL or DSN", "***")
    assert job_count(db) == 0


def server_url_as(server_url: str, user: str, dbname: str) -> str:
    parts = urlsplit(server_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}", path=f"/{dbname}"))


@pytest.mark.parametrize("missing", ["database", "role"])
@pytest.mark.parametrize(
    "args", [["stats"], ["jobs"], [*APP, "enqueue", "noop"], ["cancel", "1"], ["migrate"]]
)
def test_a_refused_connection_says_why_at_once(
    server_url: str, missing: str, args: list[str]
) -> None:
    user = urlsplit(server_url).username or "postgres"
    if missing == "database":
        url, reason = server_url_as(server_url, user, "no_such_db"), 'database "no_such_db"'
    else:
        url, reason = server_url_as(server_url, "no_such_role", "postgres"), 'role "no_such_role"'
    started = time.monotonic()
    result = invoke(url, *args)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        line for line in result.stderr.splitlines() if line.startswith("Error: ")
    ], result.stderr
    assert f"{reason} does not exist" in result.stderr
    assert elapsed < 8, elapsed  # not the pool's 10 s connect timeout


def test_the_api_says_why_a_connection_is_refused_at_once(server_url: str) -> None:
    user = urlsplit(server_url).username or "postgres"
    registry = pgjobs.App(database_url=server_url_as(server_url, user, "no_such_db"))
    job = registry.job(name="refused")(lambda: None)
    started = time.monotonic()
    with pytest.raises(pgjobs.DatabaseError, match='database "no_such_db" does not exist'):
        job.enqueue()
    with pytest.raises(pgjobs.DatabaseError, match='database "no_such_db" does not exist'):
        asyncio.run(job.enqueue_async())
    assert time.monotonic() - started < 8
    registry.close()


@pytest.mark.fresh_database
def test_migrate_prints_its_summary_only(empty_database_url: str) -> None:
    from pgjobs._migrate import head_revision

    result = invoke(empty_database_url, "migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"schema 'pgjobs': empty -> {head_revision()}\n"
    assert "alembic" not in result.stderr and "Running upgrade" not in result.stderr


@pytest.fixture
def stranger(server_url: str) -> Iterator[str]:
    """A role that may log in and owns nothing."""
    name = f"pgjobs_stranger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
    yield name
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP ROLE "{name}"')


@pytest.mark.parametrize("schema", ["pgjobs", "not_yet_created"])
def test_migrate_as_a_role_that_does_not_own_the_schema(
    server_url: str, database_url: str, stranger: str, schema: str
) -> None:
    url = server_url_as(server_url, stranger, urlsplit(database_url).path.lstrip("/"))
    result = invoke(url, "--schema", schema, "migrate")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: cannot migrate schema '{schema}': permission denied"), line
    assert "connect as the role that owns it" in line


@pytest.fixture
def secret_url(server_url: str, database_url: str) -> Iterator[str]:
    """The test database's URL as a superuser whose password is :data:`PASSWORD`."""
    name = f"pgjobs_secret_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE \"{name}\" LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    parts = urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    yield urlunsplit(parts._replace(netloc=f"{name}:{PASSWORD}@{host}"))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP ROLE "{name}"')


def test_supervised_workers_get_urls_in_their_environment_not_their_command_line(
    database_url: str, db: psycopg.Connection[Any], secret_url: str, tmp_path: Path
) -> None:
    supervisor = WorkerProcess.start(
        [
            "--database-url",
            secret_url,
            *APP,
            "worker",
            "--processes",
            "2",
            f"--listen-database-url={secret_url}",
        ],
        database_url=UNREACHABLE,  # PGJOBS_DATABASE_URL: the flag must win in the children too
        log=tmp_path / "supervisor.log",
    )
    try:
        # both children started and past exec (between fork and exec a child shows the parent's
        # own command line)
        eventually(
            lambda: (
                len(supervisor.children()) == 2
                and all(
                    b"-m\0pgjobs" in Path(f"/proc/{c}/cmdline").read_bytes()
                    for c in supervisor.children()
                )
            ),
            timeout=30,
        )
        assert PASSWORD in Path(f"/proc/{supervisor.process.pid}/cmdline").read_text()
        for child in supervisor.children():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            assert PASSWORD.encode() not in b" ".join(argv), argv
            assert b"worker" in argv and b"--processes" in argv
        job_id = enqueue(database_url, "noop")
        assert job_id.returncode == 0, job_id.stderr
        eventually(lambda: job_row(db, int(job_id.stdout))["state"] == "completed", timeout=30)
        # both children registered with the URL from their environment (one may still be starting)
        eventually(lambda: db.execute("SELECT count(*) FROM pgjobs.workers").fetchone() == (2,))
    finally:
        supervisor.signal(signal.SIGTERM)
        supervisor.wait(timeout=60)
        supervisor.kill()
    assert PASSWORD not in supervisor.output()


@pytest.mark.parametrize("command", [["cancel", "1"], ["retry", "1"], ["job", "1"], ["stats"]])
def test_commands_before_migrating_say_to_migrate(
    empty_database_url: str, command: list[str]
) -> None:
    result = invoke(empty_database_url, *command)
    assert result.returncode == 2, result.stderr
    assert "run `pgjobs migrate` first" in result.stderr
    assert "Traceback" not in result.stderr
