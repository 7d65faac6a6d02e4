"""Pausing queues, concurrency limits and rate limits, measured from a ledger the jobs write.

Workers are real ``pgjobs worker`` processes of ``tests/limits_app.py``. The rate test checks
10 starts per 2 s over about 8 s by default; ``PGJOBS_FAULTS=full`` adds 100 starts per minute
over about 3 minutes.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

import pgjobs
from pgjobs import _link
from pgjobs._grants import grant_statements
from pgjobs._migrate import _config
from pgjobs._queues import (
    MAX_LIMIT,
    MAX_RATE_PERIOD,
    MIN_RATE_PERIOD,
    QueueLimits,
    QueueView,
    check_limits,
    parse_rate,
    partition_key_of,
    split_limited_claim,
)
from pgjobs._refusals import Refusals
from tests import limits_app
from tests.helpers import WorkerProcess, claimed_since, count, eventually, invoke, rows, value

FULL = os.environ.get("PGJOBS_FAULTS") == "full"


@pytest.fixture
def app(database_url: str) -> Iterator[pgjobs.App]:
    limits_app.app.configure(database_url=database_url)
    yield limits_app.app
    limits_app.app.close()
    limits_app.close_connections()


@pytest.fixture
def start_worker(database_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        process = WorkerProcess.start(
            ["--app", "tests.limits_app:app", "worker", "--poll-interval", "1", *args],
            database_url=database_url,
            log=tmp_path / f"worker-{len(started)}.log",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def max_overlap(events: list[tuple[Any, str]]) -> int:
    """The most jobs running at once, from ``(at, "start" | "end")`` events (an end first when
    two share a time)."""
    running = peak = 0
    for _, event in sorted(events, key=lambda e: (e[0], e[1] == "start")):
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    return peak


def busiest_window(starts: list[float], period: float) -> int:
    """The most starts in any window of ``period`` seconds that begins at a start."""
    starts = sorted(starts)
    return max(sum(1 for t in starts if s <= t < s + period) for s in starts)


# pure parts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/1m", (100, 60.0)),
        ("100/m", (100, 60.0)),
        ("10/2s", (10, 2.0)),
        ("10 / 2", (10, 2.0)),
        ("5/1.5h", (5, 5400.0)),
        ("1/d", (1, 86400.0)),
    ],
)
def test_parse_rate(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "abc", "10", "10/", "0/1m", "-1/1m", "10/0s", "10/1w", "x/m", "1/0.0009s", "1/32d",
     "1/99999999999999999999999999999999999999d", "2147483648/1s"],
)  # fmt: skip
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(pgjobs.ValidationError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("concurrency", "rate", "partition", "field"),
    [
        (0, None, None, "concurrency"),
        (-1, None, None, "concurrency"),
        (True, None, None, "concurrency"),
        (2**31, None, None, "concurrency"),
        (None, (0, 60), None, "rate"),
        (None, (10, timedelta(0)), None, "rate"),
        (None, (10, -1.0), None, "rate"),
        (None, (10,), None, "rate"),
        (None, (1, float("inf")), None, "rate"),
        (None, (1, float("nan")), None, "rate"),
        (None, (1, 0.0009), None, "rate"),
        (None, (1, timedelta(microseconds=999)), None, "rate"),
        (None, (1, timedelta(days=31, microseconds=1)), None, "rate"),
        (None, (2**31, 1), None, "rate"),
        (5, None, "tenant", "partition_by"),
        (5, None, "key,job", "partition_by"),
    ],
)
def test_check_limits_refuses(concurrency: Any, rate: Any, partition: Any, field: str) -> None:
    with pytest.raises(pgjobs.ValidationError, match=field):
        check_limits(concurrency, rate, partition)


def test_check_limits() -> None:
    assert check_limits(5, (100, timedelta(minutes=1)), "job,key") == QueueLimits(
        5, 100, 60.0, "job,key"
    )
    assert check_limits(None, "10/2s", None) == QueueLimits(None, 10, 2.0, None)
    assert check_limits(None, (1, 0.001), None).rate_period == MIN_RATE_PERIOD
    assert check_limits(None, "1/31d", None).rate_period == MAX_RATE_PERIOD
    assert check_limits(MAX_LIMIT, (MAX_LIMIT, 1), None).limited
    assert not check_limits(None, None, "key").limited


def test_partition_key_of() -> None:
    def f(tenant: Any, n: int = 0, *, region: str = "eu") -> None: ...

    sig = inspect.signature(f)
    assert partition_key_of(sig, "tenant", ["acme"], {}) == "acme"
    assert partition_key_of(sig, "tenant", [42], {}) == "42"
    assert partition_key_of(sig, "tenant", [{"b": 1}], {}) == '{"b":1}'
    assert partition_key_of(sig, "tenant", [None], {}) is None
    assert partition_key_of(sig, "region", [1], {}) == "eu"
    with pytest.raises(pgjobs.ValidationError, match="partition_key"):
        partition_key_of(sig, "tenant", ["x" * 256], {})


def test_queue_view_and_claim_rows() -> None:
    view = QueueView.from_rows(
        ["b", "a", "c", "d"],
        [
            ("a", False, 5, None),
            ("b", False, None, 10),
            ("c", True, 5, None),
            ("d", False, None, None),
        ],
    )
    assert view.limited == ("b", "a")  # the worker's order; paused and unlimited ones are not
    assert view.rated == {"b"}  # its starts are confirmed
    job = (1, "a", "n", [], {}, 0, 1, 25, "token")
    jobs, free_in = split_limited_claim(
        [(*job, None), (None, "a", *[None] * 7, None), (None, "b", *[None] * 7, 1.5)]
    )
    assert jobs == [job] and free_in == 1.5
    assert split_limited_claim([(None, "a", *[None] * 7, -0.1)]) == ([], 0.0)


def test_refusals_set_queues_aside_and_log_once() -> None:
    refusals = Refusals(retry_after=5.0)
    assert not refusals
    assert refusals.refuse("a", "interval out of range", now=100.0)  # news: logged
    assert refusals.skipped(104.9) == {"a"}
    assert refusals.skipped(105.0) == set()  # a poll interval later: tried again
    assert not refusals.refuse("a", "interval out of range", now=105.0)  # the same: not again
    assert refusals.refuse("a", "integer out of range", now=105.0)  # another problem: logged
    assert refusals.refuse("b", "integer out of range", now=106.0)
    refusals.retry()  # settings changed: every queue set aside is tried at once
    assert refusals.skipped(106.0) == set()
    assert refusals.claimed(["a", "c"]) == ["a"]
    assert refusals.skipped(106.0) == set() and refusals
    assert refusals.claimed(["b"]) == ["b"] and not refusals


# declarations and bad input


def test_declarations_refuse_bad_limits() -> None:
    app = pgjobs.App()
    with pytest.raises(pgjobs.ConfigError, match="concurrency"):
        app.queue("api", concurrency=0)
    with pytest.raises(pgjobs.ConfigError, match="rate"):
        app.queue("api", rate=(100, timedelta(0)))
    with pytest.raises(pgjobs.ConfigError, match="rate"):
        app.queue("api", rate=(1, float("inf")))
    with pytest.raises(pgjobs.ConfigError, match="partition_by"):
        app.queue("api", concurrency=1, partition_by="tenant")
    with pytest.raises(pgjobs.ConfigError, match="queue"):
        app.queue("no spaces", concurrency=1)
    with pytest.raises(pgjobs.ConfigError, match="partition_by='tenant' is not one of"):

        @app.job(partition_by="tenant")
        def f(account: str) -> None: ...

    assert app.queue_limits == {}


def test_bad_limits_write_nothing(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    with psycopg.connect(str(app.settings.database_url)) as conn:
        bad: list[dict[str, Any]] = [
            {"concurrency": -1},
            {"rate": "10/0s"},
            {"rate": (1, float("inf"))},
            {"partition_by": "tenant"},
        ]
        for kwargs in bad:
            with pytest.raises(pgjobs.ValidationError):
                app.set_queue_limits("api", conn=conn, **kwargs)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the transaction is still usable
    for args in (
        ["--concurrency", "0"],
        ["--concurrency", "-1"],
        ["--rate", "abc"],
        ["--rate", "10/0s"],
        ["--rate", "1/32d"],
        ["--rate", "1/0.0001s"],
        ["--concurrency", "5", "--partition-by", "tenant"],
        ["--clear", "--concurrency", "5"],
        [],
    ):
        result = invoke(str(app.settings.database_url), "queue", "limit", "api", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("Error:"), result.stderr
    assert invoke(str(app.settings.database_url), "queue", "pause", "no spaces").returncode == 2
    assert count(db, "SELECT count(*) FROM pgjobs.queues") == 0


def test_limits_through_the_cli(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    url = str(app.settings.database_url)
    result = invoke(url, "queue", "limit", "api", "--concurrency", "3", "--rate", "100/1m",
                     "--partition-by", "job,key")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert rows(
        db, "SELECT concurrency, rate_limit, rate_period, partition FROM pgjobs.queues"
    ) == [(3, 100, 60.0, "job,key")]
    assert invoke(url, "queue", "pause", "api").returncode == 0
    listed = invoke(url, "queues")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split() == [
        "api",
        "yes",
        "3",
        "100/60s",
        "job,key",
        "0",
        "0",
    ]  # not held back: nothing waits
    db.execute("INSERT INTO pgjobs.queue_starts VALUES ('api', '', now()), ('other', '', now())")
    assert invoke(url, "queue", "limit", "api", "--clear").returncode == 0
    assert rows(db, "SELECT queue FROM pgjobs.queue_starts") == [("other",)]  # api's window went
    assert app.list_queues()[0] == pgjobs.QueueRecord(
        name="api",
        paused=True,  # limits never touch the pause
        concurrency=None,
        rate_limit=None,
        rate_period=None,
        partition=None,
        held_back=False,
        available=0,
        running=0,
    )


def test_enqueue_stores_the_partition_key(app: pgjobs.App, db: psycopg.Connection[Any]) -> None:
    """Each insert path (one job, a batch, COPY) stores the key; plain jobs store NULL."""
    one = limits_app.tenant_call.enqueue("acme", 0)
    explicit = limits_app.tenant_call.options(partition_key="vip").enqueue("acme", 0)
    batch = app.enqueue_many([limits_app.tenant_call.call("b\tx", 0), limits_app.api_call.call()])
    copied = app.enqueue_many([limits_app.tenant_call.call("c\\d\te", 0) for _ in range(600)])
    keys = dict(rows(db, "SELECT id, partition_key FROM pgjobs.jobs"))
    assert (keys[one], keys[explicit], keys[batch[0]], keys[batch[1]]) == (
        "acme",
        "vip",
        "b\tx",
        None,
    )
    assert {keys[i] for i in copied} == {"c\\d\te"}
    shown = app.get_job(explicit)
    assert shown is not None and shown.partition_key == "vip"  # as `pgjobs job ID` shows it
    with pytest.raises(pgjobs.ValidationError, match="partition_key"):
        limits_app.tenant_call.options(partition_key="")


# the limits at work


def test_concurrency_limit_per_key_holds_across_workers(
    app: pgjobs.App, db: psycopg.Connection[Any], start_worker: Callable[..., WorkerProcess]
) -> None:
    """3 processes x 50 slots, 5 per tenant: each tenant's overlap is exactly 5."""
    tenants = ["acme", "globex", "initech"]
    calls = [limits_app.tenant_call.call(t, 0.15) for _ in range(20) for t in tenants]
    ids = app.enqueue_many(calls)
    workers = [
        start_worker("--queues", "tenants", "--concurrency", "50", "--poll-interval", "30")
        for _ in range(3)
    ]
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'")
               == len(ids), timeout=30)  # fmt: skip
    for tenant in tenants:
        events = rows(db, "SELECT at, event FROM ledger WHERE label = %s", tenant)
        assert len(events) == 40
        assert max_overlap(events) == 5, tenant
        # 4 waves of 0.15 s: a wave starts when the last one's jobs end (their workers wake
        # the others), not at the next poll (every 30 s), which would stretch this past 90 s
        span = max(at for at, _ in events) - min(at for at, _ in events)
        assert span.total_seconds() < 10.0, (tenant, span)
    assert value(db, "SELECT max(attempt) FROM pgjobs.jobs") == 1  # waiting used no attempt
    assert value(db, "SELECT count(DISTINCT worker_id) FROM pgjobs.jobs") is not None
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0


