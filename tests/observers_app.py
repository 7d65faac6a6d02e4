"""An app with ``on_job_start``/``on_job_end`` observers, for tests/test_observers.py: run by
real workers (``--app tests.observers_app:app``). Each observer prints a line ``OBSERVED
{json}`` that the test reads from the worker's output; a hostile observer does to its job what
the job's meta asks (``{"observer": "raise"}``...)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pgjobs

app = pgjobs.App()


def emit(kind: str, job: pgjobs.JobContext, **fields: Any) -> None:
    line = {"kind": kind, "id": job.id, "name": job.name, "attempt": job.attempt, **fields}
    print("OBSERVED " + json.dumps(line), flush=True)


@app.on_job_start
def started(job: pgjobs.JobContext) -> None:
    emit("start", job)


@app.on_job_end
def ended(job: pgjobs.JobContext, outcome: pgjobs.JobOutcome) -> None:
    error = None if outcome.error is None else outcome.error["class"]
    emit("end", job, state=outcome.state, delay=outcome.delay, error=error, seconds=outcome.seconds)


def _hostile(job: pgjobs.JobContext, outcome: pgjobs.JobOutcome | None) -> None:
    what = job.meta.get("observer")
    if what == "raise":
        raise RuntimeError("the observer broke")
    if what == "exit":
        sys.exit(5)
    if what == "interrupt":
        raise KeyboardInterrupt
    if what == "mutate" and outcome is not None and outcome.error is not None:
        outcome.error["message"] = "changed by an observer"  # type: ignore[index]


@app.on_job_start
def hostile_start(job: pgjobs.JobContext) -> None:
    _hostile(job, None)


@app.on_job_end
def hostile_end(job: pgjobs.JobContext, outcome: pgjobs.JobOutcome) -> None:
    _hostile(job, outcome)


@app.on_job_end
def after(job: pgjobs.JobContext, outcome: pgjobs.JobOutcome) -> None:
    """After the hostile one: still called."""
    emit("after", job, state=outcome.state)


@app.job(name="completes")
def completes() -> None:
    pass


@app.job(name="fails", max_attempts=2, retry=lambda attempt, exc: 0.0)
def fails() -> None:
    raise ValueError("the job failed")


@app.job(name="fails_later", retry=lambda attempt, exc: 3600.0)
def fails_later() -> None:
    raise LookupError("the job failed; retried in an hour")


@app.job(name="snoozes")
def snoozes() -> None:
    raise pgjobs.Snooze(3600)


@app.job(name="cancels_itself")
async def cancels_itself() -> None:
    """Asks for its own cancellation, then waits to be cancelled (30 s at most)."""
    await app.cancel_async(pgjobs.current_job().id)
    await asyncio.sleep(30)
