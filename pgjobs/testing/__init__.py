"""Testing jobs: fake, inline and real modes, a clock, crash tests, and a pytest plugin.

* :func:`fake`: enqueues are recorded, nothing is written; assert on them, ``drain()`` runs
  them here.
* :func:`inline`: jobs are written as usual and run here once their transaction commits.
* real: :func:`drain` runs an app's due jobs through a burst worker in this process;
  :class:`DatabasePool` hands out migrated test databases cheaply.
* :class:`Clock`: scheduled jobs, retries' back-off and cron ticks come due without sleeping.
* :func:`run_until_killed` with :func:`checkpoint`: kill a real worker mid-job, run the retry.

The pytest plugin (:mod:`pgjobs.testing.plugin`, loaded by pytest itself; ``-p no:pgjobs``
turns it off) provides the ``pgjobs_*`` fixtures. See docs/testing.md.
"""

from ._checkpoint import checkpoint
from ._clock import Clock
from ._crash import CheckpointNotReached, Crash, run_until_killed
from ._databases import DatabasePool, migrated_template
from ._fake import (
    DrainError,
    DrainLimitReached,
    DrainSummary,
    EnqueuedJob,
    FakeQueue,
    JobsFailed,
    fake,
)
from ._inline import Inline, inline
from ._real import drain, drain_async
from ._server import server

__all__ = [
    "CheckpointNotReached",
    "Clock",
    "Crash",
    "DatabasePool",
    "DrainError",
    "DrainLimitReached",
    "DrainSummary",
    "EnqueuedJob",
    "FakeQueue",
    "Inline",
    "JobsFailed",
    "checkpoint",
    "drain",
    "drain_async",
    "fake",
    "inline",
    "migrated_template",
    "run_until_killed",
    "server",
]