def test_a_saturated_tenant_does_not_hide_another(
    app: pgjobs.App, db: psycopg.Connection[Any], start_worker: Callable[..., WorkerProcess]
) -> None:
    """10,000 jobs of one tenant ahead of 10 of another: the other's start at once."""
    app.enqueue_many([limits_app.tenant_call.call("big", 30) for _ in range(10_000)])
    start_worker("--queues", "tenants", "--concurrency", "20")
    eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE label = 'big'") == 5)
    app.enqueue_many([limits_app.tenant_call.call("small", 0.01) for _ in range(10)])
    # the big tenant's first jobs end after 30 s: the small one's start long before
    eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE label = 'small' "
                                 "AND event = 'end'") == 10, timeout=10)  # fmt: skip
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running' "
                     "AND partition_key = 'big'") == 5  # fmt: skip


def test_a_whole_queue_limit_holds_across_workers(
    app: pgjobs.App, db: psycopg.Connection[Any], start_worker: Callable[..., WorkerProcess]
) -> None:
    """3 processes x 50 slots, 5 for the whole queue: the overlap is exactly 5, and each wave
    starts when the last one ends, because the workers whose jobs ended wake the held ones."""
    app.set_queue_limits("serial", concurrency=5)  # as the workers will: they change nothing
    ids = app.enqueue_many([limits_app.serial_call.call(0.15) for _ in range(40)])
    db.execute('LISTEN "pgjobs.jobs"')
    for _ in range(3):
        start_worker("--queues", "serial", "--concurrency", "50", "--poll-interval", "30")
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'")
               == len(ids), timeout=30)  # fmt: skip
    events = rows(db, "SELECT at, event FROM ledger WHERE label = 'serial'")
    assert len(events) == 80
    assert max_overlap(events) == 5
    # 8 waves of 0.15 s; waiting for polls (every 30 s) instead of wake-ups would take minutes
    span = max(at for at, _ in events) - min(at for at, _ in events)
    assert span.total_seconds() < 10.0, span
    assert any(n.payload == "serial" for n in db.notifies(timeout=0.5))
    assert value(db, "SELECT held_back FROM pgjobs.queues WHERE name = 'serial'") is False


