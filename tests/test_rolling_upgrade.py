"""Rolling upgrades: the previous release's workers and enqueuers keep working on the newest
schema, as operators deploy (migrate first, then replace workers one by one).

The previous release is taken from git history: on main's first-parent line, the commit before
the first one that added a revision newer than the oldest revision the newest schema serves
(``schema_compatibility``). Its ``pgjobs`` package and migrations run from a directory of their
own, with this checkout's ``tests`` package for the jobs (tests/upgrade_app.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import upgrade_app
from tests.helpers import (
    LEDGER_DDL,
    PGJOBS,
    ROOT,
    WorkerProcess,
    count,
    environment,
    eventually,
    invoke,
    rows,
    value,
)

pytestmark = pytest.mark.slow


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout


def previous_release(oldest_served: str) -> str:
    """The commit of the oldest release the newest schema still serves."""
    log = git(
        "log", "--first-parent", "--diff-merges=first-parent", "--diff-filter=A",
        "--format=commit %H", "--name-only", "--", "migrations/versions",
    )  # fmt: skip
    first_newer = None
    commit = None
    for line in log.splitlines():
        if line.startswith("commit "):
            commit = line.removeprefix("commit ")
        elif line.strip() and Path(line).name[:4] > oldest_served:
            first_newer = commit  # the log runs newest first: keep the last one seen
    if first_newer is None:
        pytest.fail(f"no commit adds a revision after {oldest_served}: nothing to upgrade from")
    return git("rev-parse", f"{first_newer}^1").strip()


@pytest.fixture
def previous(database_url: str, db: psycopg.Connection[Any], tmp_path: Path) -> Iterator[Path]:
    """A directory holding the previous release's ``pgjobs`` and ``migrations``."""
    try:
        git("rev-parse", "--verify", "HEAD")
        shallow = git("rev-parse", "--is-shallow-repository").strip() == "true"
    except (OSError, subprocess.CalledProcessError):
        shallow = True
    if shallow:
        if os.environ.get("CI") == "true":
            pytest.fail("the rolling-upgrade test needs the checkout's whole git history")
        pytest.skip("not a git checkout with its whole history: no previous release to run")
    oldest = value(db, "SELECT oldest_revision FROM pgjobs.schema_compatibility")
    commit = previous_release(oldest)
    directory = tmp_path / "previous"
    directory.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "pgjobs", "migrations"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    print(f"previous release: {commit[:12]}")
    yield directory


