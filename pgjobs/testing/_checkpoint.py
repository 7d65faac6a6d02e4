"""Checkpoints: points a job marks, where a crash test stops its worker.

``checkpoint(name)`` does nothing unless this process is a worker that :func:`run_until_killed
<pgjobs.testing.run_until_killed>` started to stop at ``name``: one comparison with a value read
at import. There it tells the test through a FIFO that the job got this far, and waits to be
killed.
"""

from __future__ import annotations

import os
import threading

ARMED_VARIABLE = "PGJOBS_TESTING_CHECKPOINT"
"""The checkpoint a crash test's worker stops at (set in its environment only)."""

FIFO_VARIABLE = "PGJOBS_TESTING_CHECKPOINT_FIFO"
"""The FIFO through which that worker tells the test that the job reached it."""

_armed = os.environ.get(ARMED_VARIABLE)


def checkpoint(name: str) -> None:
    """Mark a point in a job where a crash test may kill its worker (see the testing guide).

    A no-op outside such a test, cheap enough for production code.
    """
    if _armed is not None and name == _armed:
        _stop_here(name)


def _stop_here(name: str) -> None:
    """Tell the waiting test, then block this thread until the process is killed."""
    with open(os.environ[FIFO_VARIABLE], "w") as fifo:
        fifo.write(f"{name} {os.getpid()}\n")
    threading.Event().wait()