def test_a_limit_that_does_not_bind_wakes_nobody(
    app: pgjobs.App, db: psycopg.Connection[Any], start_worker: Callable[..., WorkerProcess]
) -> None:
    """A limit far above what runs: no claim holds a job back, so no ended job notifies."""
    app.set_queue_limits("roomy", concurrency=1_000_000)
    ids = app.enqueue_many([limits_app.roomy_call.call() for _ in range(400)])
    db.execute('LISTEN "pgjobs.jobs"')
    for _ in range(2):
        start_worker("--queues", "roomy", "--concurrency", "20")
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'")
               == len(ids), timeout=30)  # fmt: skip
    assert count(db, "SELECT count(*) FROM ledger WHERE label = 'roomy'") == 400
    assert [n.payload for n in db.notifies(timeout=0.5)] == []
    assert value(db, "SELECT held_back FROM pgjobs.queues WHERE name = 'roomy'") is False


def check_rate(
    app: pgjobs.App,
    db: psycopg.Connection[Any],
    start_worker: Callable[..., WorkerProcess],
    job: pgjobs.Job[..., None],
    starts: int,
    period: float,
    windows: int,
) -> None:
    app.enqueue_many([job.call(str(i)) for i in range(starts * windows)])
    for _ in range(2):
        start_worker("--queues", job.queue, "--concurrency", "20")
    eventually(lambda: count(db, "SELECT count(*) FROM ledger") == starts * windows,
               timeout=period * windows + 10)  # fmt: skip
    times = [
        t for (t,) in rows(db, "SELECT extract(epoch FROM at)::float8 FROM ledger ORDER BY at")
    ]
    # a job records its start a moment after its claim: windows a hair shorter than the period
    # absorb that lag, which differs from job to job
    assert busiest_window(times, period - 0.1) <= starts
    assert busiest_window(times, period) >= starts  # the limit is reached
    # N per period: the last batch starts (windows - 1) periods after the first
    assert period * (windows - 1) - 0.1 <= times[-1] - times[0] <= period * windows
    assert value(db, "SELECT max(attempt) FROM pgjobs.jobs") == 1
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state <> 'completed'")
               == 0)  # fmt: skip


