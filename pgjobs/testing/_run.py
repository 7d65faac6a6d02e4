"""Running one job in this process, as a worker runs it: the one place that calls
:func:`pgjobs._execution.execute` outside the worker."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Executor
from typing import Any

from .._app import App
from .._context import JobContext
from .._execution import ClaimedJob, execute
from .._outcome import Outcome

WORKER_ID = "pgjobs.testing"
"""``current_job().worker_id`` of a job run in fake mode."""


async def run_job(
    app: App,
    *,
    job_id: int,
    name: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    priority: int,
    attempt: int,
    max_attempts: int,
    batch_id: int | None,
    meta: dict[str, Any],
    threads: Executor,
) -> Outcome:
    """Run one attempt of job ``name`` (``def`` jobs in ``threads``) to its outcome; whatever
    the job raises, ``SystemExit`` included, becomes the outcome, as in a worker."""
    claimed = ClaimedJob(
        job_id,
        queue,
        name,
        args,
        kwargs,
        priority,
        attempt,
        max_attempts,
        uuid.uuid4(),
        batch_id,
        None,
        meta,
    )
    context = JobContext(
        id=job_id,
        name=name,
        queue=queue,
        attempt=attempt,
        max_attempts=max_attempts,
        worker_id=WORKER_ID,
        _stopping=threading.Event(),
        batch_id=batch_id,
        _args=args,
        _kwargs=kwargs,
        _meta=meta,
    )
    return await execute(app.get, app.seam, claimed, context, threads)
