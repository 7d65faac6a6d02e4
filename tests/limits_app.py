"""Jobs on limited and pausable queues, for tests/test_queues.py. An app of its own, so that its
queue declarations and partition keys never reach the workers of other tests. Each job records
its start and end in the ``ledger`` table through its own autocommit connection; the paced jobs
record the moment their own code started, on this host's clock, rather than when the row lands."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pgjobs
from tests.ledger import Ledger

app = pgjobs.App()
app.queue("tenants", concurrency=5, partition_by="key")
app.queue("rated", rate=(10, timedelta(seconds=2)))
app.queue("rated_full", rate=(100, timedelta(minutes=1)))
app.queue("serial", concurrency=5)
app.queue("roomy", concurrency=1_000_000)
app.queue("paced", rate=(20, timedelta(seconds=1)))
app.queue("paced_keys", rate=(10, timedelta(seconds=1)), partition_by="key")

ledger = Ledger(app)
record = ledger.record
close_connections = ledger.close


def record_start(label: str) -> None:
    """A ``start`` row at the moment this is called, as the job's own code sees it."""
    started = datetime.now(UTC)
    job = pgjobs.current_job()
    ledger.connection().execute(
        "INSERT INTO ledger (job_id, attempt, pid, label, event, at) "
        "VALUES (%s, %s, 0, %s, 'start', %s)",
        (job.id, job.attempt, label, started),
    )


@app.job(name="limits.tenant_call", queue="tenants", partition_by="tenant")
def tenant_call(tenant: str, seconds: float) -> None:
    """A call on behalf of ``tenant`` that takes ``seconds``."""
    record(tenant, "start")
    time.sleep(seconds)
    record(tenant, "end")


@app.job(name="limits.api_call", queue="rated")
def api_call(label: str = "") -> None:
    record(label, "start")


@app.job(name="limits.slow_api_call", queue="rated_full")
def slow_api_call(label: str = "") -> None:
    record(label, "start")


@app.job(name="limits.pausable", queue="pausable")
def pausable(seconds: float) -> None:
    record("pausable", "start")
    time.sleep(seconds)
    record("pausable", "end")


@app.job(name="limits.serial_call", queue="serial")
def serial_call(seconds: float) -> None:
    record("serial", "start")
    time.sleep(seconds)
    record("serial", "end")


@app.job(name="limits.roomy_call", queue="roomy")
def roomy_call() -> None:
    record("roomy", "start")


@app.job(name="limits.paced_call", queue="paced")
def paced_call(label: str = "") -> None:
    record_start(label)


@app.job(name="limits.async_paced_call", queue="paced")
async def async_paced_call(label: str = "") -> None:
    record_start(label)


@app.job(name="limits.paced_key_call", queue="paced_keys", partition_by="tenant")
def paced_key_call(tenant: str) -> None:
    record_start(tenant)


@app.job(name="limits.busy_call", queue="busy")
def busy_call() -> None:
    """Nothing: a plain queue's jobs, claimed and acknowledged as fast as workers can."""
