"""Observers on the seam (``App.on_job_start``, ``App.on_job_end``): called once per attempt
with the attempt's outcome, in a real worker; hostile ones are named in the log and change
nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs._observers import JobOutcome
from tests.helpers import count, rows, run_cli

WORKER = ["--app", "tests.observers_app:app", "worker", "--burst"]


@pytest.fixture
def obs(database_url: str) -> Iterator[Any]:
    from tests import observers_app

    observers_app.app.configure(database_url=database_url)
    yield observers_app
    observers_app.app.close()


def observed(database_url: str) -> tuple[list[dict[str, Any]], str]:
    """What a burst worker's observers printed, and its whole output."""
    done = run_cli(database_url, *WORKER)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    lines = [
        json.loads(line.removeprefix("OBSERVED "))
        for line in out.splitlines()
        if line.startswith("OBSERVED ")
    ]
    return lines, out


def lines_of(found: list[dict[str, Any]], kind: str, job_id: int) -> list[dict[str, Any]]:
    return [line for line in found if line["kind"] == kind and line["id"] == job_id]


def test_each_attempt_is_observed_once_with_its_outcome(
    obs: Any, database_url: str, db: psycopg.Connection[Any]
) -> None:
    completes = obs.completes.enqueue()
    fails = obs.fails.enqueue()
    later = obs.fails_later.enqueue()
    snoozes = obs.snoozes.enqueue()
    cancels = obs.cancels_itself.enqueue()
    found, _ = observed(database_url)
    ends = {job_id: lines_of(found, "end", job_id) for job_id in (completes, fails, later, snoozes)}
    assert [(e["state"], e["delay"], e["error"]) for e in ends[completes]] == [
        ("completed", 0.0, None)
    ]
    assert [(e["attempt"], e["state"], e["delay"], e["error"]) for e in ends[fails]] == [
        (1, "retryable", 0.0, "builtins.ValueError"),
        (2, "discarded", 0.0, "builtins.ValueError"),
    ]
    assert [(e["state"], e["delay"], e["error"]) for e in ends[later]] == [
        ("retryable", 3600.0, "builtins.LookupError")
    ]
    assert [(e["state"], e["delay"]) for e in ends[snoozes]] == [("scheduled", 3600.0)]
    assert [e["state"] for e in lines_of(found, "end", cancels)] == ["cancelled"]
    for job_id, attempts in ((completes, 1), (fails, 2), (later, 1), (snoozes, 1), (cancels, 1)):
        assert len(lines_of(found, "start", job_id)) == attempts
        assert len(lines_of(found, "after", job_id)) == attempts
        # the start line comes before the end line of the same attempt
        starts = [
            i for i, line in enumerate(found) if line["kind"] == "start" and line["id"] == job_id
        ]
        ends_at = [
            i for i, line in enumerate(found) if line["kind"] == "end" and line["id"] == job_id
        ]
        assert all(s < e for s, e in zip(starts, ends_at, strict=True))
    assert all(line["seconds"] >= 0 for line in found if line["kind"] == "end")
    states = dict(rows(db, "SELECT id, state FROM pgjobs.jobs"))
    assert states == {
        completes: "completed",
        fails: "discarded",
        later: "retryable",
        snoozes: "scheduled",
        cancels: "cancelled",
    }


@pytest.mark.parametrize("what", ["raise", "exit", "interrupt", "mutate"])
def test_a_hostile_observer_is_named_in_the_log_and_changes_nothing(
    obs: Any, database_url: str, db: psycopg.Connection[Any], what: str
) -> None:
    done = obs.completes.options(meta={"observer": what}).enqueue()
    failed = obs.fails.options(meta={"observer": what}, max_attempts=1).enqueue()
    found, out = observed(database_url)
    assert rows(
        db, "SELECT id, state, errors -> -1 ->> 'message' FROM pgjobs.jobs ORDER BY id"
    ) == [
        (done, "completed", None),
        (failed, "discarded", "the job failed"),
    ]
    for job_id in (done, failed):
        assert len(lines_of(found, "after", job_id)) == 1  # the observers after it still ran
        if what != "mutate":
            start = f"job {job_id}: on_job_start observer tests.observers_app.hostile_start failed"
            assert start in out
        end = f"job {job_id}: on_job_end observer tests.observers_app.hostile_end failed"
        assert (end in out) == (what != "mutate" or job_id == failed)
    assert count(db, "SELECT count(*) FROM pgjobs.workers") == 0  # the worker ended cleanly


def test_registration_refuses_what_cannot_observe() -> None:
    app = pgjobs.App()

    async def coroutine(job: pgjobs.JobContext, outcome: JobOutcome) -> None:
        pass

    def three(job: Any, outcome: Any, extra: Any) -> None:
        pass

    def generator(job: Any) -> Any:
        yield

    with pytest.raises(pgjobs.ConfigError, match=r"on_job_end observer .*coroutine is async"):
        app.on_job_end(coroutine)  # type: ignore[arg-type]
    with pytest.raises(pgjobs.ConfigError, match=r"three: must take exactly 2 positional"):
        app.on_job_end(three)  # type: ignore[arg-type]
    with pytest.raises(pgjobs.ConfigError, match=r"on_job_start observer .*generator: must be"):
        app.on_job_start(generator)
    with pytest.raises(pgjobs.ConfigError, match=r"must take exactly 1 positional"):
        app.on_job_start(lambda: None)  # type: ignore[arg-type,misc]
    assert len(app.seam.on_job_end) == len(app.seam.on_job_start) == 1  # the log lines alone


def test_an_outcome_is_a_frozen_record() -> None:
    outcome = JobOutcome("completed", 0.0, None, 0.5)
    with pytest.raises(AttributeError):
        outcome.state = "discarded"  # type: ignore[misc]
    assert pgjobs.JobOutcome is JobOutcome