RATES = [pytest.param(limits_app.api_call, 10, 2.0, 4, id="10-per-2s")] + (
    [pytest.param(limits_app.slow_api_call, 100, 60.0, 3, id="100-per-minute")] if FULL else []
)
"""(job, starts, period, windows): 10 per 2 s over 4 windows; with ``PGJOBS_FAULTS=full`` also
100 per minute over 3."""


@pytest.mark.parametrize(("job", "starts", "period", "windows"), RATES)
def test_rate_limit_sliding_window(
    app: pgjobs.App,
    db: psycopg.Connection[Any],
    start_worker: Callable[..., WorkerProcess],
    job: pgjobs.Job[..., None],
    starts: int,
    period: float,
    windows: int,
) -> None:
    """STARTS per PERIOD, on 2 workers: no window of PERIOD holds more than STARTS starts."""
    check_rate(app, db, start_worker, job, starts, period, windows)


def job_side_starts(db: psycopg.Connection[Any], *labels: str) -> list[float]:
    """The moments (epoch seconds) at which the jobs' own code started, optionally only of
    these labels, in order."""
    return [
        t
        for (t,) in rows(
            db,
            "SELECT extract(epoch FROM at)::float8 FROM ledger WHERE event = 'start' "
            "AND (cardinality(%s::text[]) = 0 OR label = ANY(%s::text[])) ORDER BY at",
            list(labels),
            list(labels),
        )
    ]


