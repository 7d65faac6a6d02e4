"""OpenTelemetry traces: an enqueue stores its span's context with the job on every enqueue
path, and a real worker runs the job inside a span whose parent is that enqueue, so one trace
goes from the caller into the worker. Untraced, nothing is stored and nothing imported."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import attach, detach
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pgjobs
import pgjobs.tracing
from pgjobs._encoding import COPY_THRESHOLD
from tests import tracing_app
from tests.helpers import WorkerProcess, eventually, rows, run_cli, run_program, value

WORKER = ["--app", "tests.tracing_app:app", "worker", "--burst", "--queues", "default,limited"]


class Traced:
    """The test process's tracer, and the spans it has ended."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = trace.get_tracer("tests", tracer_provider=self.provider)

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def span(self, name: str) -> ReadableSpan:
        (found,) = self.spans(name)
        return found


@pytest.fixture
def traced(database_url: str) -> Iterator[Traced]:
    """The tests' tracing app on this test's database, instrumented in this process."""
    tracer = Traced()
    tracing_app.app.configure(database_url=database_url)
    pgjobs.tracing.instrument(tracing_app.app, tracer_provider=tracer.provider)
    yield tracer
    pgjobs.tracing.uninstrument(tracing_app.app)
    tracing_app.app.close()


def trace_id(span: ReadableSpan) -> str:
    return f"{span.get_span_context().trace_id:032x}"


def span_id(span: ReadableSpan) -> str:
    return f"{span.get_span_context().span_id:016x}"


def stored_parents(db: psycopg.Connection[Any], ids: list[int]) -> set[tuple[str, str]]:
    """The distinct ``(trace id, span id)`` of the jobs' stored ``traceparent``."""
    found = rows(
        db, "SELECT trace_context->>'traceparent' FROM pgjobs.jobs WHERE id = ANY(%s)", list(ids)
    )
    assert len(found) == len(ids)
    parents = set()
    for (traceparent,) in found:
        assert traceparent is not None
        _version, trace, span, _flags = traceparent.split("-")
        parents.add((trace, span))
    return parents


