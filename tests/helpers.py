"""Test helpers: waiting on conditions, running the real ``pgjobs worker``, and the ``pgjobs``
command, in a process of its own or in this one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from click.testing import CliRunner

import pgjobs
import pgjobs.cli

ROOT = Path(__file__).resolve().parent.parent
PGJOBS = str(Path(sys.executable).parent / "pgjobs")

T = TypeVar("T")

LEDGER_DDL = """
CREATE TABLE ledger (
    job_id   bigint NOT NULL,
    attempt  integer NOT NULL,
    pid      integer NOT NULL,
    label    text NOT NULL,
    event    text NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def rows(db: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Every row of ``query``."""
    return db.execute(query, params).fetchall()


def value(db: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    """The first column of the one row ``query`` returns."""
    row = db.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def count(db: psycopg.Connection[Any], query: str, *params: Any) -> int:
    """``value`` of a ``count(*)`` query, as an int."""
    return int(value(db, query, *params))


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Call ``check`` until it returns a truthy value without raising AssertionError; return it.

    Fails with the last assertion (or a timeout message) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            problem: Exception = AssertionError(f"{check} stayed falsy for {timeout} s")
        except AssertionError as exc:
            problem = exc
        if time.monotonic() > deadline:
            raise problem
        time.sleep(interval)


@dataclass
class WorkerProcess:
    """A ``pgjobs`` CLI subprocess whose log goes to a file."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, args: list[str], *, database_url: str, log: Path, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [PGJOBS, *args],
                cwd=ROOT,
                env=environment(database_url, env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return cls(process, log)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        def seen() -> bool:
            assert self.process.poll() is None or text in self.output(), (
                f"worker exited {self.process.returncode}:\n{self.output()}"
            )
            return text in self.output()

        eventually(seen, timeout)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def children(self) -> list[int]:
        """Pids of this process's children (a supervisor's workers)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        """SIGKILL the process and any children it has."""
        for pid in self.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def worker_launcher(logs: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(url, *args, env=None)``: a ``pgjobs worker`` for the tests' app on ``url``, logging
    to a file in ``logs``. Every worker started (children of a supervisor included) is SIGKILLed
    on the way out if it still runs."""
    started: list[WorkerProcess] = []

    def start(url: str, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        process = WorkerProcess.start(
            ["--app", "tests.jobs_app:app", "worker", *args],
            database_url=url,
            log=logs / f"worker-{len(started)}.log",
            env=env,
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()


def environment(database_url: str | None, env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment, pointed at ``database_url`` only (never ``DATABASE_URL``)."""
    result = {**os.environ, **(env or {})}
    result.pop("DATABASE_URL", None)
    if database_url is not None:
        result["PGJOBS_DATABASE_URL"] = database_url
    return result


def run_program(
    database_url: str | None, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion against ``database_url``, capturing its output."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=environment(database_url, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_cli(
    database_url: str | None, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run ``pgjobs ARGS`` to completion against ``database_url``."""
    return run_program(database_url, [PGJOBS, *args], env, cwd)


def invoke(
    database_url: str | None, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``pgjobs ARGS`` run in this process, as :func:`run_cli` runs it in a new one: the same
    environment and directory, and the exit status, stdout and stderr that the ``pgjobs``
    program would give (click's runner turns ``sys.exit`` into the status; an exception the
    command does not handle is raised here, where the program would print a traceback).

    As in a new process, the ``--app`` module is imported afresh, the command's logging goes to
    its stderr, and the apps it loaded are closed at its end. Not for ``pgjobs worker``, which
    ends its process, nor ``web`` and ``metrics``, which serve until stopped: :func:`run_cli`.
    """
    if {"worker", "web", "metrics"} & set(args) and "--help" not in args:
        raise ValueError(f"pgjobs {' '.join(args)} runs on: start it with run_cli")
    variables: dict[str, str | None] = {"DATABASE_URL": None, **(env or {})}
    if database_url is not None:
        variables["PGJOBS_DATABASE_URL"] = database_url
    loaded: list[pgjobs.App] = []
    load_app = pgjobs.cli._load_app

    def loading(*load_args: Any, **load_kwargs: Any) -> pgjobs.App:
        app = load_app(*load_args, **load_kwargs)
        loaded.append(app)
        return app

    with (
        _app_modules_imported_afresh(),
        _logging_as_in_a_new_process(),
        contextlib.chdir(cwd),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(pgjobs.cli, "_load_app", loading)
        try:
            result = CliRunner().invoke(
                pgjobs.cli.cli,
                list(args),
                env=variables,
                prog_name="pgjobs",
                catch_exceptions=False,
            )
        finally:
            for app in loaded:
                app.close()
    return subprocess.CompletedProcess(
        ["pgjobs", *args], result.exit_code, result.stdout, result.stderr
    )


def _is_app_module(name: str) -> bool:
    return name.startswith("tests.") and name.endswith("_app")


@contextlib.contextmanager
def _app_modules_imported_afresh() -> Iterator[None]:
    """The tests' app modules (``tests.*_app``) import anew meanwhile; the old ones come back."""
    import tests

    kept = {name: sys.modules.pop(name) for name in list(sys.modules) if _is_app_module(name)}
    try:
        yield
    finally:
        for name in [name for name in sys.modules if _is_app_module(name)]:
            del sys.modules[name]
        sys.modules.update(kept)
        for name, module in kept.items():
            setattr(tests, name.removeprefix("tests."), module)


@contextlib.contextmanager
def _logging_as_in_a_new_process() -> Iterator[None]:
    """The root logger without handlers meanwhile, so that the command sets up its own, as in a
    new process; then the handlers and the levels of the loggers there were as they were (a
    logger first made meanwhile keeps the level its module gave it on import)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {
        name: logger.level
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    root.handlers = []
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = handlers
        root.setLevel(level)
        for name, logger_level in levels.items():
            logging.getLogger(name).setLevel(logger_level)


def run_burst(app: pgjobs.App) -> None:
    """Run an in-process worker until the queues are empty."""
    asyncio.run(pgjobs.Worker(app, burst=True).run())


STOP_TIMEOUT = 3.0
"""``--shutdown-timeout`` (seconds) of the workers that :func:`stop_and_time` stops."""

STOP_MARGIN = 2.0
"""Seconds past :data:`STOP_TIMEOUT` that a worker may take to exit: process and log overhead."""


def stop_and_time(worker: WorkerProcess, state: str, also: Callable[[], None] | None = None) -> str:
    """SIGTERM ``worker`` (started with ``--shutdown-timeout`` :data:`STOP_TIMEOUT`), then run
    ``also()``; assert it exits 0 within the shutdown timeout and :data:`STOP_MARGIN`; return its
    log. Prints the time taken, labelled ``state``."""
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    if also is not None:
        also()
    try:
        status = worker.wait(timeout=STOP_TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{state}: still running 30 s past the shutdown timeout:\n{worker.output()}")
    elapsed = time.monotonic() - began
    print(f"SIGTERM to exit, {state}: {elapsed:.2f} s (shutdown timeout {STOP_TIMEOUT:g} s)")
    output = worker.output()
    assert status == 0, output
    assert elapsed <= STOP_TIMEOUT + STOP_MARGIN, output
    return output


def process_state(pid: int) -> str:
    """The state letter in ``/proc/PID/stat`` (``R``/``S`` alive, ``T`` stopped, ``Z`` a zombie
    not yet reaped), or ``X`` (dead) once the process is gone, also when it goes mid-read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "X"
    return stat.rpartition(")")[2].split()[0]


def claimed_since(db: psycopg.Connection[Any], worker: WorkerProcess, since: datetime) -> bool:
    """Whether ``worker`` (a ``pgjobs worker`` process, registered) has finished a claim that it
    began after ``since`` (the database's clock): it looked for jobs, by a poll or a wake-up.

    For tests that something did not run: wait for this, not for a time that seems enough.
    """
    return (
        count(
            db,
            "SELECT count(*) FROM pg_stat_activity a"
            " JOIN pgjobs.workers w"
            "   ON a.application_name = 'pgjobs-worker:' || left(w.id::text, 8) || ':claim'"
            " WHERE a.datname = current_database() AND w.pid = %s AND a.state = 'idle'"
            "   AND a.query_start > %s AND a.query LIKE '%%claim%%'",
            worker.process.pid,
            since,
        )
        == 1
    )
