"""Prometheus metrics: ``pgjobs metrics`` serves what the tables say, scraped over HTTP, behind
the dashboard's authentication and loopback rule; a database that cannot answer is reported as
``pgjobs_up 0``; each family names at most the busiest queues and job names."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import pgjobs
from pgjobs._stats import Tally
from pgjobs.metrics import registry
from tests import jobs_app
from tests.helpers import WorkerProcess, count, eventually, run_burst, run_cli, value


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(name, sorted labels): value}`` of a scrape."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_scrape_reports_jobs_latency_queues_and_workers(
    app: pgjobs.App, db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    waiting = app.enqueue_many([jobs_app.noop.call(str(i)) for i in range(3)])
    db.execute(
        "UPDATE pgjobs.jobs SET scheduled_at = now() - interval '90 seconds' WHERE id = %s",
        (waiting[0],),
    )
    jobs_app.noop.options(queue="later").enqueue_in(3600, "later")
    app.pause_queue("mailers")
    db.execute(
        "INSERT INTO pgjobs.workers (id, hostname, pid, queues, concurrency, expires_at) VALUES"
        " (gen_random_uuid(), 'a', 1, 'default', 20, now() + interval '1 minute'),"
        " (gen_random_uuid(), 'b', 2, 'default', 50, now() - interval '1 minute')"
    )
    server = WorkerProcess.start(
        ["metrics", "--port", "0"], database_url=database_url, log=tmp_path / "metrics.log"
    )
    try:
        url = serving_at(server)
        with urllib.request.urlopen(url, timeout=10) as got:
            assert got.status == 200
            scraped = samples(got.read().decode())
        port = url.split(":")[2].split("/")[0]
        for host in ("127.0.0.1.nip.io", "127.attacker.example", "localhost.", "user@127.0.0.1"):
            rebound = httpx.get(url, headers={"host": f"{host}:{port}"})
            assert rebound.status_code == 403 and "pgjobs_up" not in rebound.text, host
        assert httpx.get(url, headers={"host": f"localhost:{port}"}).status_code == 200
        assert httpx.get(url.replace("/metrics", "/")).status_code == 404
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        server.kill()
    assert "Traceback" not in server.output()
    assert scraped[("pgjobs_up", ())] == 1
    assert scraped[("pgjobs_jobs", (("queue", "default"), ("state", "available")))] == 3
    assert scraped[("pgjobs_jobs", (("queue", "default"), ("state", "running")))] == 0
    assert scraped[("pgjobs_jobs", (("queue", "later"), ("state", "scheduled")))] == 1
    assert scraped[("pgjobs_jobs", (("queue", "mailers"), ("state", "available")))] == 0
    assert 90 <= scraped[("pgjobs_queue_latency_seconds", (("queue", "default"),))] < 120
    assert scraped[("pgjobs_queue_latency_seconds", (("queue", "later"),))] == 0
    assert scraped[("pgjobs_queue_paused", (("queue", "mailers"),))] == 1
    assert scraped[("pgjobs_queue_held_back", (("queue", "mailers"),))] == 0
    assert scraped[("pgjobs_workers", ())] == 1  # the expired one is not alive
    assert scraped[("pgjobs_worker_slots", ())] == 20


def serving_at(server: WorkerProcess) -> str:
    """The URL of the metrics that a ``pgjobs metrics`` subprocess serves, once it says so."""
    server.wait_for_log("serving metrics on http://127.0.0.1:")
    match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", server.output())
    assert match is not None
    return match[0]


def test_pgjobs_metrics_refuses_to_listen_abroad_without_authentication(database_url: str) -> None:
    for args, env, message in (
        (["--host", "127.0.0.1.invalid"], {}, "without authentication"),
        (["--host", "0.0.0.0"], {}, "without authentication"),
        (["--user", "prom"], {}, "go together"),
        ([], {"PGJOBS_WEB_TOKEN": " " * 20}, "PGJOBS_WEB_TOKEN"),
        (["--user", "prom"], {"PGJOBS_WEB_PASSWORD": "aaaaaaaaaa"}, "PGJOBS_WEB_PASSWORD"),
    ):
        refused = run_cli(database_url, "metrics", "--port", "0", *args, env=env)
        assert refused.returncode == 2, args
        assert message in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.startswith("Error: ")


def test_pgjobs_metrics_with_a_token_or_a_password_lets_only_them_in(
    app: pgjobs.App, database_url: str, tmp_path: Path
) -> None:
    token = "a-long-random-token-0123456789"
    password = "s3cret-pass"
    servers = [
        WorkerProcess.start(["metrics", "--port", "0"], database_url=database_url,
                            log=tmp_path / "token.log", env={"PGJOBS_WEB_TOKEN": token}),
        WorkerProcess.start(["metrics", "--port", "0", "--user", "prom"], database_url=database_url,
                            log=tmp_path / "basic.log", env={"PGJOBS_WEB_PASSWORD": password}),
    ]  # fmt: skip
    try:
        with_token, with_password = (serving_at(server) for server in servers)
        stranger = httpx.get(with_token)
        assert stranger.status_code == 401 and "pgjobs_up" not in stranger.text
        assert stranger.headers["www-authenticate"].startswith("Bearer")
        bearer = {"authorization": f"Bearer {token}"}
        assert "pgjobs_up 1.0" in httpx.get(with_token, headers=bearer).text
        named = httpx.get(with_token, headers={**bearer, "host": "metrics.example.org"})
        assert named.status_code == 200  # behind authentication, any name the proxy gives
        assert httpx.get(with_token, headers={"authorization": "Bearer wrong"}).status_code == 401

        stranger = httpx.get(with_password)
        assert stranger.status_code == 401 and "pgjobs_up" not in stranger.text
        assert stranger.headers["www-authenticate"].startswith("Basic")
        assert "pgjobs_up 1.0" in httpx.get(with_password, auth=("prom", password)).text
        for guess in range(5):
            assert httpx.get(with_password, auth=("prom", f"guess-{guess}")).status_code == 401
        waits = httpx.get(with_password, auth=("prom", password))
        assert waits.status_code == 429 and int(waits.headers["retry-after"]) >= 1
        for server in servers:
            server.signal(signal.SIGTERM)
            assert server.wait() == 0
    finally:
        for server in servers:
            server.kill()
    for server in servers:
        assert "Traceback" not in server.output() and "sign-in refused" in server.output()
        assert token not in server.output() and "guess-" not in server.output()


def test_pgjobs_metrics_says_which_extras_it_needs(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "starlette").mkdir()
    (tmp_path / "starlette" / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = run_cli(database_url, "metrics", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2 and "pip install 'pgjobs[metrics,web]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_database_that_cannot_answer_is_pgjobs_up_0(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    app = pgjobs.App(database_url=f"postgresql://postgres:secret@127.0.0.1:{port}/test")
    try:
        scraped = samples(generate_latest(registry(app)).decode())
    finally:
        app.close()
    assert scraped == {("pgjobs_up", ()): 0}
    assert "cannot read the database" in caplog.text and "secret" not in caplog.text


def test_an_address_in_use_is_a_clear_error(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(database_url, "metrics", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli(database_url, "metrics", "--port", "70000").returncode == 2


def test_run_counts_and_durations_survive_restarts_and_the_fold(
    app: pgjobs.App, db: psycopg.Connection[Any], worker_process: Callable[..., WorkerProcess]
) -> None:
    """Counted by the statement that writes each outcome: a fresh worker adds to them, and the
    leader folding old minutes into totals changes no figure."""
    app.enqueue_many([jobs_app.noop.call(str(i)) for i in range(5)])
    jobs_app.always_fails.enqueue()  # retried twice at once, then discarded
    jobs_app.sleepy.enqueue(0.3)
    run_burst(app)
    jobs_app.noop.enqueue("after a restart")
    run_burst(app)

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(generate_latest(registry(app)).decode())

    def runs(name: str, outcome: str) -> float:
        key = (("name", name), ("outcome", outcome), ("queue", "default"))
        return scraped[("pgjobs_job_runs_total", key)]

    scraped = scrape()
    assert runs("noop", "completed") == 6
    assert (runs("always_fails", "retried"), runs("always_fails", "discarded")) == (2, 1)
    assert (
        scraped[("pgjobs_job_duration_seconds_bucket", (("le", "0.25"), ("name", "sleepy")))] == 0
    )
    assert scraped[("pgjobs_job_duration_seconds_bucket", (("le", "0.5"), ("name", "sleepy")))] == 1
    assert scraped[("pgjobs_job_duration_seconds_bucket", (("le", "+Inf"), ("name", "noop")))] == 6
    assert 0.3 <= scraped[("pgjobs_job_duration_seconds_sum", (("name", "sleepy"),))] <= 0.5

    db.execute("UPDATE pgjobs.job_stats SET minute = minute - interval '3 hours'")
    before = scraped
    worker_process(env={"PGJOBS_QUEUES": "nothing-here"})
    eventually(lambda: count(db, "SELECT count(*) FROM pgjobs.job_stats WHERE minute > '-infinity'")
               == 0)  # fmt: skip
    assert count(db, "SELECT count(*) FROM pgjobs.job_stats") == 4  # one per name and outcome
    scraped = scrape()
    assert {k: v for k, v in scraped.items() if k[0].startswith("pgjobs_job_")} == {
        k: v for k, v in before.items() if k[0].startswith("pgjobs_job_")
    }


def test_the_tally_buckets_runs_as_prometheus_le_and_merges_back() -> None:
    tally = Tally()
    for seconds in (0.005, 0.0051, 0.3, 1000.0):
        tally.add("default", "noop", "completed", seconds)
    tally.add("default", "noop", "retryable", 0.0)
    taken = tally.take()
    assert not tally
    tally.add("default", "noop", "completed", 0.001)
    tally.merge(taken)  # as after a refused addition
    params = tally.params(7)
    rows = sorted(
        zip(params["outcomes"], params["runs"], params["seconds"], params["buckets"], strict=True)
    )
    assert params["slot"] == 7 and params["queues"] == ["default"] * 2
    assert rows[0][:2] == ("completed", 5) and abs(rows[0][2] - 1000.3111) < 1e-9
    #                     <=5ms  <=10ms                    <=0.5s                     >300s
    assert rows[0][3] == "{2,1,0,0,0,0,1,0,0,0,0,0,0,0,1}"
    assert rows[1] == ("retried", 1, 0.0, "{1,0,0,0,0,0,0,0,0,0,0,0,0,0,0}")


def test_label_values_are_capped_and_the_rest_summed_so_that_totals_add_up(
    app: pgjobs.App, db: psycopg.Connection[Any]
) -> None:
    """Thousands of job names and hundreds of queues: each family names the busiest 100 and sums
    the others into one series labelled ``(other)``."""
    names, queues = 3000, 250
    db.execute(
        "INSERT INTO pgjobs.job_stats (minute, queue, name, outcome, slot, runs, seconds, buckets)"
        " SELECT '-infinity', 'q' || (i %% %(queues)s), 'job.' || i, o, 0, i + 1, i * 0.25,"
        "        ARRAY[i + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"
        " FROM generate_series(0, %(names)s - 1) AS i, unnest(ARRAY['completed', 'retried']) AS o",
        {"names": names, "queues": queues},
    )
    app.enqueue_many(
        [jobs_app.noop.options(queue=f"q{i}").call() for i in range(queues) for _ in range(i % 3)]
    )
    body = generate_latest(registry(app))
    scraped = samples(body.decode())
    assert len(body) < 400_000, len(body)
    from pgjobs.metrics import LABEL_VALUES, OTHER

    def values(family: str, label: str) -> set[str]:
        return {dict(k[1])[label] for k in scraped if k[0].startswith(family)}

    for family, label in (("pgjobs_jobs", "queue"), ("pgjobs_queue_latency_seconds", "queue"),
                          ("pgjobs_job_runs_total", "name"), ("pgjobs_job_runs_total", "queue"),
                          ("pgjobs_job_duration_seconds", "name")):  # fmt: skip
        assert len(values(family, label)) == LABEL_VALUES + 1 and OTHER in values(family, label)

    def total(family: str) -> float:
        return sum(v for k, v in scraped.items() if k[0] == family)

    assert total("pgjobs_job_runs_total") == value(db, "SELECT sum(runs) FROM pgjobs.job_stats")
    assert total("pgjobs_job_duration_seconds_count") == value(
        db, "SELECT sum(runs) FROM pgjobs.job_stats"
    )
    assert total("pgjobs_job_duration_seconds_sum") == value(
        db, "SELECT sum(seconds) FROM pgjobs.job_stats"
    )
    assert total("pgjobs_jobs") == count(db, "SELECT count(*) FROM pgjobs.jobs")
    busiest = (
        ("name", f"job.{names - 1}"),
        ("outcome", "completed"),
        ("queue", f"q{(names - 1) % queues}"),
    )
    assert scraped[("pgjobs_job_runs_total", busiest)] == names
    assert "job.0" not in values("pgjobs_job_runs_total", "name")


def test_queues_and_names_past_the_cap_are_one_series_of_their_sums_and_maxima() -> None:
    from pgjobs.metrics import OTHER, families, totals

    rows = [("jobs", "big", "available", 9.0), ("latency", "big", None, 1.0),
            ("jobs", "mid", "running", 5.0), ("paused", "mid", None, 0.0),
            ("jobs", "a", "available", 1.0), ("latency", "a", None, 30.0),
            ("paused", "a", None, 1.0), ("held_back", "a", None, 0.0),
            ("jobs", "b", "scheduled", 2.0), ("latency", "b", None, 7.0),
            ("paused", "idle", None, 0.0), ("workers", None, None, 1.0)]  # fmt: skip
    scraped = samples(generate_latest(Families(families(rows, limit=2))).decode())
    assert scraped[("pgjobs_jobs", (("queue", "big"), ("state", "available")))] == 9
    assert scraped[("pgjobs_jobs", (("queue", OTHER), ("state", "available")))] == 1
    assert scraped[("pgjobs_jobs", (("queue", OTHER), ("state", "scheduled")))] == 2
    assert scraped[("pgjobs_queue_latency_seconds", (("queue", OTHER),))] == 30
    assert scraped[("pgjobs_queue_paused", (("queue", OTHER),))] == 1
    assert scraped[("pgjobs_queue_paused", (("queue", "mid"),))] == 0
    assert {dict(k[1]).get("queue") for k in scraped} == {"big", "mid", OTHER, None}
    fast, slow = [1.0] + [0.0] * 14, [0.0] * 14 + [1.0]  # a run under 5 ms, one over 300 s
    both = [1.0] + [0.0] * 13 + [1.0]
    runs = [("default", "often", "completed", 10.0, 1.0, [10 * n for n in fast]),
            ("default", "seldom", "completed", 1.0, 2.0, slow),
            ("other", "rare", "discarded", 2.0, 4.0, both)]  # fmt: skip
    counted, durations = totals(runs, limit=1)
    assert {tuple(s.labels.values()): s.value for s in counted.samples} == {
        ("default", "often", "completed"): 10, ("default", OTHER, "completed"): 1,
        (OTHER, OTHER, "discarded"): 2,
    }  # fmt: skip
    sums = {s.labels["name"]: s.value for s in durations.samples if s.name.endswith("_sum")}
    assert sums == {"often": 1.0, OTHER: 6.0}
    other = {s.labels["le"]: s.value for s in durations.samples
             if s.name.endswith("_bucket") and s.labels["name"] == OTHER}  # fmt: skip
    assert (other["0.005"], other["300.0"], other["+Inf"]) == (1, 1, 3)


class Families(Collector):
    """A collector of fixed families, to expose them as a scrape would."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families
