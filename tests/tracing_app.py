"""Jobs of tests/test_tracing.py, in an app of their own. Run as a worker's app with
``PGJOBS_TEST_SPANS`` set to a path, it is instrumented with an OpenTelemetry SDK provider that
writes each ended span to that file as one JSON line; the tests instrument it in their own
process with an in-memory exporter instead."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import pgjobs
import pgjobs.tracing

app = pgjobs.App()
app.queue("limited", concurrency=5)  # claimed by claim_limited_jobs()

PROVIDER = TracerProvider()
"""The provider this module's spans go to (the worker's own, once instrumented)."""


def retry_now(attempt: int, exc: BaseException) -> float:
    return 0.0


@app.job(name="tracing.sync_job")
def sync_job(label: str) -> None:
    """Makes a span of its own, in the worker's thread."""
    with trace.get_tracer("tests", tracer_provider=PROVIDER).start_as_current_span(f"in {label}"):
        pass


@app.job(name="tracing.async_job")
async def async_job(label: str) -> None:
    """Makes a span of its own, on the worker's event loop."""
    with trace.get_tracer("tests", tracer_provider=PROVIDER).start_as_current_span(f"in {label}"):
        pass


@app.job(name="tracing.fails", max_attempts=2, retry=retry_now)
def fails() -> None:
    raise ValueError("boom")


@app.job(name="tracing.unique_job", unique=pgjobs.Unique())
def unique_job(key: int) -> None:
    pass


@app.job(name="tracing.snoozes", max_attempts=1)
def snoozes(marker: str) -> None:
    """Snoozes once (a snooze gives its attempt back: the file ``marker`` tells the runs apart)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise pgjobs.Snooze(0)


@app.job(name="tracing.async_until_cancelled")
async def async_until_cancelled() -> None:
    """Runs until cancelled (its task is cancelled then)."""
    await asyncio.Event().wait()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """What the tests read of an ended span."""
    context, parent = span.get_span_context(), span.parent
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": None if parent is None else f"{parent.span_id:016x}",
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
    }


class JsonLinesExporter(SpanExporter):
    """Appends each span to a file as one JSON line."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span)) + "\n" for span in spans)
        with self._lock, open(self._path, "a") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


if os.environ.get("PGJOBS_TEST_SPANS"):
    PROVIDER.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(os.environ["PGJOBS_TEST_SPANS"]))
    )
    pgjobs.tracing.instrument(app, tracer_provider=PROVIDER)
