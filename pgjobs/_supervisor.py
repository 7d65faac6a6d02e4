"""``pgjobs worker --processes N``: N worker processes under one supervisor that runs no jobs.

Each child is ``python -m pgjobs … worker`` with the same arguments and a worker id the
supervisor chose, so when a child dies the supervisor gives that worker's jobs back at once, with
the exit status or signal as the reason, rather than waiting for the sweep. A job that keeps
killing its worker therefore ends ``discarded`` after ``max_attempts`` deaths.

Children run in their own process group: a terminal's Ctrl-C or a service manager reaches the
supervisor only, which forwards SIGTERM/SIGINT (so each child sees each signal once; with systemd
use ``KillMode=mixed``). If the supervisor itself dies, its children notice and stop gracefully.
With ``--burst`` a child that exits 0 (its queues are empty) is not replaced, and the supervisor
exits once all have.

Restarts (:func:`restart_delay`): each slot counts its own young deaths in a row (children that
died before :data:`LIVED_LONG`; one that lived longer resets the count). The first is restarted
at once; after that the slot waits 0.5 s, doubling to 10 s, so a child that cannot start (a bad
deploy, a broken import) costs a start every 10 s, not a hot loop. Back-off must not starve the
queue, though: a child killed by a signal from outside (SIGKILL from an operator or the OOM
killer, not a fault of its own such as SIGSEGV or SIGABRT) while no other slot has a child alive
is restarted at once, so the slots are never all waiting while jobs wait. A death by exit status
or by a fault signal gets no such exemption: a crash loop of the program itself waits out its
back-off even if every slot is in it. (A job that SIGKILLs its own process passes for a kill from
outside; its ``max_attempts`` bounds that loop.) A retired child (a job's thread overran its
timeout) is replaced at once and is no death.

Quiet (SIGTSTP, what ``systemctl reload`` sends with ``ExecReload=/bin/kill -TSTP $MAINPID``):
the supervisor passes it to its children, which stop claiming and finish their running jobs, and
stays up itself. Once quiet it replaces no child (a new one would claim nothing) and waits for
SIGTERM. Children start with SIGTSTP blocked, so one that is still starting when the signal
comes keeps it pending until its handler is in place, rather than being stopped by it.
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
from ._waits import wait_for_event
from ._worker import EXIT_RETIRED

log = logging.getLogger("pgjobs.supervisor")

WORKER_ID_VARIABLE = "PGJOBS_SUPERVISED_WORKER_ID"
"""Environment variable through which a child learns its worker id (and that it is supervised)."""

BACKOFF = (0.5, 10.0)
"""First and longest delay before restarting a slot whose child died young again."""

LIVED_LONG = 5.0
"""A child that ran this long before dying resets its slot's count of young deaths."""

OWN_FAULTS = frozenset(
    {
        signal.SIGABRT,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGSEGV,
        signal.SIGSYS,
        signal.SIGTRAP,
    }
)
"""Signals a process gets for a fault of its own: a death by one is a crash, not a kill."""


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
        self._quiet = False
        self._starting = asyncio.Lock()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._forward, signum)
        loop.add_signal_handler(signal.SIGTSTP, self._quieten)
        log.info("supervisor %s started: %s worker processes", os.getpid(), self._processes)
        try:
            await asyncio.gather(*(self._keep(slot) for slot in range(self._processes)))
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTSTP):
                loop.remove_signal_handler(signum)
        log.info("supervisor stopped")

    def _quieten(self) -> None:
        if self._quiet or self._stopping.is_set():
            return
        log.info(
            "supervisor: SIGTSTP; quieting %s worker(s): no new jobs, running ones finish; "
            "SIGTERM stops",
            len(self._children),
        )
        self._quiet = True
        for child in self._children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTSTP)

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
        young_deaths = 0
        while not self._stopping.is_set():
            worker_id = str(uuid.uuid4())
            child = await self._start_child(worker_id)
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
            if self._quiet:
                return await self._stay_quiet(slot)
            if status == EXIT_RETIRED:
                continue  # planned: replace it at once
            young_deaths = 0 if lived >= LIVED_LONG else young_deaths + 1
            pause = restart_delay(
                young_deaths,
                killed_from_outside=status < 0 and -status not in OWN_FAULTS,
                others_alive=bool(self._children),
            )
            log.info("restarting worker process %s in %.1f s", slot, pause)
            await wait_for_event(self._stopping, pause)
            if self._quiet:
                return await self._stay_quiet(slot)

    async def _stay_quiet(self, slot: int) -> None:
        """Leave ``slot`` empty until the stop: a new child would claim nothing."""
        log.info("not replacing worker process %s: quiet", slot)
        await self._stopping.wait()

    async def _start_child(self, worker_id: str) -> asyncio.subprocess.Process:
        """Start a child with SIGTSTP blocked: the worker unblocks it once it handles it, so a
        quiet request that comes while the child starts waits for it instead of stopping it."""
        async with self._starting:  # one at a time, or one would restore another's block
            unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTSTP})
            try:
                child = await asyncio.create_subprocess_exec(
                    *self._argv,
                    env={**os.environ, **self._env, WORKER_ID_VARIABLE: worker_id},
                    process_group=0,
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        if self._quiet:  # quieted while it started, before it was among the children
            child.send_signal(signal.SIGTSTP)
        return child

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


def restart_delay(young_deaths: int, *, killed_from_outside: bool, others_alive: bool) -> float:
    """Seconds to wait before restarting a slot whose child died.

    ``young_deaths``: the slot's deaths in a row before :data:`LIVED_LONG` of life, this one
    included (0 when this child lived longer). The first is restarted at once, then the delay
    doubles through :data:`BACKOFF`; a kill from outside while no other child is alive is
    restarted at once whatever the count, so that back-off never leaves the queue without a worker.
    """
    if young_deaths <= 1 or (killed_from_outside and not others_alive):
        return 0.0
    first, longest = BACKOFF
    return float(min(first * 2 ** (young_deaths - 2), longest))


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
