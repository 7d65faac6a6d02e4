"""Database restarts, crashes, killed backends and half-open links under a running worker.

RELIABILITY.md R-09, R-10, N-01, N-02 (also as a real partition, where the driver's cancel
request is lost too) and N-03, plus two sharper cases: an enqueue whose connection dies
mid-statement, and finished jobs still awaiting their acknowledgement when the claim link
reconnects. Each test owns a PostgreSQL cluster it may restart or crash (see conftest.py), and
checks what really ran in the ledger the test jobs write, not only pgjobs' own tables.

Sizes: by default the CI subset runs: one fast restart, probed 3 s after recovery.
``PGJOBS_FAULTS=full`` runs the full plan: three fast restarts 20 s apart, each probed 10 s after
recovery. The half-open claim/ack test takes about 45 s either way (pgjobs' 30 s statement
timeout). Measured figures are printed for the release notes (``pytest -s``).

The load job is ``flaky(0)``: it never fails by itself and, unlike ``noop``, is retried at once.
A restart also breaks the job threads' own ledger connections, so the first ledger write on each
fails once; that attempt is then retried in milliseconds instead of Sidekiq's 16 s. The tests
check that this is the only kind of failure the jobs saw.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import psycopg
import pytest

import pgjobs
from tests import jobs_app
from tests.faults.cluster import Cluster
from tests.faults.proxy import FaultProxy
from tests.helpers import WorkerProcess, eventually

pytestmark = pytest.mark.faults

StartWorker = Callable[..., WorkerProcess]

FULL = os.environ.get("PGJOBS_FAULTS") == "full"
RESTARTS = 3 if FULL else 1
RESTART_SPACING = 20.0
"""Seconds between the starts of two restarts (full size)."""
PROBE_AFTER = 10.0 if FULL else 3.0
"""Seconds after the server accepts connections again before LISTEN is probed."""
RATE = 200.0
"""Enqueues per second of the steady stream."""
CONCURRENCY = 10
CONNECT_TIMEOUT = 2.0
PROBES = 3
LISTEN_LATENCY = 0.2
STATEMENT_TIMEOUT = 30.0
"""pgjobs' documented limit for an unanswered statement before its link is replaced."""
CHECKER = "pgjobs-faults-checker"
"""application_name of the test's own connections, which no fault matches."""


def fetch_one(url: str, query: str, *params: Any) -> tuple[Any, ...]:
    """One row from a new connection (a restart breaks any connection kept across it)."""
    with psycopg.connect(url, autocommit=True, application_name=CHECKER) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row


def db_now(url: str) -> datetime:
    now: datetime = fetch_one(url, "SELECT clock_timestamp()")[0]
    return now


@dataclass(frozen=True)
class Failure:
    """An enqueue call that raised."""

    kind: type[BaseException]
    message: str
    began: float
    """``time.monotonic()`` when the call began."""
    seconds: float

    @property
    def name(self) -> str:
        return f"{self.kind.__module__}.{self.kind.__qualname__}"


class Load:
    """A thread enqueuing ``flaky(0)`` at ``rate`` per second through the app's own pool.

    Only ids whose enqueue returned count as committed. A failed call is recorded with its
    type and duration, and the stream goes on at once.
    """

    def __init__(self, rate: float) -> None:
        self.period = 1.0 / rate
        self.committed: list[int] = []
        self.failures: list[Failure] = []
        self._stop = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._busy = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="enqueue-load")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._flowing.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the enqueue thread hangs"

    def pause(self) -> None:
        """Stop enqueuing; returns once no enqueue is in flight."""
        self._flowing.clear()
        with self._busy:
            pass

    def resume(self) -> None:
        self._flowing.set()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self._flowing.is_set():
                self._flowing.wait()
                next_at = time.monotonic()
                continue
            with self._busy:
                if not self._flowing.is_set():  # paused since the check above
                    continue
                began = time.monotonic()
                try:
                    job_id = jobs_app.flaky.enqueue(0)
                except Exception as exc:
                    seconds = time.monotonic() - began
                    self.failures.append(Failure(type(exc), str(exc).strip(), began, seconds))
                    next_at = time.monotonic()
                else:
                    self.committed.append(job_id)
                    next_at += self.period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)


