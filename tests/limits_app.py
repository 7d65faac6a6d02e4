"""Jobs on limited and pausable queues, for tests/test_queues.py. An app of its own, so that its
queue declarations and partition keys never reach the workers of other tests. Each job records
its start and end in the ``ledger`` table through its own autocommit connection."""

from __future__ import annotations

import time
from datetime import timedelta

import pgjobs
from tests.ledger import Ledger

app = pgjobs.App()
app.queue("tenants", concurrency=5, partition_by="key")
app.queue("rated", rate=(10, timedelta(seconds=2)))
app.queue("rated_full", rate=(100, timedelta(minutes=1)))
app.queue("serial", concurrency=5)
app.queue("roomy", concurrency=1_000_000)

ledger = Ledger(app)
record = ledger.record
close_connections = ledger.close


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
