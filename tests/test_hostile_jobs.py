"""Hostile job code: whatever a job, its retry policy or its hook raises, the attempt ends with a
stored outcome and the worker goes on. Stored arguments that no longer fit the function fail on a
short, bounded schedule."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._call import MAX_DELAY as JOB_MAX_DELAY
from pgjobs._outcome import (
    MAX_DELAY,
    MAX_ERROR_MESSAGE,
    deploy_skew_outcome,
    error_record,
    failure_outcome,
    snooze_outcome,
)
from tests import jobs_app
from tests.helpers import WorkerProcess, eventually, rows, run_burst, value

StartWorker = Callable[..., WorkerProcess]

SYNC = {
    "exit0": "builtins.SystemExit",
    "exit3": "builtins.SystemExit",
    "interrupt": "builtins.KeyboardInterrupt",
    "base": "tests.jobs_app.Hostile",
    "unprintable": "tests.jobs_app.Unprintable",
    "snooze_inf": "builtins.ValueError",
    "cancelled": "asyncio.exceptions.CancelledError",
}
ASYNC = {
    "exit0": "builtins.SystemExit",
    "interrupt": "builtins.KeyboardInterrupt",
    "base": "tests.jobs_app.Hostile",
    "cancelled": "asyncio.exceptions.CancelledError",
}
BAD_POLICIES = {
    jobs_app.policy_raises: "retry policy raised ZeroDivisionError: the policy's own bug",
    jobs_app.policy_huge: "retry policy returned 1e+300 s, not a delay of at most 100 years",
    jobs_app.policy_nan: "retry policy returned nan s, not a delay of at most 100 years",
}


def last_error(db: psycopg.Connection[Any], job_id: int) -> tuple[str, dict[str, Any]]:
    state, errors = db.execute(
        "SELECT state, errors FROM pgjobs.jobs WHERE id = %s", (job_id,)
    ).fetchone()  # type: ignore[misc]
    assert len(errors) == 1, errors
    return state, errors[0]


def retry_delay(db: psycopg.Connection[Any], job_id: int) -> float:
    """Seconds from the failed attempt's write to its retry, by the database clock."""
    return float(
        value(
            db,
            "SELECT extract(epoch FROM scheduled_at - (errors->-1->>'at')::timestamptz)"
            "  FROM pgjobs.jobs WHERE id = %s",
            job_id,
        )
    )


def test_whatever_a_job_raises_its_attempt_ends_with_a_stored_outcome_and_the_worker_goes_on(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: StartWorker
) -> None:
    worker = worker_process("--concurrency", "20")
    worker.wait_for_log("listening on")
    calls = {
        **{("sync", how): jobs_app.hostile.call(how) for how in SYNC},
        **{("async", how): jobs_app.async_hostile.call(how) for how in ASYNC},
        **{("policy", job.name): job.call() for job in BAD_POLICIES},
        ("hook", "exits"): jobs_app.hook_exits.call(),
    }
    ids = dict(zip(calls, app.enqueue_many(calls.values()), strict=True))
    normal = jobs_app.noop.enqueue("after the hostile ones")

    eventually(
        lambda: (
            value(db, "SELECT count(*) FROM pgjobs.jobs WHERE state IN ('available', 'running')")
            == 0
        ),
        timeout=30,
    )
    for kind, expected in (("sync", SYNC), ("async", ASYNC)):
        for how, error_class in expected.items():
            state, error = last_error(db, ids[kind, how])
            assert (how, state, error["class"]) == (how, "discarded", error_class)
    _, unprintable = last_error(db, ids["sync", "unprintable"])
    assert unprintable["message"] == (
        "<the message of this Unprintable could not be formed: it raised ValueError>"
    )
    _, snooze = last_error(db, ids["sync", "snooze_inf"])
    assert snooze["message"].startswith("Snooze: delay must be from 0 to")
    for job, note in BAD_POLICIES.items():
        state, error = last_error(db, ids["policy", job.name])
        assert (state, error["class"]) == ("retryable", "builtins.RuntimeError")
        assert error["message"] == f"the job failed [{note}; retried on the default backoff]"
        assert 16 <= retry_delay(db, ids["policy", job.name]) <= 26  # Sidekiq's, attempt 1
    state, error = last_error(db, ids["hook", "exits"])
    assert (state, error["class"]) == ("discarded", "builtins.RuntimeError")
    hooked = ids["hook", "exits"]
    labels = rows(db, "SELECT label FROM ledger WHERE job_id = %s ORDER BY at", hooked)
    assert labels == [("hook_exits",), ("hook_exits:hook",)]
    assert value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", normal) == "completed"

    assert worker.process.poll() is None, worker.output()
    assert "on_exhausted hook failed: builtins.SystemExit" in worker.output()
    assert "never retrieved" not in worker.output()
    stopping = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0, worker.output()
    print(f"SIGTERM to exit after hostile jobs: {time.monotonic() - stopping:.2f} s")