def test_a_rate_holds_at_the_edge_of_every_window_under_load(
    app: pgjobs.App, db: psycopg.Connection[Any], start_worker: Callable[..., WorkerProcess]
) -> None:
    """20 starts per second and a backlog of 6 seconds' worth, claimed by 3 workers while 2
    more burn through a plain queue on the same 2 cores: in no second (any second, sliding) do
    more than 20 jobs start, counted at the moments the jobs' own code started (sync and
    async), however late each claim landed or each job started after it."""
    app.enqueue_many(limits_app.busy_call.call() for _ in range(20_000))
    app.enqueue_many(
        (limits_app.paced_call if i % 2 else limits_app.async_paced_call).call(f"p{i}")
        for i in range(120)
    )
    for _ in range(2):
        start_worker("--queues", "busy", "--concurrency", "20")
    for _ in range(3):
        start_worker("--queues", "paced", "--concurrency", "20")
    eventually(lambda: len(job_side_starts(db)) == 120, timeout=40)
    times = job_side_starts(db)
    assert busiest_window(times, 1.0) == 20
    assert value(db, "SELECT max(attempt) FROM pgjobs.jobs WHERE queue = 'paced'") == 1


@pytest.mark.parametrize("partitioned", [False, True], ids=["whole-queue", "per-key"])
def test_a_rate_sustains_itself_without_waiting_for_polls(
    app: pgjobs.App,
    db: psycopg.Connection[Any],
    start_worker: Callable[..., WorkerProcess],
    partitioned: bool,
) -> None:
    """A backlog of 4 windows' worth under a rate (per key, for a partitioned queue), on workers
    with more free slots than a window's starts that poll only every 30 s: a claim that fills the
    window says when it frees, so each window's starts begin as the last one's end, not a poll
    later. Never above the rate (how close to it: ``pgjobs bench rate``)."""
    if partitioned:
        starts, labels = 10, ["acme", "globex"]
        calls = [limits_app.paced_key_call.call(t) for _ in range(4 * starts) for t in labels]
        queue = "paced_keys"
    else:
        starts, labels = 20, ["p"]
        calls = [limits_app.paced_call.call("p") for _ in range(4 * starts)]
        queue = "paced"
    app.enqueue_many(calls)
    for _ in range(2):
        start_worker("--queues", queue, "--concurrency", "50", "--poll-interval", "30")
    # a poll (30 s) between windows would take far longer than this
    eventually(lambda: len(job_side_starts(db)) == len(calls), timeout=15)
    for label in labels:
        times = job_side_starts(db, label)
        assert busiest_window(times, 1.0) == starts, label
        # the fourth window's starts begin 3 periods after the first's, not 3 polls
        assert times[-1] - times[0] < 10.0, (label, times[-1] - times[0])


def test_pause_and_resume(
    app: pgjobs.App, db: psycopg.Connection[Any], start_worker: Callable[..., WorkerProcess]
) -> None:
    """Paused by SQL while a job runs: it finishes, and the worker, woken to claim, starts
    nothing more; the CLI resumes, and the change wakes the worker, which polls only every 30 s;
    the pause survives a worker's restart."""
    url = str(app.settings.database_url)
    polls_seldom = ("--poll-interval", "30")
    worker = start_worker("--queues", "pausable", "--concurrency", "5", "--shutdown-timeout", "5",
                          *polls_seldom)  # fmt: skip
    first = limits_app.pausable.enqueue(0.5)
    eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE event = 'start'") == 1)
    db.execute("SELECT pgjobs.pause_queue('pausable')")
    paused_at = value(db, "SELECT clock_timestamp()")
    waiting = app.enqueue_many([limits_app.pausable.call(0.01) for _ in range(5)])
    eventually(lambda: value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", first)
               == "completed")  # fmt: skip
    # wake the worker as an enqueue does, and wait for the claim that sets off: it looked
    woken = value(db, "SELECT clock_timestamp()")
    db.execute("SELECT pg_notify(%s, 'pausable')", (app._queries.jobs_channel,))
    eventually(lambda: claimed_since(db, worker, woken))
    assert (
        count(db, "SELECT count(*) FROM ledger WHERE at > %s AND event = 'start'", paused_at) == 0
    )
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) AND state = 'available'",
                  waiting) == 5  # fmt: skip

    assert invoke(url, "queue", "resume", "pausable").returncode == 0
    # woken by the change: a poll would come 30 s later
    eventually(lambda: count(db, "SELECT count(*) FROM ledger WHERE event = 'end'") == 6)

    app.pause_queue("pausable")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    again = limits_app.pausable.enqueue(0.01)
    starting = value(db, "SELECT clock_timestamp()")
    restarted = start_worker("--queues", "pausable", *polls_seldom)
    # its first claim, at its start, left the job alone
    eventually(lambda: claimed_since(db, restarted, starting), timeout=20)
    assert value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", again) == "available"
    app.resume_queue("pausable")
    eventually(lambda: value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", again)
               == "completed")  # fmt: skip