def run_worker(database_url: str, spans: Path) -> list[dict[str, Any]]:
    """Run a traced ``pgjobs worker --burst`` until the queues are empty; the spans it wrote."""
    result = run_cli(database_url, *WORKER, env={"PGJOBS_TEST_SPANS": str(spans)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return [json.loads(line) for line in spans.read_text().splitlines()]


def test_an_enqueue_in_a_span_stores_its_context_with_the_job(
    traced: Traced, db: psycopg.Connection[Any]
) -> None:
    with traced.tracer.start_as_current_span("request") as request:
        job_id = tracing_app.sync_job.enqueue("a")
        with psycopg.connect(str(tracing_app.app.settings.database_url)) as conn:
            in_transaction = tracing_app.async_job.using(conn).enqueue("b")
    enqueues = traced.spans("enqueue tracing.sync_job")
    assert len(enqueues) == 1
    enqueue = enqueues[0]
    assert enqueue.kind == trace.SpanKind.PRODUCER
    assert (
        enqueue.parent is not None and enqueue.parent.span_id == request.get_span_context().span_id
    )
    assert trace_id(enqueue) == f"{request.get_span_context().trace_id:032x}"
    assert dict(enqueue.attributes or {}) == {
        "messaging.system": "pgjobs",
        "messaging.operation.type": "send",
        "messaging.operation.name": "enqueue",
        "messaging.destination.name": "default",
        "messaging.message.id": str(job_id),
        "pgjobs.job.name": "tracing.sync_job",
    }
    assert stored_parents(db, [job_id]) == {(trace_id(enqueue), span_id(enqueue))}
    other = traced.span("enqueue tracing.async_job")
    assert stored_parents(db, [in_transaction]) == {(trace_id(enqueue), span_id(other))}


def test_baggage_is_stored_only_when_asked(traced: Traced, db: psycopg.Connection[Any]) -> None:
    """Baggage may carry a user's data (an e-mail address, a tenant's name): by default a job
    stores the trace context alone; ``instrument(app, baggage=True)`` stores the baggage too."""

    def enqueue_with_baggage() -> int:
        token = attach(baggage.set_baggage("user.email", "someone@example.com"))
        try:
            with traced.tracer.start_as_current_span("request"):
                return tracing_app.sync_job.enqueue("a")
        finally:
            detach(token)

    plain = enqueue_with_baggage()
    stored = value(db, "SELECT trace_context FROM pgjobs.jobs WHERE id = %s", plain)
    assert set(stored) == {"traceparent"}

    pgjobs.tracing.instrument(tracing_app.app, tracer_provider=traced.provider, baggage=True)
    with_baggage = enqueue_with_baggage()
    stored = value(db, "SELECT trace_context FROM pgjobs.jobs WHERE id = %s", with_baggage)
    assert set(stored) == {"traceparent", "baggage"}
    assert "someone%40example.com" in stored["baggage"]


def test_async_enqueues_store_their_context(traced: Traced, db: psycopg.Connection[Any]) -> None:
    async def enqueue() -> list[int]:
        with traced.tracer.start_as_current_span("request"):
            one = await tracing_app.async_job.enqueue_async("a")
            many = await tracing_app.app.enqueue_many_async(
                [tracing_app.sync_job.call(str(i)) for i in range(COPY_THRESHOLD)]
            )
            unique = await tracing_app.unique_job.enqueue_async(1)
        await tracing_app.app.aclose()
        return [one, *many, unique]

    one, *many, unique = asyncio.run(enqueue())
    request = traced.span("request")
    [single] = stored_parents(db, [one])
    assert single == (trace_id(request), span_id(traced.span("enqueue tracing.async_job")))
    batch = traced.span("enqueue_many")
    assert stored_parents(db, many) == {(trace_id(request), span_id(batch))}
    assert (batch.attributes or {})["messaging.batch.message_count"] == COPY_THRESHOLD
    unique_span = traced.span("enqueue tracing.unique_job")
    assert stored_parents(db, [unique]) == {(trace_id(request), span_id(unique_span))}


def test_every_enqueue_path_carries_the_context(
    traced: Traced, db: psycopg.Connection[Any]
) -> None:
    """INSERT_JOBS, COPY, the unique inserts (one, several, copied) and batches."""
    app = tracing_app.app
    with traced.tracer.start_as_current_span("request") as request:
        small = app.enqueue_many([tracing_app.sync_job.call(str(i)) for i in range(3)])
        copied = app.enqueue_many(
            [tracing_app.sync_job.call(str(i)) for i in range(COPY_THRESHOLD)]
        )
        unique_one = tracing_app.unique_job.enqueue(1)
        duplicate = tracing_app.unique_job.enqueue(1)
        unique_few = app.enqueue_many([tracing_app.unique_job.call(i) for i in range(2, 5)])
        unique_copied = app.enqueue_many(
            [tracing_app.unique_job.call(i) for i in range(10, 10 + COPY_THRESHOLD)]
        )
        mixed = app.enqueue_many(
            [tracing_app.unique_job.call(5), tracing_app.sync_job.call("plain")]
        )
        with app.batch(on_complete=tracing_app.sync_job.call("callback")) as batch:
            in_batch = batch.enqueue_many([tracing_app.sync_job.call(str(i)) for i in range(2)])
        added = app.add_to_batch(batch.id, [tracing_app.sync_job.call("late")])
        with app.batch(on_success=tracing_app.async_job.call("callback")) as empty:
            pass  # sealed with no job: its callback is enqueued at once
    trace = trace_id(request)
    many = traced.spans("enqueue_many")
    assert [(span.attributes or {})["messaging.batch.message_count"] for span in many] == [
        3, COPY_THRESHOLD, 3, COPY_THRESHOLD, 2, 2,
    ]  # fmt: skip
    expected = [small, copied, unique_few, unique_copied, mixed, in_batch]
    for ids, span in zip(expected, many, strict=True):
        assert stored_parents(db, ids) == {(trace, span_id(span))}
    unique_spans = traced.spans("enqueue tracing.unique_job")
    assert stored_parents(db, [unique_one]) == {(trace, span_id(unique_spans[0]))}
    assert duplicate == unique_one and duplicate.duplicate
    assert (unique_spans[1].attributes or {})["messaging.message.id"] == str(unique_one)
    assert (unique_spans[1].attributes or {})["pgjobs.job.duplicate"] is True
    late = traced.span("enqueue tracing.sync_job")
    assert (late.attributes or {})["pgjobs.batch.id"] == batch.id
    assert stored_parents(db, added) == {(trace, span_id(late))}
    callback = value(db, "SELECT success_job_id FROM pgjobs.batches WHERE id = %s", empty.id)
    assert stored_parents(db, [callback]) == {(trace, span_id(request))}


def test_a_worker_runs_each_job_in_a_span_whose_parent_is_its_enqueue(
    traced: Traced, db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    with traced.tracer.start_as_current_span("request"):
        sync_id = tracing_app.sync_job.enqueue("sync")
        async_id = tracing_app.async_job.enqueue("async")
        failing = tracing_app.fails.enqueue()
        snoozing = tracing_app.snoozes.enqueue(str(tmp_path / "snoozed"))
        limited = tracing_app.sync_job.options(queue="limited").enqueue("limited")
    request = traced.span("request")
    spans = run_worker(database_url, tmp_path / "spans.jsonl")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)

    runs = (
        (sync_id, "sync_job", "sync", "default"),
        (async_id, "async_job", "async", "default"),
        (limited, "sync_job", "limited", "limited"),
    )
    for job_id, name, label, queue in runs:
        [process] = [
            span
            for span in by_name[f"process tracing.{name}"]
            if span["attributes"]["messaging.message.id"] == str(job_id)
        ]
        [enqueue] = [
            span
            for span in traced.spans(f"enqueue tracing.{name}")
            if (span.attributes or {})["messaging.message.id"] == str(job_id)
        ]
        assert process["trace_id"] == trace_id(request)
        assert process["parent_span_id"] == span_id(enqueue)
        assert process["kind"] == "CONSUMER" and process["status"] == "UNSET"
        assert process["attributes"] == {
            "messaging.system": "pgjobs",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": str(job_id),
            "pgjobs.job.name": f"tracing.{name}",
            "pgjobs.job.attempt": 1,
            "pgjobs.job.max_attempts": 25,
            "pgjobs.job.outcome": "completed",
        }
        [inner] = by_name[f"in {label}"]  # made by the job's own code, in a thread or not
        assert inner["trace_id"] == trace_id(request)
        assert inner["parent_span_id"] == process["span_id"]

    # each attempt joins the same trace, under the same enqueue
    attempts = by_name["process tracing.fails"]
    enqueue = traced.span("enqueue tracing.fails")
    assert [(s["trace_id"], s["parent_span_id"]) for s in attempts] == [
        (trace_id(request), span_id(enqueue))
    ] * 2
    outcomes = [(s["attributes"]["pgjobs.job.attempt"], s["attributes"]["pgjobs.job.outcome"],
                 s["status"]) for s in attempts]  # fmt: skip
    assert outcomes == [(1, "retried", "ERROR"), (2, "discarded", "ERROR")]
    for attempt in attempts:
        [event] = attempt["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.type"] == "builtins.ValueError"
        assert event["attributes"]["exception.message"] == "boom"
        assert 'raise ValueError("boom")' in event["attributes"]["exception.stacktrace"]

    snoozes = by_name["process tracing.snoozes"]
    assert [s["attributes"]["pgjobs.job.outcome"] for s in snoozes] == ["snoozed", "completed"]
    assert snoozes[0]["attributes"]["pgjobs.job.delay_seconds"] == 0
    assert {s["parent_span_id"] for s in snoozes} == {
        span_id(traced.span("enqueue tracing.snoozes"))
    }
    states = dict(rows(db, "SELECT id, state FROM pgjobs.jobs"))
    assert states == {
        sync_id: "completed",
        async_id: "completed",
        failing: "discarded",
        snoozing: "completed",
        limited: "completed",
    }


def test_a_cancelled_run_says_so_on_its_span(
    traced: Traced, db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    job_id = tracing_app.async_until_cancelled.enqueue()
    spans = tmp_path / "spans.jsonl"
    worker = WorkerProcess.start(
        WORKER[:-3],  # not --burst: it runs until stopped
        database_url=database_url,
        log=tmp_path / "worker.log",
        env={"PGJOBS_TEST_SPANS": str(spans)},
    )
    try:
        state = "SELECT state FROM pgjobs.jobs WHERE id = %s"
        eventually(lambda: value(db, state, job_id) == "running")
        assert tracing_app.app.cancel(job_id) == "cancelling"
        eventually(lambda: value(db, state, job_id) == "cancelled")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()
    finally:
        worker.kill()
    [process] = [json.loads(line) for line in spans.read_text().splitlines()]
    assert process["name"] == "process tracing.async_until_cancelled"
    assert process["attributes"]["pgjobs.job.outcome"] == "cancelled"
    assert process["status"] == "UNSET" and process["events"] == []
    enqueue = traced.span("enqueue tracing.async_until_cancelled")
    assert process["parent_span_id"] == span_id(enqueue)


@pytest.mark.parametrize(
    "stored",
    [
        '"garbage"',
        "[1, 2]",
        "{}",
        '{"traceparent": 42}',
        '{"traceparent": "00-not-a-trace-01", "tracestate": "=,=;"}',
        '{"traceparent": "00-00000000000000000000000000000000-0000000000000000-01"}',
        '{"traceparent": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x"]}',
    ],
)
def test_an_unreadable_context_makes_a_new_trace_and_the_job_runs(
    stored: str, db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    job_id = value(
        db,
        "INSERT INTO pgjobs.jobs (name, args, trace_context)"
        " VALUES ('tracing.sync_job', '[\"hostile\"]', %s::jsonb) RETURNING id",
        stored,
    )
    spans = run_worker(database_url, tmp_path / "spans.jsonl")
    [process] = [s for s in spans if s["name"] == "process tracing.sync_job"]
    assert process["attributes"]["pgjobs.job.outcome"] == "completed"
    assert process["parent_span_id"] is None
    assert process["trace_id"] not in ("0" * 32, "4bf92f3577b34da6a3ce929d0e0e4736")
    assert value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", job_id) == "completed"


def test_untraced_enqueues_store_nothing_and_runs_make_no_spans(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    tracing_app.app.configure(database_url=database_url)
    try:
        one = tracing_app.sync_job.enqueue("a")
        many = tracing_app.app.enqueue_many(
            [tracing_app.sync_job.call(str(i)) for i in range(COPY_THRESHOLD)]
        )
        unique = tracing_app.unique_job.enqueue(1)
    finally:
        tracing_app.app.close()
    ids = [one, *many, unique]
    assert value(db, "SELECT count(*) FROM pgjobs.jobs WHERE trace_context IS NULL") == len(ids)
    result = run_cli(database_url, *WORKER)
    assert result.returncode == 0, result.stderr
    assert value(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == len(ids)


def test_importing_pgjobs_does_not_import_opentelemetry(database_url: str) -> None:
    """Neither the package nor a worker's modules load OpenTelemetry until ``instrument``."""
    probe = (
        "import sys, pgjobs, pgjobs.cli, pgjobs._worker, pgjobs._execution\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = run_program(database_url, [sys.executable, "-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_with_no_sdk_the_api_traces_nothing_and_stores_nothing(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """Instrumented with the global provider while no SDK is installed as it: the API's no-op
    spans have no context to store."""
    tracing_app.app.configure(database_url=database_url)
    pgjobs.tracing.instrument(tracing_app.app)
    try:
        one = tracing_app.sync_job.enqueue("a")
        many = tracing_app.app.enqueue_many([tracing_app.sync_job.call("b")] * 2)
    finally:
        pgjobs.tracing.uninstrument(tracing_app.app)
        tracing_app.app.close()
    nulls = "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND trace_context IS NULL"
    assert value(db, nulls, [one, *many]) == 3
