"""Checkpoints: points a job marks, where a crash test stops its worker.

``checkpoint(name)`` does nothing unless this process is a worker that :func:`run_until_killed
<pgjobs.testing.run_until_killed>` started to stop at ``name``: one comparison with a value read
at import. There, the first time, it tells the test through a FIFO that the job got this far,
and waits on a second FIFO: the test kills the process meanwhile, or cuts its database sessions
and then lets the job go on.
"""

from __future__ import annotations

import os

ARMED_VARIABLE = "PGJOBS_TESTING_CHECKPOINT"
"""The checkpoint a crash test's worker stops at (set in its environment only)."""

FIFO_VARIABLE = "PGJOBS_TESTING_CHECKPOINT_FIFO"
"""The FIFO through which that worker tells the test that the job reached it; the job then
waits on the FIFO of the same name with ``.go`` appended."""

_armed = os.environ.get(ARMED_VARIABLE)


def checkpoint(name: str) -> None:
    """Mark a point in a job where a crash test may kill its worker (see the testing guide).

    A no-op outside such a test, cheap enough for production code.
    """
    if _armed is not None and name == _armed:
        _stop_here(name)


def _stop_here(name: str) -> None:
    """Tell the waiting test, then wait until it lets the job go on (or kills the process);
    later runs in this process pass."""
    global _armed
    _armed = None
    path = os.environ[FIFO_VARIABLE]
    with open(path, "w") as fifo:
        fifo.write(f"{name} {os.getpid()}\n")
    with open(f"{path}.go") as go:
        go.readline()