def test_a_limit_costs_at_most_one_round_trip_per_claim(
    app: pgjobs.App, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst worker on a plain and a limited queue: each claim is CLAIM_JOBS, then
    CLAIM_LIMITED_JOBS; on plain queues alone, CLAIM_JOBS only; on limited ones alone,
    CLAIM_LIMITED_JOBS only. The settings are read at start and on a change."""
    statements: list[str] = []
    fetch = _link.Link.fetch

    async def counting(self: _link.Link, statement: str, params: dict[str, Any]) -> Any:
        statements.append(statement)
        return await fetch(self, statement, params)

    monkeypatch.setattr(_link.Link, "fetch", counting)
    q = app._queries
    app.enqueue_many([limits_app.tenant_call.call(t, 0.0) for t in "abcdefgh" for _ in range(5)])
    app.configure(database_url=app.settings.database_url, queues="pausable,tenants",
                  poll_interval=60.0)  # fmt: skip
    asyncio.run(pgjobs.Worker(app, burst=True).run())
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == 40
    claims = statements.count(q.claim_jobs)
    assert claims > 0
    assert statements.count(q.claim_limited_jobs) == claims
    assert statements.count(q.queue_settings) <= 2  # at start, and on its own limits' notice

    statements.clear()
    db.execute("DELETE FROM pgjobs.queues")
    limits_app.pausable.enqueue(0.0)
    app.configure(database_url=app.settings.database_url, queues="pausable", poll_interval=60.0)
    asyncio.run(pgjobs.Worker(app, burst=True).run())
    assert statements.count(q.claim_jobs) > 0
    assert statements.count(q.claim_limited_jobs) == 0  # a plain queue pays no second claim

    statements.clear()
    app.enqueue_many([limits_app.tenant_call.call("a", 0.0) for _ in range(3)])
    app.configure(database_url=app.settings.database_url, queues="tenants", poll_interval=60.0)
    asyncio.run(pgjobs.Worker(app, burst=True).run())
    assert statements.count(q.claim_limited_jobs) > 0
    assert statements.count(q.claim_jobs) == 0  # only limited queues: one statement per claim


# queue rows that cannot stop a worker


@pytest.fixture
def worker_role(server_url: str, database_url: str, db: psycopg.Connection[Any]) -> Iterator[str]:
    """A role with the worker's grants (and the ledger the tests' jobs write); its URL."""
    name = f"pgjobs_worker_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')
    try:
        db.execute(grant_statements("pgjobs", {"worker": [name]}).encode())
        db.execute(f'GRANT INSERT ON ledger TO "{name}"')
        parts = urlsplit(database_url)
        yield urlunsplit(parts._replace(netloc=f"{name}@{parts.netloc.rpartition('@')[2]}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'REVOKE ALL ON DATABASE "{parts.path[1:]}" FROM "{name}"')
        db.execute(f'DROP OWNED BY "{name}"')
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{name}"')


@pytest.mark.fresh_database
@pytest.mark.parametrize("period", ["Infinity", "-Infinity", "NaN", "0.0009", "2678401", "1e300"])
def test_the_table_refuses_a_period_out_of_range_from_a_worker_role(
    worker_role: str, db: psycopg.Connection[Any], period: str
) -> None:
    """The checks hold for plain SQL as for pgjobs: a worker role may write ``queues``, and what
    it writes must be a rate every claim can count."""
    db.execute("INSERT INTO pgjobs.queues (name, rate_limit, rate_period) VALUES ('set', 1, 1)")
    with psycopg.connect(worker_role, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="queues_rate_period"):
            conn.execute(
                "INSERT INTO pgjobs.queues (name, rate_limit, rate_period) VALUES ('api', 1, %s)",
                (period,),
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="queues_rate_period"):
            conn.execute(
                "UPDATE pgjobs.queues SET rate_period = %s::float8 WHERE name = 'set'", (period,)
            )
        for edge in (MIN_RATE_PERIOD, MAX_RATE_PERIOD):  # the range Python checks, no narrower
            conn.execute(
                "INSERT INTO pgjobs.queues (name, rate_limit, rate_period) VALUES ('edge', 1, %s)"
                " ON CONFLICT (name) DO UPDATE SET rate_period = excluded.rate_period",
                (edge,),
            )
    assert rows(db, "SELECT name, rate_period FROM pgjobs.queues ORDER BY name") == [
        ("edge", MAX_RATE_PERIOD),
        ("set", 1.0),
    ]


@pytest.mark.fresh_database
def test_a_worker_role_confirms_the_starts_of_a_rated_queue(
    app: pgjobs.App, worker_role: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The worker's grants (no UPDATE on queue_starts) suffice: its starts are confirmed, and
    none is left pending once its jobs have run."""
    role = urlsplit(worker_role).username
    assert not value(db, "SELECT has_table_privilege(%s, 'pgjobs.queue_starts', 'UPDATE')", role)
    app.enqueue_many(limits_app.paced_call.call(f"p{i}") for i in range(30))
    worker = WorkerProcess.start(
        ["--app", "tests.limits_app:app", "worker", "--queues", "paced"],
        database_url=worker_role,
        log=tmp_path / "worker.log",
    )
    try:
        eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'")
                   == 30, timeout=20)  # fmt: skip
        eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.queue_starts "
                                     "WHERE job_id IS NOT NULL") == 0)  # fmt: skip
        assert busiest_window(job_side_starts(db), 1.0) == 20
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()
        assert "permission denied" not in worker.output()
    finally:
        worker.kill()