class MessageExits(Exception):
    def __str__(self) -> str:
        raise SystemExit(1)


class NotAString(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class _Unformattable:
    def __str__(self) -> str:
        raise KeyboardInterrupt


class StrangeModule(Exception):
    __module__ = _Unformattable()  # type: ignore[assignment]


def _unformattable_traceback() -> BaseException:
    exc = SyntaxError("fine message")
    exc.lineno = _Unformattable()  # type: ignore[assignment]
    return exc


@pytest.mark.parametrize(
    ("make", "field", "expected"),
    [
        (
            MessageExits,
            "message",
            "<the message of this MessageExits could not be formed: it raised SystemExit>",
        ),
        (
            NotAString,
            "message",
            "<the message of this NotAString could not be formed: it raised TypeError>",
        ),
        (
            StrangeModule,
            "class",
            "<the class name of this StrangeModule could not be formed: it raised "
            "KeyboardInterrupt>",
        ),
        (
            _unformattable_traceback,
            "traceback",
            "<the traceback of this SyntaxError could not be formed: it raised KeyboardInterrupt>",
        ),
    ],
)
def test_error_record_never_raises_and_says_what_could_not_be_formed(
    make: Callable[[], BaseException], field: str, expected: str
) -> None:
    try:
        raise make()
    except BaseException as exc:
        record = error_record(exc, 3)
    assert record[field] == expected
    assert record["attempt"] == 3
    json.dumps(record)


def test_error_record_keeps_what_a_hostile_exception_does_give() -> None:
    record = error_record(_unformattable_traceback(), 1)
    assert (record["class"], record["message"]) == ("builtins.SyntaxError", "fine message")
    try:
        raise MessageExits
    except MessageExits as exc:
        record = error_record(exc, 1)
    assert record["traceback"].endswith("MessageExits: <exception str() failed>\n")
    assert "raise MessageExits" in record["traceback"]


def _raises(exc: BaseException) -> Callable[[int, BaseException], float]:
    def policy(attempt: int, error: BaseException) -> float:
        raise exc

    return policy


@pytest.mark.parametrize(
    ("policy", "delay", "note"),
    [
        (lambda a, e: 30, 30.0, None),
        (lambda a, e: timedelta(minutes=1), 60.0, None),
        (lambda a, e: -5.0, 0.0, None),
        (lambda a, e: MAX_DELAY, MAX_DELAY, None),
        (lambda a, e: None, None, None),
        (lambda a, e: 1e300, "backoff", "retry policy returned 1e+300 s"),
        (lambda a, e: math.inf, "backoff", "retry policy returned inf s"),
        (lambda a, e: -math.inf, "backoff", "retry policy returned -inf s"),
        (lambda a, e: math.nan, "backoff", "retry policy returned nan s"),
        (lambda a, e: 10**400, "backoff", "retry policy returned inf s"),
        (lambda a, e: timedelta(days=36525 * 2), "backoff", "retry policy returned 6311"),
        (lambda a, e: "soon", "backoff", "retry policy returned a str, not seconds"),
        (lambda a, e: object(), "backoff", "retry policy returned a object, not seconds"),
        (_raises(ZeroDivisionError("oops")), "backoff", "retry policy raised ZeroDivisionError"),
        (_raises(SystemExit(2)), "backoff", "retry policy raised SystemExit: 2"),
        (_raises(KeyboardInterrupt()), "backoff", "retry policy raised KeyboardInterrupt"),
        (_raises(MessageExits()), "backoff", "retry policy raised MessageExits: <the message"),
    ],
)
def test_a_failing_retry_policy_falls_back_to_the_default_backoff_and_says_so(
    policy: Any, delay: float | str | None, note: str | None
) -> None:
    outcome = failure_outcome(
        RuntimeError("job failed"), attempt=2, max_attempts=25, retry=policy, discard_on=()
    )
    assert outcome.error is not None
    message = outcome.error["message"]
    if delay is None:
        assert outcome.state == "discarded"
    elif delay == "backoff":
        assert outcome.state == "retryable"
        assert 2**4 + 15 <= outcome.delay <= 2**4 + 15 + 20  # sidekiq_backoff, attempt 2
    else:
        assert (outcome.state, outcome.delay) == ("retryable", delay)
    if note is None:
        assert message == "job failed"
    else:
        assert message.startswith(f"job failed [{note}")
        assert message.endswith("; retried on the default backoff]")


def test_the_note_on_a_failed_policy_survives_a_long_message() -> None:
    outcome = failure_outcome(
        RuntimeError("x" * 5000),
        attempt=1,
        max_attempts=2,
        retry=_raises(ValueError("y" * 5000)),
        discard_on=(),
    )
    assert outcome.error is not None
    message = outcome.error["message"]
    assert len(message) <= MAX_ERROR_MESSAGE
    assert message.startswith("xxx") and message.endswith("; retried on the default backoff]")


@pytest.mark.parametrize(
    "delay", [math.inf, -math.inf, math.nan, 1e300, MAX_DELAY + 1, 10**400, -1, timedelta(-1)]
)
def test_snooze_refuses_a_delay_that_is_not_one(delay: Any) -> None:
    with pytest.raises(ValueError, match="Snooze: delay must be from 0 to"):
        pgjobs.Snooze(delay)


def test_snooze_takes_zero_up_to_a_hundred_years() -> None:
    assert [pgjobs.Snooze(d).delay for d in (0, timedelta(hours=1), MAX_DELAY)] == [
        0.0,
        3600.0,
        MAX_DELAY,
    ]
    assert JOB_MAX_DELAY == MAX_DELAY == 100 * 365.25 * 86400


class SnoozeWithoutDelay(pgjobs.Snooze):
    def __init__(self) -> None:
        Exception.__init__(self, "skipped Snooze.__init__")


def test_a_snooze_that_carries_no_delay_is_not_taken_for_one() -> None:
    changed = pgjobs.Snooze(5)
    changed.delay = math.inf
    assert snooze_outcome(SnoozeWithoutDelay()) is None
    assert snooze_outcome(changed) is None
    snoozed = snooze_outcome(pgjobs.Snooze(5))
    assert snoozed is not None and (snoozed.state, snoozed.delay) == ("scheduled", 5.0)


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "state", "delay"),
    [
        (1, 25, "retryable", 60.0),
        (2, 25, "retryable", 300.0),
        (3, 25, "retryable", 900.0),
        (4, 25, "discarded", 0.0),
        (9, 25, "discarded", 0.0),
        (1, 1, "discarded", 0.0),
        (1, 2, "retryable", 60.0),
        (2, 2, "discarded", 0.0),
        (3, 3, "discarded", 0.0),
        (3, 4, "retryable", 900.0),
    ],
)
def test_deploy_skew_schedule(attempt: int, max_attempts: int, state: str, delay: float) -> None:
    mismatch = pgjobs.ArgumentsMismatch("does not fit")
    outcome = deploy_skew_outcome(mismatch, attempt=attempt, max_attempts=max_attempts)
    assert (outcome.state, outcome.delay) == (state, delay)
    assert outcome.error is not None and outcome.error["attempt"] == attempt
    assert outcome.error["class"] == "pgjobs.ArgumentsMismatch"


