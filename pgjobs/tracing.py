"""OpenTelemetry traces of enqueues and runs (``pip install 'pgjobs[otel]'``).

:func:`instrument` turns tracing on for one :class:`~pgjobs.App`. Each enqueue then makes a
``PRODUCER`` span, ``enqueue <job name>`` (``enqueue_many`` for several jobs at once), and
stores its W3C trace context with the job (``jobs.trace_context``), injected by the global
propagator. The worker runs each attempt inside a ``CONSUMER`` span, ``process <job name>``,
whose parent is that context: the trace of a web request goes on into the worker, and the
spans that the job's own code makes (in ``async def`` jobs and in the threads of ``def`` jobs)
are children of the run's::

    import pgjobs.tracing

    pgjobs.tracing.instrument(app)  # the global tracer provider, or tracer_provider=...

The spans are observers on the app's seam (:mod:`pgjobs._observers`), around each enqueue call
and, outside the run middleware, around each run. Until :func:`instrument` nothing of
OpenTelemetry is imported, and an enqueue or a run pays one test of an empty tuple. Instrument
the app in the web process and in the worker (the module that ``pgjobs worker --app``
imports).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from ._app import App
from ._observers import JobOutcome
from ._stats import OUTCOMES

if TYPE_CHECKING:
    from ._call import JobCall
    from ._context import JobContext

SYSTEM = "pgjobs"
"""``messaging.system`` of every span."""

BAGGAGE = "baggage"
"""The W3C baggage header's key in a propagator's carrier."""


def instrument(
    app: App, tracer_provider: TracerProvider | None = None, *, baggage: bool = False
) -> None:
    """Trace ``app``'s enqueues and the runs of its jobs from now on.

    Args:
        app: the app whose enqueues (on any connection, sync or async, batches included) and
            whose runs in a worker are traced.
        tracer_provider: where the spans go; the global tracer provider by default.
        baggage: store the enqueue's OpenTelemetry baggage with each job too, so that the run
            sees it. Off by default: baggage may carry a user's data (an address, a tenant),
            which would then sit in every job row; the trace context alone is stored.

    Example::

        pgjobs.tracing.instrument(app, tracer_provider=provider)
    """
    uninstrument(app)
    tracer = trace.get_tracer("pgjobs", tracer_provider=tracer_provider)
    tracing = Tracing(tracer, baggage=baggage)
    seam = app.seam
    seam.around_send += (tracing.sending,)
    seam.around_run += (tracing.processing,)
    seam.carrier = tracing.current


def uninstrument(app: App) -> None:
    """Stop tracing ``app``: its enqueues store no context and its runs make no spans."""
    seam = app.seam
    seam.around_send = tuple(o for o in seam.around_send if not _is_tracing(o))
    seam.around_run = tuple(o for o in seam.around_run if not _is_tracing(o))
    if _is_tracing(seam.carrier):
        seam.carrier = None


def _is_tracing(observer: object) -> bool:
    return isinstance(getattr(observer, "__self__", None), Tracing)


class Tracing:
    """The spans of one app, as observers on its seam: around each enqueue call and around each
    run. Holds nothing but its tracer; the context travels in the jobs table."""

    def __init__(self, tracer: Tracer, *, baggage: bool = False) -> None:
        self._tracer = tracer
        self._baggage = baggage

    def sending(
        self, calls: Sequence[JobCall], batch_id: int | None = None
    ) -> Generator[str | None, Sequence[int], None]:
        """A ``PRODUCER`` span, current while ``calls`` (at least one) are enqueued; yields its
        context as JSON text for every job to carry (``None`` if the propagator injects nothing,
        as with the API's no-op tracer), and is sent their ids. An exception thrown in marks the
        span failed."""
        first = calls[0]
        queue = first.queue
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "enqueue",
        }
        if all(c.queue == queue for c in calls):
            attributes["messaging.destination.name"] = queue
        if len(calls) == 1:
            name = f"enqueue {first.name}"
            attributes["pgjobs.job.name"] = first.name
        else:
            name = "enqueue_many"
            attributes["messaging.batch.message_count"] = len(calls)
        if batch_id is not None:
            attributes["pgjobs.batch.id"] = batch_id
        with self._tracer.start_as_current_span(
            name, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            ids = yield self.current()
            if len(ids) == 1:
                # the id of the one job just enqueued (or, of a unique job's duplicate, the
                # holder's)
                span.set_attribute("messaging.message.id", str(ids[0]))
                if getattr(ids[0], "duplicate", False):
                    span.set_attribute("pgjobs.job.duplicate", True)

    def current(self) -> str | None:
        """The current context as the propagator's carrier, in JSON text, without the
        baggage unless asked; ``None`` when it injects nothing (no span is current)."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if not self._baggage:
            carrier.pop(BAGGAGE, None)
        return json.dumps(carrier, separators=(",", ":")) if carrier else None

    def processing(self, job: JobContext, carrier: Any) -> Generator[None, JobOutcome, None]:
        """A ``CONSUMER`` span, current while ``job`` runs (in a ``def`` job's thread too),
        whose parent is the context its enqueue stored (``carrier``); a context that cannot be
        read (not a carrier, or garbage in it) makes the run a new trace. It is sent the
        outcome; the worker's cancellation (the job handed back) is thrown in."""
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "pgjobs.job.name": job.name,
            "pgjobs.job.attempt": job.attempt,
            "pgjobs.job.max_attempts": job.max_attempts,
        }
        if job.batch_id is not None:
            attributes["pgjobs.batch.id"] = job.batch_id
        with self._tracer.start_as_current_span(
            f"process {job.name}",
            context=parent_context(carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,  # a job's exceptions end in its outcome, recorded below
            set_status_on_exception=False,
        ) as span:
            try:
                outcome = yield
            except BaseException:  # the worker stops: the job is handed back
                span.set_attribute("pgjobs.job.outcome", "handed_back")
                raise
            record_outcome(span, outcome)


def parent_context(carrier: Any) -> Context:
    """The context extracted from a stored carrier, into an empty context (a carrier without
    a valid ``traceparent`` gives a root); never raises, whatever the row holds."""
    if not isinstance(carrier, dict):
        return Context()
    fields = {k: v for k, v in carrier.items() if isinstance(k, str) and isinstance(v, str)}
    try:
        return propagate.extract(fields, context=Context())
    except Exception:  # a propagator that chokes on a hostile value: a new trace
        return Context()


def record_outcome(span: Span, outcome: JobOutcome) -> None:
    """Set the run's outcome on its span: a failed attempt (retried or discarded) as the
    exception it stored and status ``ERROR``, a snooze or a retry with its delay."""
    span.set_attribute("pgjobs.job.outcome", OUTCOMES[outcome.state])  # as in job_stats
    if outcome.state in ("retryable", "scheduled"):
        span.set_attribute("pgjobs.job.delay_seconds", outcome.delay)
    if outcome.state not in ("retryable", "discarded"):
        return
    error = outcome.error or {}
    kind, message = str(error.get("class", "")), str(error.get("message", ""))
    # the record OpenTelemetry's record_exception() writes, from what the job stores
    span.add_event(
        "exception",
        {
            "exception.type": kind,
            "exception.message": message,
            "exception.stacktrace": str(error.get("traceback", "")),
        },
    )
    span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"))