@pytest.mark.fresh_database
def test_a_queue_row_the_claim_chokes_on_stops_nothing(
    app: pgjobs.App, db: psycopg.Connection[Any], start_worker: Callable[..., WorkerProcess]
) -> None:
    """A row from before the checks (or written past them) that the claim cannot count: the
    worker says so once, leaves that queue's jobs waiting, runs every other queue's, strands
    nothing; once the row is fixed, the queue's jobs run."""
    db.execute("ALTER TABLE pgjobs.queues DROP CONSTRAINT IF EXISTS queues_rate_period_range_check")
    db.execute("INSERT INTO pgjobs.queues (name, rate_limit, rate_period) "
               "VALUES ('hostile', 1, 'Infinity')")  # fmt: skip
    waiting = app.enqueue_many(
        [limits_app.paced_call.options(queue="hostile").call(f"h{i}") for i in range(3)]
    )
    others = app.enqueue_many(
        [limits_app.busy_call.call() for _ in range(50)]
        + [limits_app.serial_call.call(0.01) for _ in range(10)]
        + [limits_app.paced_call.call(f"p{i}") for i in range(10)]
    )
    worker = start_worker("--queues", "hostile,busy,serial,paced", "--concurrency", "10")
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) "
                                 "AND state = 'completed'", others) == len(others),
               timeout=20)  # fmt: skip
    # the refused queue is tried again every poll interval (each try is a claim the database
    # rolls back: 2 at the first, the whole and the queue alone), and the worker says no more
    refused = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    eventually(lambda: count(db, refused) >= 6, timeout=30)
    assert worker.process.poll() is None, worker.output()
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == 0
    assert rows(db, "SELECT DISTINCT state, attempt FROM pgjobs.jobs WHERE id = ANY(%s)",
                waiting) == [("available", 0)]  # fmt: skip
    refusals = [line for line in worker.output().splitlines() if "refuse" in line]
    assert len(refusals) == 1, worker.output()
    assert "interval out of range" in refusals[0], refusals

    db.execute("UPDATE pgjobs.queues SET rate_period = 60 WHERE name = 'hostile'")
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) "
                                 "AND state = 'completed'", waiting) == 1, timeout=10)  # fmt: skip
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'running'") == 0


def test_a_job_row_the_plain_claim_chokes_on_stops_nothing(
    app: pgjobs.App, db: psycopg.Connection[Any], start_worker: Callable[..., WorkerProcess]
) -> None:
    """No row of pgjobs' tables can stop a worker: a job whose attempt cannot be counted up
    makes its queue's claim fail; the other queues run, and the fixed job runs."""
    stuck = limits_app.paced_call.options(queue="odd").enqueue("odd")
    db.execute("UPDATE pgjobs.jobs SET attempt = 2147483647, max_attempts = 2147483647 "
               "WHERE id = %s", (stuck,))  # fmt: skip
    others = app.enqueue_many([limits_app.busy_call.call() for _ in range(30)])
    worker = start_worker("--queues", "odd,busy", "--concurrency", "10")
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.jobs WHERE id = ANY(%s) "
                                 "AND state = 'completed'", others) == len(others),
               timeout=20)  # fmt: skip
    assert worker.process.poll() is None, worker.output()
    assert value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", stuck) == "available"
    db.execute("UPDATE pgjobs.jobs SET attempt = 0 WHERE id = %s", (stuck,))
    # a job's row changes without a notification: the queue is tried again at the next poll
    eventually(lambda: value(db, "SELECT state FROM pgjobs.jobs WHERE id = %s", stuck)
               == "completed", timeout=10)  # fmt: skip
    refusals = [line for line in worker.output().splitlines() if "refuse" in line]
    assert len(refusals) == 1, worker.output()
    assert "integer out of range" in refusals[0], refusals


