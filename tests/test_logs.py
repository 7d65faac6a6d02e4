"""Log lines: a start and an end line per job at INFO, in text or JSON, and a host application's
logging left as it was."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

import pgjobs
from pgjobs._logs import JsonFormatter
from tests import jobs_app
from tests.helpers import run_burst, run_cli

WORKER = ["--app", "tests.jobs_app:app"]


def test_json_lines_carry_each_jobs_fields(app: pgjobs.App, database_url: str) -> None:
    """Every line the worker writes is one JSON object; each run has a start and an end line
    with the job's id, name, queue and attempt, the end with its duration and state."""
    done = jobs_app.noop.enqueue("logged")
    failing = jobs_app.always_fails.enqueue()  # three attempts, retried at once
    result = run_cli(database_url, *WORKER, "--log-format", "json", "worker", "--burst")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # raises on any other line
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    jobs = [line for line in lines if line["logger"] == "pgjobs.jobs"]
    assert all(line["level"] == "INFO" for line in jobs)
    mine = [line for line in jobs if line["job_id"] == done]
    assert [line["event"] for line in mine] == ["start", "done"]
    assert mine[0] | {"time": None, "message": None} == {
        "time": None,
        "level": "INFO",
        "logger": "pgjobs.jobs",
        "message": None,
        "event": "start",
        "job_id": done,
        "job_name": "noop",
        "queue": "default",
        "attempt": 1,
    }
    assert mine[1]["state"] == "completed" and 0 <= mine[1]["duration"] < 5
    ends = [(line["attempt"], line["event"], line["state"]) for line in jobs
            if line["job_id"] == failing and line["event"] != "start"]  # fmt: skip
    assert ends == [(1, "fail", "retryable"), (2, "fail", "retryable"), (3, "fail", "discarded")]


def test_text_lines_read_like_sidekiqs(app: pgjobs.App, database_url: str) -> None:
    done = jobs_app.noop.enqueue("logged")
    result = run_cli(database_url, *WORKER, "worker", "--burst")
    assert result.returncode == 0, result.stderr
    assert f"INFO pgjobs.jobs: start job {done} noop (queue default, attempt 1)" in result.stderr
    assert f"INFO pgjobs.jobs: done job {done} noop (queue default, attempt 1) in " in (
        result.stderr
    )
    quiet = run_cli(database_url, *WORKER, "--log-level", "WARNING", "worker", "--burst")
    assert quiet.returncode == 0 and "pgjobs.jobs" not in quiet.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--log-format", "xml"], {}, "'xml' is not one of 'text', 'json'"),
        ([], {"PGJOBS_LOG_FORMAT": "xml"}, "log_format: 'xml' is not text or json"),
    ],
)
def test_a_bad_log_format_is_refused(
    database_url: str, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_cli(database_url, *WORKER, *args, "worker", "--burst", env=env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_library_leaves_the_hosts_logging_alone(
    app: pgjobs.App, caplog: pytest.LogCaptureFixture
) -> None:
    """An in-process worker adds no handler and changes no level; its job lines reach the
    host's own handlers with the job's fields as record attributes."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("pgjobs").level)
    done = jobs_app.noop.enqueue("host")
    with caplog.at_level(logging.INFO, logger="pgjobs.jobs"):
        run_burst(app)
    records = [r for r in caplog.records if r.name == "pgjobs.jobs"]
    assert [r.__dict__["event"] for r in records] == ["start", "done"]
    assert {r.__dict__["job_id"] for r in records} == {done}
    assert (
        [h for h in root.handlers if h is not caplog.handler],
        root.level,
        logging.getLogger("pgjobs").level,
    ) == (
        [h for h in before[0] if h is not caplog.handler],
        before[1],
        before[2],
    )


def test_the_json_formatter_writes_exceptions_and_odd_values() -> None:
    try:
        raise ValueError("<boom>")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", ("é",), sys.exc_info())
    record.__dict__["job_id"] = 7
    line: dict[str, Any] = json.loads(JsonFormatter().format(record))
    assert line["message"] == "é" and line["job_id"] == 7 and line["level"] == "ERROR"
    assert line["exception"].endswith("ValueError: <boom>")
