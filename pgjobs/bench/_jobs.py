"""The bench's own jobs; its workers run ``python -m pgjobs --app pgjobs.bench._jobs:app``."""

from __future__ import annotations

import socket
import time

from .._app import App
from .._context import current_job

SCHEMA = "pgjobs_bench"

app = App(schema=SCHEMA)


@app.job(name="pgjobs.bench.noop", max_attempts=1)
def noop() -> None:
    """Does nothing: what is measured is pgjobs."""


@app.job(name="pgjobs.bench.async_noop", max_attempts=1)
async def async_noop() -> None:
    """Does nothing, on the event loop."""


@app.job(name="pgjobs.bench.returns", max_attempts=1)
def returns() -> dict[str, object]:
    """Returns a small dict: what is measured is storing it as the job's result."""
    return {"ok": True, "rows": 42, "path": "thumbnails/42.png"}


@app.job(name="pgjobs.bench.async_returns", max_attempts=1)
async def async_returns() -> dict[str, object]:
    """:func:`returns` on the event loop."""
    return {"ok": True, "rows": 42, "path": "thumbnails/42.png"}


@app.job(name="pgjobs.bench.report_start", max_attempts=1)
def report_start(port: int) -> None:
    """Sends the time this function started to the bench over loopback UDP."""
    _report(time.time(), port)


@app.job(name="pgjobs.bench.async_report_start", max_attempts=1)
async def async_report_start(port: int) -> None:
    """:func:`report_start` on the event loop."""
    _report(time.time(), port)


def _report(started: float, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"{current_job().id} {started!r}".encode(), ("127.0.0.1", port))
