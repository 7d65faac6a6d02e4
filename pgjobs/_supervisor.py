"""``pgjobs worker --processes N``: N worker processes under one supervisor that runs no jobs.

Each child is ``python -m pgjobs … worker`` with the same arguments and a worker id the
supervisor chose, so when a child dies the supervisor gives that worker's jobs back at once, with
the exit status or signal as the reason, rather than waiting for the sweep. A job that keeps
killing its worker therefore ends ``discarded`` after ``max_attempts`` deaths.

Children run in their own process group: a terminal's Ctrl-C or a service manager reaches the
supervisor only, which forwards SIGTERM/SIGINT (so each child sees each signal once; with systemd
use ``KillMode=mixed``). A child that dies is restarted after a back-off that doubles from 1 s to
10 s while children keep dying young and resets once one lives 5 s; a retired child (a
job's thread overran its timeout) is replaced at once. If the supervisor itself dies, its
children notice and stop gracefully. With ``--burst`` a child that exits 0 (its queues are empty)
is not replaced, and the supervisor exits once all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence

import psycopg

from ._connection import connect_async
from ._errors import DatabaseError
from ._leader import rescue
from ._settings import Settings
from ._sql import queries_for
from ._waits import Backoff, wait_for_event
from ._worker import EXIT_RETIRED

log = logging.getLogger("pgjobs.supervisor")

WORKER_ID_VARIABLE = "PGJOBS_SUPERVISED_WORKER_ID"
"""Environment variable through which a child learns its worker id (and that it is supervised)."""

BACKOFF = (1.0, 10.0)
"""First and longest delay before restarting a child that died."""

LIVED_LONG = 5.0
"""A child that ran this long before dying resets the back-off."""


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        processes: int,
        argv: Sequence[str],
        *,
        burst: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._env = dict(env or {})  # for what the command line must not show, e.g. passwords
        self._processes = processes
        self._burst = burst
        self._argv = [sys.executable, "-m", "pgjobs", *argv]
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._forward, signum)
        log.info("supervisor %s started: %s worker processes", os.getpid(), self._processes)
        try:
            await asyncio.gather(*(self._keep(slot) for slot in range(self._processes)))
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        log.info("supervisor stopped")

    def _forward(self, signum: int) -> None:
        log.info(
            "supervisor: %s; passing it to %s worker(s)",
            signal.Signals(signum).name,
            len(self._children),
        )
        self._stopping.set()
        for child in self._children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    async def _keep(self, slot: int) -> None:
        """Keep one child running in ``slot`` until the supervisor stops."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(*BACKOFF)
        while not self._stopping.is_set():
            worker_id = str(uuid.uuid4())
            child = await asyncio.create_subprocess_exec(
                *self._argv,
                env={**os.environ, **self._env, WORKER_ID_VARIABLE: worker_id},
                process_group=0,
            )
            self._children[slot] = child
            started = loop.time()
            status = await child.wait()
            del self._children[slot]
            lived = loop.time() - started
            if status == 0 and (self._stopping.is_set() or self._burst):
                return
            reason = _describe(status)
            log.warning(
                "worker process %s (%s) %s after %.1f s", child.pid, worker_id, reason, lived
            )
            await self._release(worker_id, reason)
            if self._stopping.is_set():
                return
            if status == EXIT_RETIRED:
                continue  # planned: replace it at once
            if lived >= LIVED_LONG:
                backoff.reset()
            pause = backoff.take()
            log.info("restarting worker process %s in %.0f s", slot, pause)
            await wait_for_event(self._stopping, pause)

    async def _release(self, worker_id: str, reason: str) -> None:
        """Give a dead child's jobs back now; if the database is unreachable, the sweep will."""
        try:
            async with await connect_async(self._settings, "pgjobs-supervisor") as conn:
                _, rescued, discarded = await rescue(
                    conn,
                    queries_for(self._settings.schema),
                    sweeper_id=None,
                    worker_id=worker_id,
                    reason=f"its process {reason}",
                )
        except (DatabaseError, psycopg.Error) as exc:
            log.warning("could not release the jobs of worker %s: %s", worker_id, exc)
            return
        if rescued:
            log.warning(
                "released %s job(s) of worker %s (%s discarded on their last attempt)",
                rescued,
                worker_id,
                discarded,
            )


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def supervised_worker_id() -> str | None:
    """The worker id a supervisor gave this process, if it is a supervised child."""
    return os.environ.get(WORKER_ID_VARIABLE)
