"""Background jobs for Python on PostgreSQL alone.

Define jobs on an :class:`App`, enqueue them inside your own transactions, run them with
``pgjobs worker --app module:app``.
"""

from ._app import App
from ._batch import AsyncBatch, Batch
from ._call import JobCall, Unique
from ._connection import AsyncConnection, Connection
from ._context import JobContext, current_job
from ._errors import (
    ArgumentsMismatch,
    ConfigError,
    DatabaseError,
    JobTimeout,
    PgjobsError,
    SchemaError,
    UnknownJobError,
    ValidationError,
)
from ._job import BoundJob, Job
from ._middleware import Enqueuing
from ._migrate import migrate
from ._observers import JobOutcome
from ._outcome import Snooze, sidekiq_backoff
from ._queues import QueueLimits
from ._records import BatchRecord, CronRecord, JobRecord, QueueRecord, WorkerRecord
from ._settings import Settings, load_settings
from ._unique import JobId
from ._worker import Worker

__all__ = [
    "App",
    "ArgumentsMismatch",
    "AsyncBatch",
    "AsyncConnection",
    "Batch",
    "BatchRecord",
    "BoundJob",
    "ConfigError",
    "Connection",
    "CronRecord",
    "DatabaseError",
    "Enqueuing",
    "Job",
    "JobCall",
    "JobContext",
    "JobId",
    "JobOutcome",
    "JobRecord",
    "JobTimeout",
    "PgjobsError",
    "QueueLimits",
    "QueueRecord",
    "SchemaError",
    "Settings",
    "Snooze",
    "Unique",
    "UnknownJobError",
    "ValidationError",
    "Worker",
    "WorkerRecord",
    "current_job",
    "load_settings",
    "migrate",
    "sidekiq_backoff",
]