def test_stored_arguments_that_no_longer_fit_fail_without_running_and_retry_in_a_minute(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    # as if enqueued before a deploy changed noop(label="") to take other parameters
    too_many = value(
        db, "INSERT INTO pgjobs.jobs (name, args) VALUES ('noop', '[\"a\", \"b\"]') RETURNING id"
    )
    unknown_kwarg = value(
        db,
        "INSERT INTO pgjobs.jobs (name, kwargs, max_attempts)"
        " VALUES ('noop', '{\"colour\": \"red\"}', 1) RETURNING id",
    )
    run_burst(app)

    state, error = last_error(db, too_many)
    assert (state, error["class"]) == ("retryable", "pgjobs.ArgumentsMismatch")
    assert error["message"] == (
        "the stored arguments do not fit noop: too many positional arguments"
    )
    assert retry_delay(db, too_many) == 60.0
    state, error = last_error(db, unknown_kwarg)
    assert (state, error["class"]) == ("discarded", "pgjobs.ArgumentsMismatch")
    assert "unexpected keyword argument 'colour'" in error["message"]
    assert value(db, "SELECT count(*) FROM ledger") == 0


def test_an_unknown_job_name_retries_on_the_same_short_schedule(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    job_id = value(db, "INSERT INTO pgjobs.jobs (name) VALUES ('renamed.later') RETURNING id")
    run_burst(app)
    state, error = last_error(db, job_id)
    assert (state, error["class"]) == ("retryable", "pgjobs.UnknownJobError")
    assert retry_delay(db, job_id) == 60.0