@pytest.mark.fresh_database
def test_the_migration_brings_rates_out_of_range_into_it(database_url: str) -> None:
    """Rows that the earlier checks let in are moved to the nearest period the new check allows
    (an endless period becomes the longest), so the migration cannot fail on them, and the
    check is then valid for every row."""
    script = ScriptDirectory.from_config(_config("pgjobs"))
    revision = next(r for r in script.walk_revisions() if r.path.endswith("_exact_rates.py"))
    engine = create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool
    )

    def migrate_to(target: str, down: bool) -> None:
        config = _config("pgjobs")
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, target)

    try:
        migrate_to(str(revision.down_revision), down=True)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO pgjobs.queues (name, concurrency, rate_limit, rate_period) VALUES "
                "('endless', NULL, 5, 'Infinity'), ('nan', NULL, 5, 'NaN'), "
                "('tiny', NULL, 5, 1e-9), ('huge', NULL, 5, 1e12), ('fine', 3, 5, 60), "
                "('unrated', 3, NULL, NULL)"
            )
        migrate_to("head", down=False)
    finally:
        engine.dispose()
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert dict(rows(conn, "SELECT name, rate_period FROM pgjobs.queues")) == {
            "endless": MAX_RATE_PERIOD,
            "nan": MAX_RATE_PERIOD,
            "tiny": MIN_RATE_PERIOD,
            "huge": MAX_RATE_PERIOD,
            "fine": 60.0,
            "unrated": None,
        }
        check = "SELECT convalidated FROM pg_constraint WHERE conname = %s"
        assert rows(conn, check, "queues_rate_period_range_check") == [(True,)]


# the claim functions, by SQL


def claim_v1(db: psycopg.Connection[Any], queue: str, limit: int = 10) -> list[tuple[Any, ...]]:
    """The previous release's claim, ``claim_limited_jobs()``, as its workers call it."""
    return rows(db, "SELECT id, free_in FROM pgjobs.claim_limited_jobs(%s, %s, gen_random_uuid())",
                [queue], limit)  # fmt: skip


def claim_v2(db: psycopg.Connection[Any], queue: str, limit: int = 10) -> list[tuple[Any, ...]]:
    return rows(db, "SELECT id, free_in FROM pgjobs.claim_limited_jobs_v2(%s, %s, "
                    "gen_random_uuid())", [queue], limit)  # fmt: skip


def test_the_previous_releases_claim_still_works_beside_this_ones(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """Rolling upgrades: the previous release's workers claim by ``claim_limited_jobs()``, which
    this schema keeps. Both count each other's starts in the same windows."""
    app.set_queue_limits("api", rate=(3, 60))
    app.enqueue_many(limits_app.api_call.options(queue="api").call() for _ in range(10))
    old = claim_v1(db, "api")
    assert len([i for i, _ in old if i is not None]) == 3
    assert claim_v2(db, "api") == [(None, pytest.approx(60, abs=1))]  # full: the old ones count
    app.set_queue_limits("other", rate=(2, 60))
    app.enqueue_many(limits_app.api_call.options(queue="other").call() for _ in range(10))
    new = claim_v2(db, "other")
    assert len([i for i, _ in new if i is not None]) == 2
    assert [i for i, _ in claim_v1(db, "other")] == [None]  # pending starts count for it too


def test_pending_starts_count_until_confirmed_then_for_one_period(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """A claim's starts stay pending (whatever their age) until the worker confirms them, which
    stamps them now; one whose job has ended unconfirmed is stamped by the next claim. The claim
    that fills a window says when it frees."""
    app.set_queue_limits("api", rate=(2, 1))
    app.enqueue_many(limits_app.api_call.options(queue="api").call() for _ in range(10))
    claimed = claim_v2(db, "api")
    ids = [i for i, _ in claimed if i is not None]
    assert len(ids) == 2
    assert claimed[-1] == (None, pytest.approx(1.0, abs=0.5))  # this claim filled the window
    pending = "SELECT count(*) FROM pgjobs.queue_starts WHERE job_id IS NOT NULL"
    assert count(db, pending) == 2
    db.execute("UPDATE pgjobs.queue_starts SET started_at = now() - interval '1 hour'")
    assert [i for i, _ in claim_v2(db, "api")] == [None]  # pending: they count at any age

    db.execute(app._queries.confirm_starts, {"ids": ids[:1]})
    confirmed = value(db, "SELECT started_at FROM pgjobs.queue_starts WHERE job_id IS NULL")
    assert confirmed > value(db, "SELECT max(attempted_at) FROM pgjobs.jobs")
    db.execute("UPDATE pgjobs.jobs SET state = 'completed', worker_id = NULL, "
               "finished_at = now() WHERE id = %s", (ids[1],))  # fmt: skip
    assert [i for i, _ in claim_v2(db, "api")] == [None]  # stamped now: still full
    assert count(db, pending) == 0
    db.execute("UPDATE pgjobs.queue_starts SET started_at = started_at - interval '1 second'")
    assert len([i for i, _ in claim_v2(db, "api") if i is not None]) == 2  # a period later