def missing_from_ledger(url: str, ids: list[int]) -> int:
    """Committed jobs with no run in the ledger: lost (once everything should have run)."""
    return int(
        fetch_one(
            url,
            "SELECT count(*) FROM unnest(%s::bigint[]) AS e(id)"
            " WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.job_id = e.id)",
            ids,
        )[0]
    )


def not_completed(url: str, ids: list[int]) -> int:
    return int(
        fetch_one(
            url,
            "SELECT count(*) FROM unnest(%s::bigint[]) AS e(id) WHERE NOT EXISTS"
            " (SELECT 1 FROM pgjobs.jobs j WHERE j.id = e.id AND j.state = 'completed')",
            ids,
        )[0]
    )


def all_done(url: str, ids: list[int]) -> bool:
    return missing_from_ledger(url, ids) == 0 and not_completed(url, ids) == 0


def job_errors_other_than_ledger_writes(url: str, ids: list[int]) -> list[str]:
    """Errors recorded on these jobs that are not a ledger write on a connection the fault broke.

    Those are the test job's own connection, not pgjobs: any other error is pgjobs' doing.
    """
    row = fetch_one(
        url,
        """
        SELECT coalesce(array_agg(e ->> 'class' || ': ' || (e ->> 'message')), '{}')
        FROM pgjobs.jobs j, jsonb_array_elements(j.errors) AS e
        WHERE j.id = ANY(%s)
          AND NOT (e ->> 'class' LIKE 'psycopg.%%'
                   AND e ->> 'traceback' LIKE '%%jobs_app.py", line %%, in record%%')
        """,
        ids,
    )
    errors: list[str] = row[0]
    return errors


def rerun_counts(url: str, ids: list[int]) -> tuple[int, int]:
    """(jobs with more than one attempt, jobs with more than one ledger row)."""
    row = fetch_one(
        url,
        """
        SELECT (SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND attempt > 1),
               (SELECT count(*) FROM (SELECT job_id FROM ledger WHERE job_id = ANY(%s)
                                      GROUP BY job_id HAVING count(*) > 1) AS twice)
        """,
        ids,
        ids,
    )
    return int(row[0]), int(row[1])


def attempts_started_twice(url: str) -> list[tuple[int, int]]:
    """(job, attempt) pairs that started more than once by the ledger.

    A new run always counts a new attempt, except a hand-back, which gives the attempt back:
    so a pair that started twice is a job handed back after it had run.
    """
    row = fetch_one(
        url,
        """
        SELECT coalesce(array_agg(ARRAY[job_id, attempt]), '{}') FROM (
            SELECT job_id, attempt FROM ledger WHERE event = 'start'
            GROUP BY job_id, attempt HAVING count(*) > 1) AS twice
        """,
    )
    return [(int(job), int(attempt)) for job, attempt in row[0]]


def probe_latency(url: str) -> float | None:
    """Seconds from a probe job's commit to the start of its first attempt, by the ledger.

    The timestamp is taken just before COMMIT, so the figure can only be longer than the truth.
    ``None`` when the first attempt's ledger write itself failed on a connection the fault broke
    (the job is then retried at once, but the first start was not recorded).
    """
    with psycopg.connect(url, application_name=CHECKER) as conn:
        (job_id,) = jobs_app.app.enqueue_many([jobs_app.flaky.call(0)], conn=conn)
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        committed: datetime = row[0]
    attempt, started = eventually(
        lambda: fetch_one(
            url, "SELECT attempt, at FROM ledger WHERE job_id = %s ORDER BY at LIMIT 1", job_id
        ),
        timeout=15,
    )
    if attempt != 1:
        assert job_errors_other_than_ledger_writes(url, [job_id]) == []
        return None
    return float((started - committed).total_seconds())


