"""Crash tests: run a job in a real ``pgjobs worker`` process, SIGKILL it (or cut its database
sessions) at a checkpoint the job marks, hand the job back at once, and run its retry."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg

from .._app import App
from . import _sql
from ._checkpoint import ARMED_VARIABLE, FIFO_VARIABLE
from ._real import drain

DEFAULT_TIMEOUT = 60.0
"""Seconds a crash test waits for its job to reach the checkpoint."""

SESSIONS_WAIT_MS = 10_000
"""Milliseconds the killed worker's database sessions get to end."""


WORKER_ARGS = ("worker", "--burst", "--concurrency", "1")
"""The crash test's worker: one job at a time (the retry waits for the interrupted attempt)."""

REASONS = {
    "kill": "its process was killed by pgjobs.testing (SIGKILL)",
    "disconnect": "its database sessions were ended by pgjobs.testing",
}
"""Each crash's reason, in the error the interrupted attempt stores."""


class CheckpointNotReached(AssertionError):
    """The worker ended, or the time ran out, before the job reached the checkpoint."""


@dataclass(frozen=True)
class Crash:
    """What :func:`run_until_killed` did: the job stopped at ``checkpoint`` in the worker with
    process id ``pid`` (registered as ``worker_id``), whose output was ``output``."""

    job_id: int
    checkpoint: str
    pid: int
    worker_id: str
    output: str


def run_until_killed(
    app: App,
    job_id: int,
    *,
    at: str,
    app_path: str,
    how: Literal["kill", "disconnect"] = "kill",
    retry: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Crash:
    """Run job ``job_id`` of ``app`` (committed, due) in a ``pgjobs --app APP_PATH worker
    --burst --concurrency 1`` process until it reaches ``pgjobs.testing.checkpoint(at)``, and
    there:

    * ``how="kill"``: SIGKILL the process; end its database sessions and hand the job back as
      the leader's rescue sweep would (at once, instead of within a heartbeat); then, with
      ``retry``, run the job again here (:func:`~pgjobs.testing.drain`).
    * ``how="disconnect"``: end the worker's database sessions and hand the job back likewise,
      then let the job go on. The worker reconnects; the attempt runs to its end, but its
      outcome is refused (the job is no longer its), and the worker then runs the retry itself
      before it exits (with ``retry``, a drain here runs whatever is still due).

    The interrupted attempt counts: a job on its last attempt ends ``discarded`` (its error
    names the lost worker). Other due jobs may run in that worker too.

    Raises:
        CheckpointNotReached: the worker ended, or ``timeout`` passed, before the checkpoint;
            the message holds its output.
    """
    settings = app.settings
    if settings.database_url is None:
        raise RuntimeError("run_until_killed: the app has no database_url")
    url = str(settings.database_url)
    with tempfile.TemporaryDirectory(prefix="pgjobs-crash-") as directory:
        fifo_path = Path(directory) / "checkpoint"
        os.mkfifo(fifo_path)
        os.mkfifo(f"{fifo_path}.go")
        log_path = Path(directory) / "worker.log"
        env = {
            **os.environ,
            "PGJOBS_DATABASE_URL": url,
            ARMED_VARIABLE: at,
            FIFO_VARIABLE: str(fifo_path),
        }
        env.pop("DATABASE_URL", None)
        fifo = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK)
        keeper = os.open(fifo_path, os.O_WRONLY)  # a writer always: no end of file to poll
        try:
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "pgjobs", "--app", app_path, *WORKER_ARGS],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                _await_checkpoint(fifo, process, at, timeout, log_path)
                if how == "kill":
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                worker_id = _rescue(app, url, process.pid, how)
                if how == "disconnect":
                    with open(f"{fifo_path}.go", "w") as go:
                        go.write("go\n")
                    process.wait(timeout)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        finally:
            os.close(keeper)
            os.close(fifo)
        output = log_path.read_text(errors="replace")
    if retry:
        drain(app)
    return Crash(job_id, at, process.pid, worker_id, output)


def _await_checkpoint(
    fifo: int, process: subprocess.Popen[bytes], at: str, timeout: float, log: Path
) -> None:
    """Wait until the worker writes to ``fifo`` (it reached ``at``); fail if it ends first."""
    deadline = time.monotonic() + timeout
    received = b""
    while b"\n" not in received:
        left = deadline - time.monotonic()
        if left <= 0 or process.poll() is not None:
            why = "ended" if process.poll() is not None else f"ran for {timeout:g} s"
            output = log.read_text(errors="replace")
            raise CheckpointNotReached(
                f"the worker {why} before a job reached checkpoint({at!r}); is the job due, "
                f"and does it call pgjobs.testing.checkpoint({at!r})? Its output:\n{output}"
            )
        readable, _, _ = select.select([fifo], [], [], min(left, 0.5))
        if readable:
            received += os.read(fifo, 4096)


def _rescue(app: App, url: str, pid: int, how: str) -> str:
    """End the worker's sessions, then give its jobs back as the rescue sweep does."""
    queries = app._queries
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            _sql.queries_for(app.settings.schema).terminate_worker_sessions,
            {"pid": pid, "wait_ms": SESSIONS_WAIT_MS},
        ).fetchone()
        if row is None:
            raise CheckpointNotReached(f"no worker with process id {pid} is registered")
        worker_id = str(row[0])
        conn.execute(
            queries.rescue_jobs,
            {
                "sweeper_id": None,
                "worker_id": worker_id,
                "reason": REASONS[how],
                "lock_namespace": queries.lock_namespace,
                "channel": queries.jobs_channel,
            },
        )
    return worker_id
