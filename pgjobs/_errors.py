"""The exceptions pgjobs raises. Every one derives from :class:`PgjobsError`."""

from __future__ import annotations


class PgjobsError(Exception):
    """Root of every error pgjobs raises on purpose."""


class ValidationError(PgjobsError, ValueError):
    """A job's arguments or options cannot be stored; nothing was written.

    ``path`` names the offending value, e.g. ``args[1]["items"][3]``.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ConfigError(PgjobsError):
    """A setting is missing or malformed; the message says which and how to fix it."""


class UnknownJobError(PgjobsError, LookupError):
    """A job name that no registered job answers to."""


class ArgumentsMismatch(PgjobsError, TypeError):
    """A job's stored arguments do not fit its function's signature, as when a deploy changed the
    function after the job was enqueued. The attempt fails without calling the function; the job
    is retried after 1, 5 and 15 minutes (for the rest of a rolling deploy), then discarded.
    """


class SchemaError(PgjobsError):
    """The pgjobs tables are missing or older than this version of pgjobs expects."""


class DatabaseError(PgjobsError):
    """The database could not be reached or refused a pgjobs operation."""


class JobTimeout(PgjobsError, TimeoutError):
    """An attempt ran past its job's ``timeout``; it is retried per the job's retry policy.

    ``thread_running`` is true for a ``def`` job, whose thread could not be stopped.
    """

    def __init__(self, message: str, *, thread_running: bool = False) -> None:
        self.thread_running = thread_running
        super().__init__(message)


for _error in (
    PgjobsError,
    ValidationError,
    ConfigError,
    UnknownJobError,
    ArgumentsMismatch,
    SchemaError,
    DatabaseError,
    JobTimeout,
):
    _error.__module__ = "pgjobs"  # as users import them, and as stored in jobs.errors