def probe_latencies(url: str, count: int = PROBES) -> list[float]:
    """``count`` probe latencies, one after another (a probe that hit a broken ledger
    connection is replaced; each thread's broken connection can do that once)."""
    latencies: list[float] = []
    for _ in range(count + CONCURRENCY):
        latency = probe_latency(url)
        if latency is not None:
            latencies.append(latency)
        if len(latencies) == count:
            return latencies
    raise AssertionError(f"only {len(latencies)} probes recorded their first attempt")


def logged(worker: WorkerProcess, text: str) -> int:
    return worker.output().count(text)


def wait_for_log_count(worker: WorkerProcess, text: str, count: int, timeout: float) -> None:
    """Wait until ``text`` appears ``count`` times in the worker's log."""

    def seen() -> bool:
        assert worker.process.poll() is None, f"worker exited:\n{worker.output()}"
        return logged(worker, text) >= count

    eventually(seen, timeout, interval=0.01)


def first_start_after(url: str, moment: datetime) -> float:
    """Seconds from ``moment`` to the first ledger start after it."""
    row = eventually(
        lambda: fetch_one(url, "SELECT min(at) FROM ledger WHERE at > %s", moment)[0], timeout=20
    )
    return float((row - moment).total_seconds())


def run_under_load(
    url: str, worker: WorkerProcess, fault: Callable[[], datetime], faults: int
) -> tuple[Load, list[dict[str, Any]]]:
    """Run ``faults`` faults under the steady stream; after each, time the recovery and probe
    LISTEN. ``fault`` returns the database time at which the server accepted connections again.
    """
    cycles: list[dict[str, Any]] = []
    with Load(RATE) as load:
        eventually(lambda: len(load.committed) >= 400 and all_done(url, load.committed[:200]))
        for n in range(1, faults + 1):
            listened = logged(worker, "listening on")
            began = time.monotonic()
            ready_at = fault()
            ready = time.monotonic()
            resumed = first_start_after(url, ready_at)
            wait_for_log_count(worker, "listening on", listened + 1, timeout=15)
            relisten = time.monotonic() - ready
            time.sleep(max(0.0, ready + PROBE_AFTER - time.monotonic()))  # the plan's wait
            load.pause()
            eventually(lambda: all_done(url, load.committed), timeout=30)
            latencies = probe_latencies(url)
            load.resume()
            cycles.append(
                {
                    "outage": ready - began,
                    "resumed": resumed,
                    "relisten": relisten,
                    "probes": latencies,
                }
            )
            if n < faults:
                time.sleep(max(0.0, began + RESTART_SPACING - time.monotonic()))
    return load, cycles


def report(name: str, load: Load, cycles: list[dict[str, Any]]) -> None:
    for n, c in enumerate(cycles, 1):
        print(
            f"{name} #{n}: server back {c['outage']:.2f} s after the fault began; first job "
            f"started {c['resumed']:.2f} s after it accepted connections; LISTEN back within "
            f"{c['relisten']:.2f} s; probes " + ", ".join(f"{x * 1000:.1f} ms" for x in c["probes"])
        )
    slowest = max((f.seconds for f in load.failures), default=0.0)
    kinds = sorted({f.name for f in load.failures})
    print(
        f"{name}: {len(load.committed)} jobs committed, {len(load.failures)} enqueue calls "
        f"failed (slowest {slowest:.2f} s; {', '.join(kinds) or 'none'})"
    )


