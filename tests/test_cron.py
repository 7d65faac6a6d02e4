"""Cron entries: parsing and tick computation (pure, by tables, DST included), and real workers
enqueuing each tick exactly once, catching up after downtime, pausing, resuming and running an
entry now from Python, the CLI and SQL.

Sizes: three workers share a per-second entry for 8 ticks by default, 60 with
``PGJOBS_FAULTS=full``."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

import pgjobs
import pgjobs._sql
from pgjobs._cron import MAX_CATCH_UP, CatchUp, due, encode_rows, next_runs, parse, tick_text
from tests import cron_app
from tests.helpers import WorkerProcess, count, eventually, invoke, rows, run_cli, value

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")

# --- pure: parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    ["*/5 * * * *", "0 9 * * mon-fri", "*/10 * * * * *", "0 30 2 1 * *", "@hourly", "@daily"],
)
def test_valid_expressions_parse(expression: str) -> None:
    parse("entry", expression, "Europe/Berlin")


@pytest.mark.parametrize(
    ("expression", "tz", "message"),
    [
        ("0 25 * * *", "UTC", "hour field '25' is not valid: expected values 0-23"),
        ("61 * * * *", "UTC", "minute field '61' is not valid: expected values 0-59"),
        ("* * 0 * *", "UTC", "day field '0' is not valid: expected values 1-31"),
        ("* * * 13 *", "UTC", "month field '13' is not valid: expected values 1-12"),
        ("* * * * 9", "UTC", "weekday field '9' is not valid: expected values 0-7"),
        ("99 * * * * *", "UTC", "second field '99' is not valid: expected values 0-59"),
        ("* * *", "UTC", "'* * *' has 3 fields; expected 5"),
        ("* * * * * * *", "UTC", "has 7 fields; expected 5"),
        ("@often", "UTC", "unknown nickname '@often'"),
        ("0 0 31 2 *", "UTC", "'0 0 31 2 *' never matches a date"),
        ("* * * * *", "Mars/Base", "unknown time zone 'Mars/Base'; use an IANA name"),
        ("* * * * *", "", "unknown time zone ''"),
        ("* * * * *", "A" * 10_000, "unknown time zone 'AAAAAAAAAA"),
        ("* * * * *", "UTC\x00", "unknown time zone 'UTC\\x00'"),
        ("* * * * *", "Europe/\udc80", "unknown time zone 'Europe/\\udc80'"),
    ],
)
def test_malformed_expressions_name_the_entry_and_field(
    expression: str, tz: str, message: str
) -> None:
    with pytest.raises(pgjobs.ConfigError) as caught:
        parse("reports.nightly", expression, tz)
    assert str(caught.value).startswith("cron entry 'reports.nightly': ")
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300  # a long value is shortened


def test_without_croniter_a_cron_entry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)  # import croniter now fails
    with pytest.raises(pgjobs.ConfigError, match=r"pip install 'pgjobs\[cron\]'"):
        parse("entry", "* * * * *", "UTC")


def test_declarations_are_checked_at_import() -> None:
    app = pgjobs.App()

    @app.job(name="report")
    def report(day: str, tick: str = "") -> None: ...

    app.periodic(report, cron="@daily", args=("mon",), name="report.daily")
    with pytest.raises(pgjobs.ConfigError, match=r"'report\.daily' is already declared"):
        app.periodic(report, cron="@daily", args=("mon",), name="report.daily")
    with pytest.raises(pgjobs.ConfigError, match="cron entry 'report': report: missing a required"):
        app.periodic(report, cron="@daily")
    with pytest.raises(pgjobs.ConfigError, match=r"cron entry 'x': args\[0\]"):
        app.periodic(report, cron="@daily", args=(object(),), name="x")
    with pytest.raises(pgjobs.ConfigError, match="catch_up 'all' must be 'latest', 'none'"):
        app.periodic(report, cron="@daily", args=("mon",), name="y", catch_up="all")  # type: ignore[arg-type]
    with pytest.raises(pgjobs.ConfigError, match="catch_up window must be positive"):
        app.periodic(report, cron="@daily", args=("m",), name="z", catch_up=timedelta(0))
    with pytest.raises(pgjobs.ConfigError, match="unexpected keyword argument 'when'"):
        app.periodic(report, cron="@daily", args=("m",), name="w", tick_kwarg="when")
    with pytest.raises(pgjobs.ConfigError, match="cron entry 'bad name'"):
        app.periodic(report, cron="@daily", args=("m",), name="bad name")
    with pytest.raises(pgjobs.ConfigError, match="cron entry 'nightly': hour field '24'"):

        @app.job(name="nightly", cron="0 24 * * *")
        def nightly() -> None: ...

    with pytest.raises(pgjobs.ConfigError, match="'report' is not a job of this app"):
        pgjobs.App().periodic(report, cron="@daily", args=("m",))
    assert list(app.cron_entries) == ["report.daily"]
    assert "nightly" not in app.jobs


# --- pure: ticks, daylight saving time ---------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "expression", "start", "expected"),
    [
        # spring forward, Europe/Berlin 2025-03-30 02:00 -> 03:00: a daily 02:30 runs at 03:00, once
        (BERLIN, "30 2 * * *", "2025-03-29T12:00", ["03-30T03:00+02:00", "03-31T02:30+02:00"]),
        (BERLIN, "0 2 * * *", "2025-03-29T12:00", ["03-30T03:00+02:00", "03-31T02:00+02:00"]),
        # autumn, 2025-10-26 03:00 -> 02:00: a fixed time in the repeated hour runs once
        (BERLIN, "30 2 * * *", "2025-10-25T12:00", ["10-26T02:30+02:00", "10-27T02:30+01:00"]),
        (BERLIN, "30 1 * * *", "2025-10-25T12:00", ["10-26T01:30+02:00", "10-27T01:30+01:00"]),
        # wildcard hour: real time, both 02:00s in autumn, no 02:xx in spring
        (
            BERLIN,
            "0 * * * *",
            "2025-10-26T00:30",
            ["10-26T01:00+02:00", "10-26T02:00+02:00", "10-26T02:00+01:00", "10-26T03:00+01:00"],
        ),
        (
            BERLIN,
            "*/30 * * * *",
            "2025-03-30T01:15",
            ["03-30T01:30+01:00", "03-30T03:00+02:00", "03-30T03:30+02:00"],
        ),
        (BERLIN, "30 * * * *", "2025-03-30T00:45", ["03-30T01:30+01:00", "03-30T03:30+02:00"]),
        # America/New_York: 2025-03-09 02:00 -> 03:00, 2025-11-02 02:00 -> 01:00
        (NEW_YORK, "30 2 * * *", "2025-03-08T12:00", ["03-09T03:00-04:00", "03-10T02:30-04:00"]),
        (NEW_YORK, "30 1 * * *", "2025-11-01T12:00", ["11-02T01:30-04:00", "11-03T01:30-05:00"]),
        (NEW_YORK, "0 30 1 * * *", "2025-11-01T12:00", ["11-02T01:30-04:00", "11-03T01:30-05:00"]),
        (
            NEW_YORK,
            "@hourly",
            "2025-11-02T00:30",
            ["11-02T01:00-04:00", "11-02T01:00-05:00", "11-02T02:00-05:00"],
        ),
        (NEW_YORK, "@daily", "2025-11-01T12:00", ["11-02T00:00-04:00", "11-03T00:00-05:00"]),
        (
            ZoneInfo("UTC"),
            "*/15 * * * * *",
            "2025-01-01T00:00",
            ["01-01T00:00:15+00:00", "01-01T00:00:30+00:00"],
        ),
    ],
)
def test_ticks_across_daylight_saving_changes(
    zone: ZoneInfo, expression: str, start: str, expected: list[str]
) -> None:
    schedule = parse("entry", expression, zone.key)
    moment = datetime.fromisoformat(start).replace(tzinfo=zone)
    ticks = next_runs(schedule, moment, len(expected))
    shown = [t.astimezone(zone).isoformat()[5:] for t in ticks]
    assert shown == [e if e.count(":") == 3 else f"{e[:11]}:00{e[11:]}" for e in expected]


def test_a_daily_entry_runs_once_on_each_change_day_and_backwards_agrees() -> None:
    for expression in ("30 2 * * *", "0 2 * * *", "30 1 * * *", "0 3 * * *"):
        schedule = parse("entry", expression, "Europe/Berlin")
        for day in ("2025-03-30", "2025-10-26"):
            start = datetime.fromisoformat(day).replace(tzinfo=BERLIN)
            end = start + timedelta(days=1)
            forward = [t for t in next_runs(schedule, start - timedelta(seconds=1), 3) if t < end]
            assert len(forward) == 1, (expression, day, forward)
            backward = next(schedule.ticks_until(end))
            assert backward == forward[0]


# --- pure: what is due after downtime ----------------------------------------------------------

NOW = datetime(2026, 12, 4, 12, 0, 30, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "last_tick", "catch_up", "ticks", "through"),
    [
        # on time: the tick since the last one
        ("* * * * *", "2026-12-04T11:59", "latest", ["12:00"], "12:00"),
        ("* * * * *", "2026-12-04T12:00", "latest", None, None),
        # two hours down: ticks under 60 s late always run; older ones by the rule
        ("* * * * *", "2026-12-04T10:00", "latest", ["12:00"], "12:00"),
        ("* * * * *", "2026-12-04T10:00", "none", ["12:00"], "12:00"),
        (
            "* * * * *",
            "2026-12-04T10:00",
            timedelta(minutes=3),
            ["11:58", "11:59", "12:00"],
            "12:00",
        ),
        # a scheduler 5 s late on a per-second entry enqueues the 5 ticks, whatever the rule
        (
            "* * * * * *",
            "2026-12-04T12:00:25",
            "none",
            [f"12:00:{s}" for s in range(26, 31)],
            "12:00:30",
        ),
        # a yearly entry, down since 2020
        ("0 0 1 1 *", "2020-01-01", "latest", ["2026-01-01"], "2026-01-01"),
        ("0 0 1 1 *", "2020-01-01", "none", [], "2026-01-01"),
        (
            "0 0 1 1 *",
            "2020-01-01",
            timedelta(days=1000),
            ["2025-01-01", "2026-01-01"],
            "2026-01-01",
        ),
        ("0 0 1 1 *", "2026-01-01", "latest", None, None),
    ],
)
def test_due_ticks_under_each_catch_up_rule(
    expression: str,
    last_tick: str,
    catch_up: CatchUp,
    ticks: list[str] | None,
    through: str | None,
) -> None:
    def moment(text: str) -> datetime:
        return at(text) if "-" in text else at(f"2026-12-04T{text}")

    result = due(parse("entry", expression, "UTC"), at(last_tick), NOW, catch_up)
    if ticks is None:
        assert result is None
        return
    assert result is not None
    assert list(result.ticks) == [moment(t) for t in ticks]
    assert through is not None and result.through == moment(through)


def test_a_catch_up_window_enqueues_at_most_the_newest_max_ticks() -> None:
    schedule = parse("entry", "* * * * * *", "UTC")
    result = due(schedule, NOW - timedelta(days=2), NOW, timedelta(days=1))
    assert result is not None
    assert len(result.ticks) == MAX_CATCH_UP
    assert result.ticks[-1] == NOW.replace(microsecond=0) == result.through
    assert result.ticks[0] == result.through - timedelta(seconds=MAX_CATCH_UP - 1)


# --- real workers ------------------------------------------------------------------------------


@pytest.fixture
def cron_worker(database_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``pgjobs worker`` on an app of tests/cron_app.py; all are killed at the end."""
    started: list[WorkerProcess] = []

    def start(attribute: str = "app") -> WorkerProcess:
        process = WorkerProcess.start(
            ["--app", f"tests.cron_app:{attribute}", "worker", "--shutdown-timeout", "3"],
            database_url=database_url,
            log=tmp_path / f"cron-worker-{len(started)}.log",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def stop(*workers: WorkerProcess) -> None:
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait() == 0, worker.output()


def jobs_per_tick(
    db: psycopg.Connection[Any], entry: str, *, besides: list[int] | None = None
) -> dict[datetime, int]:
    """Jobs of ``entry`` by the tick they were enqueued for, leaving out the jobs ``besides``."""
    found = rows(
        db,
        "SELECT kwargs->>'tick', count(*) FROM pgjobs.jobs"
        " WHERE kwargs->>'entry' = %s AND id <> ALL(%s) GROUP BY 1",
        entry,
        besides or [],
    )
    return {datetime.fromisoformat(tick): n for tick, n in found}


SPAN = 60 if os.environ.get("PGJOBS_FAULTS") == "full" else 8
"""Ticks (seconds) the three workers of the test below run for: ``PGJOBS_FAULTS=full`` a minute."""


def test_three_workers_enqueue_each_tick_exactly_once(
    cron_worker: Callable[..., WorkerProcess], db: psycopg.Connection[Any]
) -> None:
    workers = [cron_worker() for _ in range(3)]
    for worker in workers:
        worker.wait_for_log("cron: 5 entries declared")
    started = datetime.now(UTC)

    def enough() -> bool:
        return sum(1 for tick in jobs_per_tick(db, "every.second") if tick > started) >= SPAN

    eventually(enough, timeout=SPAN + 20)
    stop(*workers)
    per_tick = jobs_per_tick(db, "every.second")
    first, last = min(per_tick), max(per_tick)
    expected = int((last - first).total_seconds()) + 1
    print(f"ticks enqueued {sum(per_tick.values())} vs expected {expected}")
    assert all(n == 1 for n in per_tick.values()), per_tick
    assert sorted(per_tick) == [first + timedelta(seconds=s) for s in range(expected)]
    labels = rows(
        db, "SELECT label, count(*) FROM ledger WHERE label LIKE 'every.second@%%' GROUP BY 1"
    )
    assert labels and all(n == 1 for _, n in labels)


def test_catch_up_after_downtime(
    cron_worker: Callable[..., WorkerProcess], db: psycopg.Connection[Any]
) -> None:
    worker = cron_worker()
    worker.wait_for_log("cron: 5 entries declared")
    stop(worker)
    db.execute(
        "UPDATE pgjobs.cron_entries SET last_tick_at = '2020-01-01T00:00Z'"
        " WHERE name LIKE 'catch.%%'"
    )
    now = datetime.now(UTC)
    newest = datetime(now.year, 1, 1, tzinfo=UTC)
    in_window = [
        datetime(year, 1, 1, tzinfo=UTC)
        for year in range(2020, now.year + 1)
        if datetime(year, 1, 1, tzinfo=UTC) > now - timedelta(days=1000)
    ]
    worker = cron_worker()

    def handled() -> bool:
        last = rows(
            db, "SELECT name, last_tick_at FROM pgjobs.cron_entries WHERE name LIKE 'catch.%%'"
        )
        return all(tick == newest for _, tick in last)

    eventually(handled, timeout=15)
    assert jobs_per_tick(db, "catch.latest") == {newest: 1}
    assert jobs_per_tick(db, "catch.none") == {}
    assert jobs_per_tick(db, "catch.window") == dict.fromkeys(in_window, 1)
    eventually(
        lambda: (
            count(db, "SELECT count(*) FROM ledger WHERE label LIKE 'catch.%%'")
            == 1 + len(in_window)
        )
    )
    stop(worker)


def test_pause_resume_and_run_now_from_python_cli_and_sql(
    cron_worker: Callable[..., WorkerProcess],
    db: psycopg.Connection[Any],
    app: pgjobs.App,
    database_url: str,
) -> None:
    worker = cron_worker()
    eventually(lambda: jobs_per_tick(db, "every.second"), timeout=15)

    app.pause_cron("every.second")  # Python
    paused_at = datetime.now(UTC)
    enqueued = count(db, "SELECT count(*) FROM pgjobs.jobs WHERE kwargs->>'entry' = 'every.second'")
    eventually(
        lambda: (
            value(db, "SELECT last_tick_at FROM pgjobs.cron_entries WHERE name = 'every.second'")
            > paused_at + timedelta(seconds=3)
        ),
        timeout=15,
    )  # ticks pass...
    assert (
        count(db, "SELECT count(*) FROM pgjobs.jobs WHERE kwargs->>'entry' = 'every.second'")
        == enqueued
    )
    # ...and run-now still enqueues one (CLI), with the current time as its tick
    ran = invoke(database_url, "cron", "run", "every.second")
    assert ran.returncode == 0, ran.stderr
    job = app.get_job(int(ran.stdout))
    assert job is not None and job.name == "cron.tick" and job.kwargs["entry"] == "every.second"
    eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE job_id = %s", job.id) == 1)
    # its last run is that job, shown as a run now, not as a tick
    assert last_run(database_url, "every.second") == (job.id, "run now")

    resumed_at = value(db, "SELECT now() FROM pgjobs.resume_cron('every.second')")  # SQL
    eventually(lambda: max(jobs_per_tick(db, "every.second")) > resumed_at, timeout=15)
    eventually(lambda: last_run(database_url, "every.second")[1] == "tick")
    skipped = [
        t
        for t in jobs_per_tick(db, "every.second", besides=[job.id])
        if paused_at + timedelta(seconds=1) < t < resumed_at
    ]
    assert skipped == [], "ticks while paused are not replayed"

    # and the other ways round: CLI pause, SQL run, Python resume
    assert invoke(database_url, "cron", "pause", "every.second").returncode == 0
    assert value(db, "SELECT paused FROM pgjobs.cron_entries WHERE name = 'every.second'") is True
    job_id = value(db, "SELECT pgjobs.run_cron('every.second')")
    assert (
        value(db, "SELECT last_job_id FROM pgjobs.cron_entries WHERE name = 'every.second'")
        == job_id
    )
    app.resume_cron("every.second")
    assert value(db, "SELECT paused FROM pgjobs.cron_entries WHERE name = 'every.second'") is False
    stop(worker)


def listing(database_url: str) -> dict[str, dict[str, Any]]:
    """``pgjobs --app tests.cron_app:app cron --json`` by entry name."""
    result = invoke(database_url, "--app", "tests.cron_app:app", "cron", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["name"]: entry for entry in map(json.loads, result.stdout.splitlines())}


def last_run(database_url: str, name: str) -> tuple[int, str]:
    """Entry ``name``'s last job, and whether a tick or a run now enqueued it, as the CLI shows
    them in its table and in its JSON."""
    entry = listing(database_url)[name]
    table = invoke(database_url, "--app", "tests.cron_app:app", "cron")
    (line,) = [line for line in table.stdout.splitlines() if line.startswith(f"{name} ")]
    assert f"(job {entry['last_job_id']}, {entry['last_job_kind']})" in line, line
    return entry["last_job_id"], entry["last_job_kind"]


def test_the_cli_lists_and_runs_declared_entries_before_any_worker_ran(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    entries = listing(database_url)
    assert sorted(entries) == sorted(cron_app.app.cron_entries)
    nightly = entries["cron.nightly"]
    assert (nightly["registered"], nightly["in_code"], nightly["paused"]) == (False, True, False)
    assert (nightly["job_name"], nightly["timezone"]) == ("cron.nightly", "Europe/Berlin")
    assert len(nightly["next_runs"]) == 3 and nightly["last_job_id"] is None
    assert entries["every.second"]["kwargs"] == {"entry": "every.second"}
    table = invoke(database_url, "--app", "tests.cron_app:app", "cron")
    assert "cron.nightly (not yet registered)" in table.stdout
    assert count(db, "SELECT count(*) FROM pgjobs.cron_entries") == 0  # listing writes nothing

    ran = invoke(database_url, "--app", "tests.cron_app:app", "cron", "run", "cron.nightly")
    assert ran.returncode == 0, ran.stderr
    job_id = int(ran.stdout)
    assert value(db, "SELECT name FROM pgjobs.jobs WHERE id = %s", job_id) == "cron.nightly"
    # registered as a worker's start would, with the run noted
    assert listing(database_url)["cron.nightly"]["registered"] is True
    assert last_run(database_url, "cron.nightly") == (job_id, "run now")
    table = invoke(database_url, "--app", "tests.cron_app:app", "cron")
    assert "cron.nightly (not yet registered)" not in table.stdout
    assert "every.second (not yet registered)" in table.stdout

    paused = invoke(database_url, "--app", "tests.cron_app:app", "cron", "pause", "catch.none")
    assert paused.returncode == 0, paused.stderr
    assert value(db, "SELECT paused FROM pgjobs.cron_entries WHERE name = 'catch.none'") is True
    assert count(db, "SELECT count(*) FROM pgjobs.cron_entries") == 2


def test_unknown_entries_are_refused(
    app: pgjobs.App, database_url: str, db: psycopg.Connection[Any]
) -> None:
    for method in (app.pause_cron, app.resume_cron, app.run_cron):
        with pytest.raises(pgjobs.ValidationError, match="no cron entry named 'nope'"):
            method("nope")
    for action in ("pause", "resume", "run"):
        result = invoke(database_url, "cron", action, "nope")
        assert result.returncode == 2
        assert "no cron entry named 'nope'" in result.stderr
        assert "Traceback" not in result.stderr
    listed = invoke(database_url, "cron")  # listing needs the code, to mark removed entries
    assert listed.returncode == 2 and "needs --app" in listed.stderr
    assert value(db, "SELECT pgjobs.run_cron('nope')") is None
    assert value(db, "SELECT pgjobs.pause_cron('nope')") is None
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_an_entry_removed_from_code_is_no_longer_enqueued_and_is_marked(
    cron_worker: Callable[..., WorkerProcess], db: psycopg.Connection[Any], database_url: str
) -> None:
    worker = cron_worker()
    eventually(lambda: jobs_per_tick(db, "every.second"), timeout=15)
    stop(worker)
    before = jobs_per_tick(db, "every.second")

    worker = cron_worker("smaller")  # the same jobs, without the every.second entry
    eventually(lambda: len(jobs_per_tick(db, "smaller.second")) >= 3, timeout=15)
    assert jobs_per_tick(db, "every.second") == before

    listed = invoke(database_url, "--app", "tests.cron_app:smaller", "cron", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["name"]: e for e in map(json.loads, listed.stdout.splitlines())}
    assert entries["every.second"]["in_code"] is False
    assert entries["every.second"]["next_runs"] == []
    assert entries["smaller.second"]["in_code"] is True
    assert len(entries["smaller.second"]["next_runs"]) == 3
    assert entries["cron.nightly"]["timezone"] == "Europe/Berlin"
    table = invoke(database_url, "--app", "tests.cron_app:smaller", "cron")
    assert "every.second (not in code)" in table.stdout
    assert table.stdout.splitlines()[0].split() == [
        "name",
        "job",
        "expression",
        "tz",
        "paused",
        "last",
        "run",
        "next",
        "runs",
    ]
    stop(worker)


def test_a_malformed_entry_fails_at_start_naming_job_and_field(database_url: str) -> None:
    result = run_cli(database_url, "--app", "tests.cron_bad_app:app", "worker")
    assert result.returncode == 2
    assert "cron entry 'reports.nightly': hour field '25' is not valid" in result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "(*/5)" in errors[0]  # the whole message on one line


def test_racing_tick_statements_enqueue_each_tick_once(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """Eight connections run the tick statement for the same entry at once, each stepping through
    the same 100 ticks (passing the last four each time, as a late scheduler would): every tick
    gets exactly one job, whoever enqueued it."""
    queries = pgjobs._sql.queries_for("pgjobs")
    entry = cron_app.app.cron_entries["every.second"]
    db.execute(queries.upsert_cron_entries, encode_rows([entry]))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    db.execute(
        "UPDATE pgjobs.cron_entries SET last_tick_at = %s WHERE name = 'every.second'",
        (start - timedelta(seconds=1),),
    )
    ticks = [start + timedelta(seconds=s) for s in range(100)]

    def step_through() -> int:
        enqueued = 0
        with psycopg.connect(database_url, autocommit=True) as conn:
            for k in range(len(ticks)):
                window = ticks[max(0, k - 3) : k + 1]
                row = conn.execute(
                    queries.enqueue_cron_ticks,
                    {
                        "name": entry.name,
                        "ticks": [tick_text(t) for t in window],
                        "through": ticks[k],
                    },
                ).fetchone()
                assert row is not None
                enqueued += row[1]
        return enqueued

    with ThreadPoolExecutor(8) as pool:
        enqueued = sum(pool.map(lambda _: step_through(), range(8)))
    assert enqueued == len(ticks)
    assert jobs_per_tick(db, "every.second") == dict.fromkeys(ticks, 1)
    assert (
        value(db, "SELECT last_tick_at FROM pgjobs.cron_entries WHERE name = 'every.second'")
        == ticks[-1]
    )
    # the jobs table holds one job per entry and tick by itself: with the entry's last tick
    # moved back (as if that guard failed), the same ticks enqueue nothing again
    assert value(db, "SELECT min(unique_key) FROM pgjobs.jobs") == (
        "cron:every.second:2026-01-01T00:00:00Z"
    )
    db.execute("UPDATE pgjobs.cron_entries SET last_tick_at = %s", (start - timedelta(seconds=1),))
    assert step_through() == 0
    assert jobs_per_tick(db, "every.second") == dict.fromkeys(ticks, 1)