def run_previous(previous: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with the previous release's pgjobs (the working directory comes first on
    ``sys.path``) and this checkout's tests package."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=previous,
        env=environment(database_url, {"PYTHONPATH": str(ROOT)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def start_worker(previous: Path | None, database_url: str, log: Path) -> WorkerProcess:
    """A worker of the previous release (``previous``) or of this one (``None``)."""
    argv = [sys.executable, "-m", "pgjobs"] if previous is not None else [PGJOBS]
    args = ["--app", "tests.upgrade_app:app", "worker", "--queues", upgrade_app.QUEUES]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, *args],
            cwd=previous or ROOT,
            env=environment(database_url, {"PYTHONPATH": str(ROOT)}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return WorkerProcess(process, log)


def enqueue_round(previous: Path | None, database_url: str, label: str) -> None:
    args = ["-m", "tests.upgrade_app", label]
    if previous is not None:
        result = run_previous(previous, database_url, *args)
    else:
        result = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=environment(database_url),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr


def round_done(db: psycopg.Connection[Any], label: str) -> bool:
    started = count(
        db, "SELECT count(*) FROM ledger WHERE event = 'start' AND label LIKE %s", f"{label}/%"
    )
    assert started <= upgrade_app.EXPECTED_STARTS, rows(
        db,
        "SELECT l.label, l.job_id, l.attempt, l.pid, l.at, j.state, j.errors FROM ledger AS l "
        "JOIN pgjobs.jobs AS j ON j.id = l.job_id WHERE l.event = 'start' AND l.label IN "
        "(SELECT label FROM ledger WHERE event = 'start' AND label LIKE %s GROUP BY label "
        "HAVING count(*) > 1)",
        f"{label}/%",
    )
    return started == upgrade_app.EXPECTED_STARTS


@pytest.mark.fresh_database
def test_previous_release_works_on_the_newest_schema(
    empty_database_url: str, previous: Path, tmp_path: Path
) -> None:
    url = empty_database_url
    migrated = run_previous(previous, url, "-m", "pgjobs", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    workers: list[WorkerProcess] = []
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(LEDGER_DDL)
        try:
            # the previous release, on its own schema
            old = start_worker(previous, url, tmp_path / "old.log")
            workers.append(old)
            old.wait_for_log("started")
            enqueue_round(previous, url, "r1")
            eventually(lambda: round_done(db, "r1"), timeout=30)

            # migrate while it runs; it goes on with jobs from both releases' enqueuers
            migrated = invoke(url, "migrate")
            assert migrated.returncode == 0, migrated.stderr
            enqueue_round(previous, url, "r2")
            enqueue_round(None, url, "r3")
            eventually(lambda: round_done(db, "r2") and round_done(db, "r3"), timeout=30)
            assert {pid for (pid,) in rows(db, "SELECT DISTINCT pid FROM ledger")} == {
                old.process.pid
            }
            # a waiter of this release is woken as the previous release's worker ends the job
            # (its poll of 30 s would come too late): the trigger notifies whoever acks
            upgrade_app.app.configure(database_url=url, poll_interval=30)
            try:
                waited = upgrade_app.plain.enqueue_in(1, "waited")
                started = time.monotonic()
                record = upgrade_app.app.wait_for(waited, timeout=25)
                assert record.state == "completed" and time.monotonic() - started < 10
            finally:
                upgrade_app.app.close()
            assert rows(db, "SELECT pid FROM ledger WHERE label = 'waited'") == [(old.process.pid,)]

            # a previous-release worker that stops (or crashes) comes back on the new schema
            old.signal(signal.SIGTERM)
            assert old.wait() == 0, old.output()
            again = start_worker(previous, url, tmp_path / "old-again.log")
            workers.append(again)
            again.wait_for_log("newer than this pgjobs")
            enqueue_round(None, url, "r4")
            eventually(lambda: round_done(db, "r4"), timeout=30)
            eventually(
                lambda: count(
                    db, "SELECT count(*) FROM ledger WHERE label = 'tick' AND pid = %s",
                    again.process.pid,
                ) >= 2,
                timeout=30,
            )  # fmt: skip

            # and works beside this release's workers
            new = start_worker(None, url, tmp_path / "new.log")
            workers.append(new)
            new.wait_for_log("started")
            enqueue_round(previous, url, "r5")
            enqueue_round(None, url, "r6")
            eventually(lambda: round_done(db, "r5") and round_done(db, "r6"), timeout=30)
            for worker in (again, new):
                worker.signal(signal.SIGTERM)
                assert worker.wait() == 0, worker.output()
        finally:
            for worker in workers:
                worker.kill()

        # each job ran once, the limit held, every batch called back once, nothing is left over
        assert (
            rows(
                db,
                "SELECT label, count(*) FROM ledger WHERE event = 'start' AND label <> 'tick' "
                "GROUP BY label HAVING count(*) <> 1",
            )
            == []
        )
        overlap = value(
            db,
            "SELECT max(running) FROM (SELECT sum(CASE WHEN event = 'start' THEN 1 ELSE -1 END) "
            "OVER (ORDER BY at, event ROWS UNBOUNDED PRECEDING) AS running FROM ledger "
            "WHERE label LIKE '%%/limited/%%') AS s",
        )
        assert overlap == 2
        assert count(db, "SELECT count(*) FROM ledger WHERE label LIKE '%%/batch_done'") == 6
        assert (
            rows(
                db,
                "SELECT state, count(*) FROM pgjobs.jobs WHERE state NOT IN ('completed') "
                "GROUP BY state",
            )
            == []
        )
        for worker in workers:
            assert "Traceback" not in worker.output(), worker.output()