def check_no_loss(url: str, worker: WorkerProcess, load: Load, faults: int) -> None:
    ids = load.committed
    with contextlib.suppress(AssertionError):
        eventually(lambda: all_done(url, ids), timeout=60)
    assert missing_from_ledger(url, ids) == 0
    assert not_completed(url, ids) == 0
    assert job_errors_other_than_ledger_writes(url, ids) == []
    restarted, duplicated = rerun_counts(url, ids)
    print(f"re-run jobs: {restarted} with attempt > 1, {duplicated} with 2+ ledger rows")
    assert attempts_started_twice(url) == []  # no job that had run was handed back
    # a job re-runs after a completed ledger write only when that write's answer was lost
    assert duplicated <= CONCURRENCY * faults
    assert fetch_one(url, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == (0,)
    assert worker.process.poll() is None, worker.output()


def test_fast_restart_under_load_loses_nothing_and_listen_comes_back(
    cluster: Cluster, jobs_url: str, start_worker: StartWorker
) -> None:
    """R-09: ``pg_ctl restart -m fast`` pauses the worker; it must not lose, hang or exit."""
    jobs_app.app.configure(database_url=jobs_url, connect_timeout=CONNECT_TIMEOUT)
    worker = start_worker(jobs_url, "--poll-interval", "5", "--concurrency", str(CONCURRENCY))
    worker.wait_for_log("listening on")

    def restart() -> datetime:
        cluster.restart("fast")
        return db_now(jobs_url)

    load, cycles = run_under_load(jobs_url, worker, restart, RESTARTS)

    report("fast restart", load, cycles)
    for c in cycles:
        assert c["resumed"] <= 10.0
        assert max(c["probes"]) <= LISTEN_LATENCY, c["probes"]
    assert max((f.seconds for f in load.failures), default=0.0) <= CONNECT_TIMEOUT + 1.0
    check_no_loss(jobs_url, worker, load, RESTARTS)
    assert logged(worker, "session connection lost") >= RESTARTS


def test_crash_then_start_after_5s_keeps_every_committed_job_and_enqueue_fails_fast(
    cluster: Cluster, jobs_url: str, start_worker: StartWorker
) -> None:
    """R-10: after ``-m immediate`` every acknowledged enqueue is still there and runs, and
    enqueue calls while the server is down fail within ``connect_timeout`` with
    ``pgjobs.DatabaseError`` instead of hanging."""
    jobs_app.app.configure(database_url=jobs_url, connect_timeout=CONNECT_TIMEOUT)
    worker = start_worker(jobs_url, "--poll-interval", "5", "--concurrency", str(CONCURRENCY))
    worker.wait_for_log("listening on")
    down: list[float] = []

    def crash() -> datetime:
        cluster.stop("immediate")
        down.append(time.monotonic())
        time.sleep(5.0)  # the plan: down for 5 s
        down.append(time.monotonic())
        cluster.start()
        return db_now(jobs_url)

    load, cycles = run_under_load(jobs_url, worker, crash, 1)

    report("crash", load, cycles)
    while_down = [f for f in load.failures if down[0] <= f.began < down[1]]
    cut_off = [f for f in load.failures if f.began < down[0]]
    print(
        f"crash: {len(while_down)} enqueue calls made while the server was down failed, slowest "
        f"{max((f.seconds for f in while_down), default=0):.2f} s; {len(cut_off)} cut off "
        f"mid-call ({', '.join(f.name for f in cut_off) or 'none'})"
    )
    c = cycles[0]
    assert c["resumed"] <= 10.0
    assert max(c["probes"]) <= LISTEN_LATENCY, c["probes"]
    missing = fetch_one(
        jobs_url,
        "SELECT count(*) FROM unnest(%s::bigint[]) AS e(id)"
        " WHERE NOT EXISTS (SELECT 1 FROM pgjobs.jobs j WHERE j.id = e.id)",
        load.committed,
    )
    assert missing == (0,)  # every acknowledged enqueue survived the crash
    persistence = "SELECT relpersistence FROM pg_class WHERE oid = 'pgjobs.jobs'::regclass"
    assert fetch_one(jobs_url, persistence) == ("p",)  # a logged table: crash-safe
    assert while_down  # 5 s down: the stream did meet the outage
    assert max(f.seconds for f in load.failures) <= CONNECT_TIMEOUT + 1.0, load.failures
    wrong = [f for f in while_down if not issubclass(f.kind, pgjobs.DatabaseError)]
    assert wrong == [], wrong
    check_no_loss(jobs_url, worker, load, 1)


def test_enqueue_whose_connection_dies_mid_statement_raises_database_error(
    cluster: Cluster, jobs_url: str
) -> None:
    """The outage can also begin during a call: that call must fail as pgjobs.DatabaseError too,
    like one made while the server is down, not as a driver error the caller never expected."""
    jobs_app.app.configure(database_url=jobs_url, connect_timeout=CONNECT_TIMEOUT)
    jobs_app.noop.enqueue("warm")  # the pool holds a live connection now
    outcome: list[BaseException | int] = []

    def enqueue() -> None:
        try:
            outcome.append(jobs_app.noop.enqueue("cut"))
        except Exception as exc:
            outcome.append(exc)

    with psycopg.connect(jobs_url, application_name=CHECKER) as blocker:
        blocker.execute("LOCK TABLE pgjobs.jobs IN EXCLUSIVE MODE")  # the INSERT waits on it
        caller = threading.Thread(target=enqueue)
        caller.start()
        try:
            eventually(
                lambda: (
                    fetch_one(
                        jobs_url,
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name = 'pgjobs-client' AND wait_event_type = 'Lock'",
                    )
                    == (1,)
                )
            )
            assert cluster.terminate_backends("pgjobs-client") == 1
        finally:
            caller.join(10)
        blocker.rollback()
    assert not caller.is_alive()
    (result,) = outcome
    print(f"enqueue cut off mid-statement raised {type(result).__module__}.{type(result).__name__}")
    assert isinstance(result, pgjobs.DatabaseError), repr(result)


def session_backends(url: str) -> list[int]:
    row = fetch_one(
        url,
        "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity"
        " WHERE application_name LIKE 'pgjobs-worker:%%:session'",
    )
    pids: list[int] = row[0]
    return pids


def test_killed_listener_backend_is_replaced_within_5s_and_listen_works_again(
    cluster: Cluster, jobs_url: str, start_worker: StartWorker
) -> None:
    """N-01: a terminated session backend must not leave the worker deaf to notifications."""
    worker = start_worker(jobs_url, "--poll-interval", "5")
    worker.wait_for_log("listening on")
    before = probe_latencies(jobs_url, 1)
    (old,) = eventually(lambda: session_backends(jobs_url))

    assert cluster.terminate_backends("pgjobs-worker:%:session") == 1
    killed = time.monotonic()

    new = eventually(lambda: [p for p in session_backends(jobs_url) if p != old], timeout=5)
    replaced = time.monotonic() - killed
    wait_for_log_count(worker, "listening on", 2, timeout=5)
    relisten = time.monotonic() - killed
    latencies = probe_latencies(jobs_url)
    print(
        f"session backend killed: new backend after {replaced:.2f} s, LISTEN again after "
        f"{relisten:.2f} s; probes " + ", ".join(f"{x * 1000:.1f} ms" for x in latencies)
    )
    assert len(new) == 1
    assert "session connection lost" in worker.output()
    assert max(before + latencies) <= LISTEN_LATENCY, (before, latencies)
    assert worker.process.poll() is None


def test_half_open_listener_is_replaced_within_15s_and_polling_covers_the_gap(
    cluster: Cluster, jobs_url: str, fault_proxy: FaultProxy, start_worker: StartWorker
) -> None:
    """N-02: a session link that silently stops answering (no FIN, no RST) is detected by the
    heartbeat's timeout and replaced; until then polling keeps jobs flowing."""
    poll = 1.0
    worker = start_worker(fault_proxy.url_for(jobs_url), "--poll-interval", str(poll))
    worker.wait_for_log("listening on")
    ids = jobs_app.app.enqueue_many(jobs_app.noop.call(f"before-{i}") for i in range(20))
    eventually(lambda: all_done(jobs_url, ids))

    assert fault_proxy.blackhole(":session") == 1
    fault_proxy.heal()  # the worker's next session connection gets through
    cut = time.monotonic()

    with psycopg.connect(jobs_url, application_name=CHECKER) as conn:
        (probe,) = jobs_app.app.enqueue_many([jobs_app.noop.call("during")], conn=conn)
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        committed: datetime = row[0]
    (started,) = eventually(
        lambda: fetch_one(jobs_url, "SELECT at FROM ledger WHERE job_id = %s", probe)
    )
    during = (started - committed).total_seconds()
    half_open = "session connection lost" not in worker.output()  # still on the dead link
    ids.append(probe)

    wait_for_log_count(worker, "session connection lost (no answer within", 1, timeout=15)
    detected = time.monotonic() - cut
    wait_for_log_count(worker, "listening on", 2, timeout=max(0.1, 15 - detected))
    relisten = time.monotonic() - cut
    ids += jobs_app.app.enqueue_many(jobs_app.noop.call(f"after-{i}") for i in range(20))
    eventually(lambda: all_done(jobs_url, ids))

    print(
        f"half-open session: probe during the blackhole started {during:.3f} s after commit "
        f"(poll {poll:g} s); lost detected after {detected:.2f} s, LISTEN again after "
        f"{relisten:.2f} s"
    )
    assert half_open
    assert during <= poll + 0.5
    assert relisten <= 15.0
    sessions = [state for name, state in fault_proxy.connections() if name.endswith(":session")]
    assert sorted(sessions) == ["blackholed", "open"]
    assert missing_from_ledger(jobs_url, ids) == 0
    assert worker.process.poll() is None


def test_half_open_listener_is_replaced_within_15s_when_cancel_requests_are_lost_too(
    cluster: Cluster, jobs_url: str, fault_proxy: FaultProxy, start_worker: StartWorker
) -> None:
    """N-02 as a real partition: a timed-out query makes the driver send a cancel request on a
    new connection to the same server, and when the server is unreachable that is lost as well.
    The 15 s bound must hold without it."""
    worker = start_worker(
        fault_proxy.url_for(jobs_url), "--poll-interval", "1", "--concurrency", "1"
    )
    worker.wait_for_log("listening on")
    warm = jobs_app.noop.enqueue("warm")  # the one job thread opens its ledger connection now
    eventually(lambda: all_done(jobs_url, [warm]))
    armed = threading.Event()

    def unreachable(name: str) -> bool:
        if name.endswith(":session"):
            return not armed.is_set()  # the live session link; its successor gets through
        return name == "" and armed.is_set()  # cancel requests carry no application_name

    assert fault_proxy.blackhole(unreachable) == 1
    armed.set()
    cut = time.monotonic()

    wait_for_log_count(worker, "session connection lost", 1, timeout=25)
    detected = time.monotonic() - cut
    wait_for_log_count(worker, "listening on", 2, timeout=5)
    relisten = time.monotonic() - cut
    ids = jobs_app.app.enqueue_many(jobs_app.noop.call(f"after-{i}") for i in range(10))
    eventually(lambda: all_done(jobs_url, [warm, *ids]))

    print(
        f"half-open session, cancel requests lost: lost detected after {detected:.2f} s, "
        f"LISTEN again after {relisten:.2f} s"
    )
    # pgjobs cuts a link that stopped answering rather than asking the server to cancel
    assert ("", "blackholed") not in fault_proxy.connections()
    assert worker.process.poll() is None
    assert relisten <= 15.0, worker.output()[-2000:]


def test_jobs_awaiting_acknowledgement_are_not_handed_back_when_the_claim_link_breaks(
    cluster: Cluster, jobs_url: str, fault_proxy: FaultProxy, start_worker: StartWorker
) -> None:
    """A claim retried on a new connection hands back this worker's jobs that it does not know
    of. Jobs that ran to their end but whose acknowledgement is still on its way (the ack link
    is stuck) are known: handing them back would run them a second time. (Their four slots stay
    taken until the outcomes are written; the fifth takes the job that meets the broken link.)"""
    worker = start_worker(
        fault_proxy.url_for(jobs_url), "--concurrency", "5", "--poll-interval", "5"
    )
    worker.wait_for_log("listening on")
    warm = jobs_app.noop.enqueue("warm")  # its acknowledgement opens the (lazy) ack link
    eventually(lambda: all_done(jobs_url, [warm]))
    ids = jobs_app.app.enqueue_many(jobs_app.sleepy.call(1, "acked-late") for _ in range(4))
    eventually(lambda: fetch_one(jobs_url, "SELECT count(*) FROM ledger") == (5,))

    assert fault_proxy.blackhole(":ack") == 1  # the outcomes cannot be written for now
    fault_proxy.heal()
    ended = "SELECT count(*) FROM ledger WHERE event = 'end' AND job_id = ANY(%s)"
    eventually(lambda: fetch_one(jobs_url, ended, ids) == (4,))
    assert fault_proxy.reset(":claim") == 1
    more = jobs_app.noop.enqueue("wakes the producer")  # its claim meets the broken link
    eventually(lambda: missing_from_ledger(jobs_url, [more]) == 0)
    worker.wait_for_log(":claim: connection lost")
    ids.append(more)
    assert fault_proxy.reset(":ack") == 1  # the outcomes go out on a new connection
    eventually(lambda: all_done(jobs_url, ids))

    starts = fetch_one(
        jobs_url, "SELECT count(*) FROM ledger WHERE event = 'start' AND job_id = ANY(%s)", ids
    )
    print(f"jobs awaiting acknowledgement across a claim reconnect: {starts[0]} starts of 5 jobs")
    assert starts == (5,), worker.output()[-3000:]
    assert "acknowledgement changed nothing" not in worker.output()
    assert worker.process.poll() is None


def test_half_open_claim_and_ack_links_recover_after_the_statement_timeout(
    cluster: Cluster, jobs_url: str, fault_proxy: FaultProxy, start_worker: StartWorker
) -> None:
    """N-03: claim and ack links that stop answering mid-flight are replaced once a statement
    has gone unanswered for the 30 s statement timeout; the jobs in flight are acknowledged,
    none is lost or run twice."""
    worker = start_worker(
        fault_proxy.url_for(jobs_url), "--concurrency", "4", "--poll-interval", "1"
    )
    worker.wait_for_log("listening on")
    warm = jobs_app.noop.enqueue("warm")  # its acknowledgement opens the (lazy) ack link
    eventually(lambda: all_done(jobs_url, [warm]))
    ids = jobs_app.app.enqueue_many(jobs_app.sleepy.call(3, "n03") for _ in range(8))
    eventually(lambda: fetch_one(jobs_url, "SELECT count(*) FROM ledger") == (5,))

    roles = (":claim", ":ack")
    assert fault_proxy.blackhole(lambda name: name.endswith(roles)) == 2
    fault_proxy.heal()
    cut = time.monotonic()

    recovered: dict[str, float] = {}
    for role in roles:
        wait_for_log_count(worker, f"{role}: connection lost (no answer within", 1, timeout=45)
        recovered[role] = time.monotonic() - cut
    eventually(lambda: all_done(jobs_url, ids), timeout=30)
    done = time.monotonic() - cut

    print(
        "half-open claim/ack: "
        + ", ".join(f"{role[1:]} replaced after {s:.1f} s" for role, s in recovered.items())
        + f"; all 8 jobs completed {done:.1f} s after the cut"
    )
    states = {
        role: sorted(state for name, state in fault_proxy.connections() if name.endswith(role))
        for role in roles
    }
    assert states == {":claim": ["blackholed", "open"], ":ack": ["blackholed", "open"]}
    runs = fetch_one(
        jobs_url,
        "SELECT count(*) FILTER (WHERE event = 'start'), count(*) FILTER (WHERE event = 'end'),"
        " count(DISTINCT job_id), max(attempt) FROM ledger WHERE job_id = ANY(%s)",
        ids,
    )
    assert runs == (8, 8, 8, 1)  # each job ran once, to its end; none was rescued
    assert re.search(r"swept|presumed lost", worker.output()) is None
    assert fetch_one(jobs_url, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == (0,)
    assert worker.process.poll() is None
    # The stager's promotion goes out on the claim link within a poll interval (1 s) of the cut;
    # the first acknowledgement within 3 s (the running jobs last 3 s). Each is then replaced
    # after the 30 s statement timeout, give or take a second.
    assert recovered[":claim"] <= 1 + STATEMENT_TIMEOUT + 1, recovered
    assert recovered[":ack"] <= 3 + STATEMENT_TIMEOUT + 1, recovered
