"""Log lines: a line per job start and end, and the CLI's text or JSON format.

Each run of a job logs ``start`` and, when the attempt ends, ``done`` (completed), ``fail``
(retryable or discarded), ``cancelled`` or ``snoozed``, at INFO on the ``pgjobs.jobs`` logger,
as Sidekiq's ``start``/``done`` lines: the first ``on_job_start`` and ``on_job_end`` observers
of every app's seam (:mod:`._observers`). The job's fields travel in the record (``job_id``,
``job_name``, ``queue``, ``attempt``, and on the end ``duration`` in seconds and ``state``), so
a JSON formatter writes them as keys. Silence them alone with
``logging.getLogger("pgjobs.jobs").setLevel(logging.WARNING)``.

The library itself never configures logging: a host application's handlers and levels are its
own. Only the ``pgjobs`` command sets up the root logger, in the format the settings ask for.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import JobContext
    from ._observers import JobOutcome

job_log = logging.getLogger("pgjobs.jobs")

FORMATS = ("text", "json")
"""The values of the ``log_format`` setting."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

JOB_FIELDS = ("event", "job_id", "job_name", "queue", "attempt", "duration", "state")
"""The record attributes a job's lines carry, written as keys by :class:`JsonFormatter`."""

ENDINGS = {
    "completed": "done",
    "retryable": "fail",
    "discarded": "fail",
    "cancelled": "cancelled",
    "scheduled": "snoozed",
}
"""The end line's word for each outcome state."""


def job_started(job: JobContext) -> None:
    """The ``start`` line: an ``on_job_start`` observer."""
    if job_log.isEnabledFor(logging.INFO):
        fields = {
            "job_id": job.id,
            "job_name": job.name,
            "queue": job.queue,
            "attempt": job.attempt,
        }
        job_log.info(
            "start job %s %s (queue %s, attempt %s)",
            job.id,
            job.name,
            job.queue,
            job.attempt,
            extra={"event": "start", **fields},
        )


def job_ended(job: JobContext, outcome: JobOutcome) -> None:
    """The end line (``done``, ``fail``, ``cancelled``, ``snoozed``): an ``on_job_end``
    observer."""
    if job_log.isEnabledFor(logging.INFO):
        state, seconds = outcome.state, outcome.seconds
        event = ENDINGS.get(state, state)
        fields = {
            "job_id": job.id,
            "job_name": job.name,
            "queue": job.queue,
            "attempt": job.attempt,
        }
        job_log.info(
            "%s job %s %s (queue %s, attempt %s) in %.3f s%s",
            event,
            job.id,
            job.name,
            job.queue,
            job.attempt,
            seconds,
            "" if event == "done" else f": {state}",
            extra={"event": event, **fields, "duration": round(seconds, 6), "state": state},
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    the job's fields when the record has them, and ``exception`` with the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in JOB_FIELDS:
            if key in record.__dict__:
                line[key] = record.__dict__[key]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_cli_logging(level: str, log_format: str) -> None:
    """The ``pgjobs`` command's logging: a handler on the root logger, in text or JSON."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
