"""Least privilege: real roles given what ``pgjobs grants`` prints can do their work and no more.

Roles belong to the whole server, so each test makes its own, with random names, and drops them
after. The tests' database (and its pgjobs tables) is owned by the server's superuser.
"""

from __future__ import annotations

import json
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import pgjobs
from pgjobs._encoding import insert_params
from pgjobs._errors import ConfigError
from pgjobs._grants import grant_statements
from pgjobs._validation import MAX_PAYLOAD_BYTES
from tests import jobs_app
from tests.helpers import WorkerProcess, count, eventually, invoke, rows, run_cli, value

pytestmark = pytest.mark.fresh_database  # each test grants to roles of its own in its database

KINDS = ("enqueuer", "worker", "inspector")


@dataclass(frozen=True)
class Roles:
    enqueuer: str
    worker: str
    inspector: str
    database_url: str

    def url(self, kind: str) -> str:
        """The test database's URL, logging in as the role of ``kind`` (trust auth)."""
        role = getattr(self, kind)
        parts = urlsplit(self.database_url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


def apply(db: psycopg.Connection[Any], *args: str) -> str:
    """Run ``pgjobs grants ARGS`` and execute what it prints, as psql would; return the text."""
    result = invoke(None, *args)
    assert result.returncode == 0, result.stderr
    db.execute(result.stdout.encode())
    return result.stdout


def burst_as_worker(roles: Roles, log: Path) -> WorkerProcess:
    """Run a burst worker as the worker role until the queues are empty; it must exit 0."""
    worker = WorkerProcess.start(
        ["--app", "tests.jobs_app:app", "worker", "--burst"],
        database_url=roles.url("worker"),
        log=log,
    )
    try:
        assert worker.wait(timeout=120) == 0, worker.output()
    finally:
        worker.kill()
    return worker


@pytest.fixture
def roles(server_url: str, database_url: str, db: psycopg.Connection[Any]) -> Iterator[Roles]:
    """An enqueuer, a worker and an inspector role, with their grants in this test's database."""
    suffix = uuid.uuid4().hex[:10]
    names = {kind: f"pgjobs_{kind}_{suffix}" for kind in KINDS}
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f'CREATE ROLE "{name}" LOGIN')
    try:
        apply(db, "grants", *(f"--{kind}={name}" for kind, name in names.items()))
        db.execute(f'GRANT INSERT ON ledger TO "{names["worker"]}"')  # the tests' jobs write it
        yield Roles(**names, database_url=database_url)
    finally:
        jobs_app.app.close()
        jobs_app.close_ledger_connections()
        quoted = ", ".join(f'"{name}"' for name in names.values())
        db.execute(f"DROP OWNED BY {quoted}")  # their privileges, in the only database they had
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {quoted}")


def test_statements_quote_role_names_and_follow_the_schema() -> None:
    text = grant_statements("jobs_here", {"enqueuer": ['web "app"'], "inspector": ["grafana"]})
    assert (
        'GRANT INSERT, SELECT (id, unique_key, state, unique_states) ON "jobs_here".jobs '
        'TO "web ""app""";'
    ) in text
    assert 'GRANT USAGE ON SEQUENCE "jobs_here".jobs_id_seq TO "web ""app""";' in text
    assert 'TO "grafana";' in text
    assert "UPDATE" not in text and "DELETE" not in text
    with pytest.raises(ConfigError, match="at least one role"):
        grant_statements("pgjobs", {"worker": []})
    with pytest.raises(ConfigError, match="not a PostgreSQL name"):
        grant_statements("pgjobs", {"worker": ["x" * 64]})


def test_grants_without_a_role_is_a_usage_error() -> None:
    result = invoke(None, "grants")
    assert result.returncode == 2
    assert "name at least one role" in result.stderr
    assert "Traceback" not in result.stderr


def test_enqueuer_enqueues_one_many_and_by_copy(roles: Roles, db: psycopg.Connection[Any]) -> None:
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    notified: list[str] = []
    with psycopg.connect(roles.database_url, autocommit=True) as listener:
        listener.add_notify_handler(lambda notify: notified.append(notify.payload))
        listener.execute('LISTEN "pgjobs.jobs"')
        one = jobs_app.noop.enqueue("one")
        later = jobs_app.noop.enqueue_in(timedelta(hours=1), "later")
        many = jobs_app.app.enqueue_many([jobs_app.noop.call(f"many {i}") for i in range(10)])
        copied = jobs_app.app.enqueue_many([jobs_app.noop.call(f"copy {i}") for i in range(600)])
        # the insert notification still wakes workers: once per enqueue of available jobs
        eventually(lambda: listener.execute("SELECT 1") and len(notified) == 3)
    assert notified == ["default"] * 3
    ids = [one, later, *many, *copied]
    assert len(set(ids)) == 612
    assert rows(db, "SELECT state, count(*) FROM pgjobs.jobs GROUP BY state ORDER BY state") == [
        ("available", 611),
        ("scheduled", 1),
    ]
    assert value(db, "SELECT array_agg(id ORDER BY id) FROM pgjobs.jobs") == sorted(ids)


FORGED = {
    "running": "state, worker_id, attempt) VALUES ('noop', 'running', gen_random_uuid(), 1)",
    "completed": "state, attempt, finished_at) VALUES ('noop', 'completed', 1, now())",
    "retryable": "state, attempt, errors) VALUES ('noop', 'retryable', 1, '[{}]')",
    "attempted": "attempt) VALUES ('noop', 3)",
    "claimed": "claim_token) VALUES ('noop', gen_random_uuid())",
    "errors": "errors) VALUES ('noop', '[{\"message\": \"forged\"}]')",
    "finished": "finished_at) VALUES ('noop', now())",
}


@pytest.mark.parametrize("columns", FORGED.values(), ids=FORGED.keys())
def test_enqueuer_cannot_insert_a_job_that_is_not_new(
    roles: Roles, db: psycopg.Connection[Any], columns: str
) -> None:
    with psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may insert only new jobs"):
            enqueuer.execute(f"INSERT INTO pgjobs.jobs (name, {columns}")
        # and not hidden among new jobs in one statement
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may insert only new jobs"):
            enqueuer.execute(
                f"WITH fresh AS (INSERT INTO pgjobs.jobs (name) VALUES ('noop')) "
                f"INSERT INTO pgjobs.jobs (name, {columns}"
            )
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 0
    db.execute(f"INSERT INTO pgjobs.jobs (name, {columns}")  # the table's owner may


def test_enqueuer_cannot_slip_past_the_guard_with_functions_of_its_own(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    """A role that may create functions somewhere names one as the guard's, first in its path."""
    db.execute(f'CREATE SCHEMA own AUTHORIZATION "{roles.enqueuer}"')
    with psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer:
        enqueuer.execute(
            "CREATE FUNCTION own.pg_has_role(name, oid, text) RETURNS boolean "
            "LANGUAGE sql AS 'SELECT true'"
        )
        enqueuer.execute("SET search_path = own, pg_catalog")
        assert enqueuer.execute("SELECT pg_has_role(current_user, 10, 'MEMBER')").fetchone() == (
            True,
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may insert only new jobs"):
            enqueuer.execute(f"INSERT INTO pgjobs.jobs (name, {FORGED['completed']}")
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_enqueuer_cannot_copy_a_finished_job(roles: Roles, db: psycopg.Connection[Any]) -> None:
    with (
        psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="may insert only new jobs"),
        enqueuer.cursor().copy("COPY pgjobs.jobs (name, state, attempt) FROM STDIN") as copy,
    ):
        for i in range(600):
            copy.write_row(("noop", "completed" if i == 599 else "available", 1 if i == 599 else 0))
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_enqueuer_cannot_change_delete_or_read_jobs_nor_read_workers(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    job_id = value(db, "INSERT INTO pgjobs.jobs (name) VALUES ('noop') RETURNING id")
    with psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer:
        for statement in (
            "UPDATE pgjobs.jobs SET state = 'completed', finished_at = now()",
            "DELETE FROM pgjobs.jobs",
            "SELECT args FROM pgjobs.jobs",
            "SELECT count(*) FROM pgjobs.workers",
            f"SELECT pgjobs.cancel_job({job_id})",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                enqueuer.execute(statement)
    assert rows(db, "SELECT state, finished_at FROM pgjobs.jobs") == [("available", None)]


LIMIT = MAX_PAYLOAD_BYTES
"""``args`` and ``kwargs`` together, as PostgreSQL prints them."""


@pytest.mark.parametrize("kind", ["enqueuer", "worker"])
def test_plain_sql_arguments_over_the_limit_are_refused(
    roles: Roles, db: psycopg.Connection[Any], kind: str
) -> None:
    insert = "INSERT INTO pgjobs.jobs (name, args) VALUES ('noop', %s::jsonb)"
    fits = json.dumps(["x" * (LIMIT - len('[""]') - len("{}"))])
    over = json.dumps(["x" * (LIMIT - len('[""]') - len("{}") + 1)])
    with psycopg.connect(roles.url(kind), autocommit=True) as conn:
        conn.execute(insert, (fits,))
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            conn.execute(insert, (over,))
    assert re.fullmatch(
        rf"job \d+ \(noop\): its arguments are {LIMIT + 1} bytes as text, "
        rf"over the {LIMIT}-byte limit",
        str(refused.value.diag.message_primary),
    )
    assert refused.value.diag.constraint_name == "jobs_arguments_size_check"
    assert (
        refused.value.diag.message_hint
        == "Store large data in a table of your own and pass its id."
    )
    assert value(db, "SELECT octet_length(args::text) + 2 FROM pgjobs.jobs") == LIMIT


def test_worker_role_runs_jobs_to_completion(
    roles: Roles, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    ids = jobs_app.app.enqueue_many([jobs_app.noop.call(f"job {i}") for i in range(20)])
    retried = jobs_app.always_fails.enqueue()
    worker = burst_as_worker(roles, tmp_path / "worker.log")
    assert count(db, "SELECT count(*) FROM ledger WHERE label LIKE 'job %%'") == 20
    assert rows(db, "SELECT state, count(*) FROM pgjobs.jobs GROUP BY 1 ORDER BY 1") == [
        ("completed", len(ids)),
        ("discarded", 1),
    ]
    assert value(db, "SELECT attempt FROM pgjobs.jobs WHERE id = %s", retried) == 3
    assert "Traceback" not in worker.output() and "permission denied" not in worker.output()


def test_inspector_reads_through_the_cli_and_cannot_write(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    job_id = value(
        db, "INSERT INTO pgjobs.jobs (name, queue) VALUES ('noop', 'mailers') RETURNING id"
    )
    url = roles.url("inspector")
    stats = invoke(url, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout) == {"mailers": {"available": 1}}
    listed = invoke(url, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [job_id]
    workers = invoke(url, "workers", "--json")
    assert workers.returncode == 0 and workers.stdout == "", workers.stderr
    with psycopg.connect(url, autocommit=True) as inspector:
        for statement in (
            "INSERT INTO pgjobs.jobs (name) VALUES ('noop')",
            "UPDATE pgjobs.jobs SET priority = 1",
            "DELETE FROM pgjobs.workers",
            f"SELECT pgjobs.cancel_job({job_id})",
            "INSERT INTO pgjobs.leases (name, worker_id, expires_at) "
            "VALUES ('leader', gen_random_uuid(), now())",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                inspector.execute(statement)
    assert rows(db, "SELECT state, priority FROM pgjobs.jobs") == [("available", 0)]


@pytest.fixture
def owned(server_url: str, empty_database_url: str) -> Iterator[Roles]:
    """A schema migrated by a migrator role that owns it (not a superuser), and an enqueuer: the
    migrator stands in the worker's place, as in a single-role setup."""
    migrator, enqueuer = (f"pgjobs_{kind}_{uuid.uuid4().hex[:10]}" for kind in KINDS[:2])
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{migrator}" LOGIN; CREATE ROLE "{enqueuer}" LOGIN')
    roles = Roles(enqueuer, migrator, "", empty_database_url)
    try:
        with psycopg.connect(empty_database_url, autocommit=True) as db:
            apply(db, "grants", "--migrator", migrator)
            migrated = run_cli(roles.url("worker"), "migrate")
            assert migrated.returncode == 0, migrated.stderr
            apply(db, "grants", "--enqueuer", enqueuer)
        yield roles
    finally:
        jobs_app.app.close()
        with psycopg.connect(empty_database_url, autocommit=True) as db:
            db.execute("DROP SCHEMA IF EXISTS pgjobs CASCADE")
            db.execute(f'DROP OWNED BY "{migrator}", "{enqueuer}"')
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{migrator}", "{enqueuer}"')


def test_migrator_owns_what_it_migrates_and_may_insert_any_job(owned: Roles) -> None:
    migrator = owned.worker
    with psycopg.connect(owned.database_url, autocommit=True) as db:
        assert value(db, "SELECT tableowner FROM pg_tables WHERE tablename = 'jobs'") == migrator
    with psycopg.connect(owned.url("worker"), autocommit=True) as owner:
        owner.execute(f"INSERT INTO pgjobs.jobs (name, {FORGED['completed']}")
    with (
        psycopg.connect(owned.url("enqueuer"), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="Only the owner") as refused,
    ):
        conn.execute(f"INSERT INTO pgjobs.jobs (name, {FORGED['completed']}")
    assert refused.value.diag.message_hint == (
        f"Only the owner of pgjobs.jobs ({migrator}) and its members may insert other jobs."
    )


def test_batches_work_under_the_enqueuer_worker_and_inspector_grants(
    roles: Roles, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    with jobs_app.app.batch(
        on_success=jobs_app.batch_callback.call("on_success"),
        on_complete=jobs_app.batch_callback.call("on_complete"),
    ) as batch:
        batch.enqueue_many([jobs_app.batch_member.call(), jobs_app.batch_grows.call(2, 0.0)])
    with jobs_app.app.batch(on_complete=jobs_app.batch_callback.call("empty")) as empty:
        pass  # sealed empty: the enqueuer's seal enqueues the callback
    worker = burst_as_worker(roles, tmp_path / "worker.log")
    assert "permission denied" not in worker.output()
    assert rows(
        db, "SELECT label, event FROM ledger WHERE label LIKE 'batch_callback:%%' ORDER BY 2, 1"
    ) == [
        ("batch_callback:on_complete", str(batch.id)),
        ("batch_callback:on_success", str(batch.id)),
        ("batch_callback:empty", str(empty.id)),
    ]
    shown = invoke(roles.url("inspector"), "batch", str(batch.id), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["succeeded"] == 4
    with (
        psycopg.connect(roles.url("inspector"), autocommit=True) as inspector,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
    ):
        inspector.execute(f"SELECT pgjobs.seal_batch({batch.id})")
    with psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer:
        for statement in (
            "UPDATE pgjobs.batches SET pending = 0, failed = 0",
            "SELECT total FROM pgjobs.batches",
            f"SELECT pgjobs.settle_batch({batch.id})",
            f"SELECT pgjobs.count_batch_job({batch.id}, 1, 0, 0, 1)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                enqueuer.execute(statement)
    assert rows(db, "SELECT total, pending, failed FROM pgjobs.batches ORDER BY id") == [
        (4, 0, 0),
        (0, 0, 0),
    ]


def batch_counters(db: psycopg.Connection[Any], batch_id: int) -> tuple[Any, ...]:
    """``(total, pending, failed)`` of a batch, read as the tables' owner."""
    found = rows(db, "SELECT total, pending, failed FROM pgjobs.batches WHERE id = %s", batch_id)
    return found[0]


def fired_callbacks(db: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    """``(label, batch id, runs)`` of every callback job that ran."""
    return rows(
        db,
        "SELECT label, event, count(*)::int FROM ledger WHERE label LIKE 'batch_callback:%%'"
        " GROUP BY label, event ORDER BY event, label",
    )


def victim_batch(size: int) -> int:
    """A sealed batch of ``size`` jobs with both callbacks, made by the enqueuer's app."""
    with jobs_app.app.batch(
        on_success=jobs_app.batch_callback.call("on_success"),
        on_complete=jobs_app.batch_callback.call("on_complete"),
    ) as batch:
        batch.enqueue_many([jobs_app.batch_member.call() for _ in range(size)])
    return batch.id


FORGE_COUNTING = (
    "SELECT set_config('pgjobs.counting_batch', %(batch)s, false),"
    " set_config('pgjobs.adding_batch', %(batch)s, false)"
)
"""Name a batch in the settings that tell the row trigger that a statement counts its own jobs
(the previous release's, and this one's): any role may set any setting."""

FORGED_COUNTS = {
    "count_added_jobs": ("SELECT pgjobs.count_added_jobs(%(id)s, 1000000)", 0),
    "insert": ("INSERT INTO pgjobs.jobs (name, batch_id) VALUES ('batch_member', %(id)s)", 1),
}
"""What a role does with the settings forged, and how many jobs that adds to the batch."""


@pytest.mark.parametrize("forgery", FORGED_COUNTS, ids=FORGED_COUNTS.keys())
@pytest.mark.parametrize("kind", ["enqueuer", "worker"])
def test_a_forged_counting_setting_does_not_change_another_batchs_counters(
    roles: Roles, db: psycopg.Connection[Any], tmp_path: Path, kind: str, forgery: str
) -> None:
    """With the settings naming someone else's batch, neither count_added_jobs() nor a plain
    insert into that batch escapes the count: the batch's callbacks fire once, after its last
    job, and no acknowledgement breaks the counters' check."""
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    victim = victim_batch(2)
    statement, added = FORGED_COUNTS[forgery]
    with psycopg.connect(roles.url(kind), autocommit=True) as forger:
        forger.execute(FORGE_COUNTING, {"batch": str(victim)})
        forger.execute(statement, {"id": victim})
    total = 2 + added
    assert batch_counters(db, victim) == (total, total, 0)
    worker = burst_as_worker(roles, tmp_path / "worker.log")
    assert "batches_counters_check" not in worker.output()
    assert fired_callbacks(db) == [
        ("batch_callback:on_complete", str(victim), 1),
        ("batch_callback:on_success", str(victim), 1),
    ]
    assert batch_counters(db, victim) == (total, 0, 0)
    assert count(db, "SELECT count(*) FROM ledger WHERE label = 'batch_member'") == total
    members_finished, callbacks_started = rows(
        db,
        "SELECT (SELECT max(finished_at) FROM pgjobs.jobs WHERE name = 'batch_member'),"
        " (SELECT min(attempted_at) FROM pgjobs.jobs WHERE name = 'batch_callback')",
    )[0]
    assert members_finished <= callbacks_started


PREVIOUS_INSERT_BATCH_JOBS = """
WITH batch AS (
    SELECT finished_at, set_config(%(counting_setting)s, %(batch_id)s::text, true)
    FROM "pgjobs".lock_batch(%(batch_id)s::bigint)
), inserted AS (
    INSERT INTO "pgjobs".jobs (queue, name, args, kwargs, priority, max_attempts, scheduled_at,
                               state, batch_id, partition_key, trace_context)
    SELECT queue, name, args::jsonb, kwargs::jsonb, priority, max_attempts, run_at,
           CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END, %(batch_id)s::bigint,
           partition_key, %(trace_context)s::jsonb
    FROM (
        SELECT r.*, coalesce(r.at, now() + make_interval(secs => r.delay)) AS run_at
        FROM unnest(%(queues)s::text[], %(names)s::text[], %(args)s::text[], %(kwargs)s::text[],
                    %(priorities)s::int[], %(max_attempts)s::int[], %(ats)s::timestamptz[],
                    %(delays)s::float8[], %(partition_keys)s::text[]) WITH ORDINALITY
            AS r(queue, name, args, kwargs, priority, max_attempts, at, delay, partition_key,
                 position)
        WHERE EXISTS (SELECT 1 FROM batch WHERE finished_at IS NULL)
        ORDER BY r.position
    ) AS rows
    RETURNING id
), counted AS (
    SELECT "pgjobs".count_added_jobs(%(batch_id)s::bigint, count(*)::int) FROM inserted
)
SELECT EXISTS (SELECT 1 FROM batch) AS found, (SELECT finished_at FROM batch) AS finished_at,
       ARRAY(SELECT id FROM inserted ORDER BY id) AS ids, (SELECT count(*) FROM counted) AS counted
"""
"""How the previous release (schema revision 0016) adds jobs to a batch, in schema ``pgjobs``:
it names the batch in the setting ``pgjobs.counting_batch`` and counts the jobs it inserted with
``count_added_jobs()``. It runs on the new schema while a rolling upgrade is under way."""


def previous_release_adds(conn: psycopg.Connection[Any], batch_id: int, size: int) -> list[int]:
    """Add ``size`` jobs to a batch by the previous release's statement; their ids."""
    calls = [jobs_app.batch_member.call() for _ in range(size)]
    params = {
        **insert_params(calls),
        "batch_id": batch_id,
        "counting_setting": "pgjobs.counting_batch",
    }
    found = conn.execute(PREVIOUS_INSERT_BATCH_JOBS, params).fetchone()
    assert found is not None and found[0] and found[1] is None
    return list(found[2])


@pytest.mark.parametrize("kind", ["enqueuer", "worker", "owner"])
def test_the_previous_releases_additions_to_a_batch_still_count_exactly(
    roles: Roles, db: psycopg.Connection[Any], tmp_path: Path, kind: str
) -> None:
    """Whatever role runs the previous release's statement (the owner in a single-role setup),
    its jobs count once each, as does an insert of the caller's own into the batch after it in
    the same transaction, and the callbacks fire once after the last of them."""
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    batch = jobs_app.app.batch(
        on_success=jobs_app.batch_callback.call("on_success"),
        on_complete=jobs_app.batch_callback.call("on_complete"),
    )
    with psycopg.connect(roles.database_url if kind == "owner" else roles.url(kind)) as conn:
        ids = previous_release_adds(conn, batch.id, 40)
        conn.execute(
            "INSERT INTO pgjobs.jobs (name, batch_id) VALUES ('batch_member', %s)", (batch.id,)
        )
        conn.commit()
    assert len(set(ids)) == 40
    assert batch_counters(db, batch.id) == (41, 41, 0)
    batch.seal()
    worker = burst_as_worker(roles, tmp_path / "worker.log")
    assert "batches_counters_check" not in worker.output()
    assert fired_callbacks(db) == [
        ("batch_callback:on_complete", str(batch.id), 1),
        ("batch_callback:on_success", str(batch.id), 1),
    ]
    assert batch_counters(db, batch.id) == (41, 0, 0)


def test_a_single_role_setup_counts_each_job_of_both_releases_once(owned: Roles) -> None:
    """When the application runs as the tables' owner, the skip of the row trigger is open to it
    (it may update batches), yet the previous release's statement, which sets the old setting,
    is still counted row by row, the new one once for all its jobs, and a plain insert, even
    under the old setting, counts; the enqueuer's forged new setting does not skip its insert."""
    jobs_app.app.configure(database_url=owned.url("worker"))
    batch = jobs_app.app.batch()
    batch.enqueue_many([jobs_app.batch_member.call() for _ in range(30)])
    with psycopg.connect(owned.url("worker")) as conn:
        previous_release_adds(conn, batch.id, 20)
        conn.execute("SELECT set_config('pgjobs.counting_batch', %s, true)", (str(batch.id),))
        conn.execute(
            "INSERT INTO pgjobs.jobs (name, batch_id) VALUES ('batch_member', %s)", (batch.id,)
        )
        conn.execute("SELECT pgjobs.count_added_jobs(%s, 1000)", (batch.id,))
        conn.commit()
    with psycopg.connect(owned.url("enqueuer"), autocommit=True) as enqueuer:
        enqueuer.execute(FORGE_COUNTING, {"batch": str(batch.id)})
        enqueuer.execute(
            "INSERT INTO pgjobs.jobs (name, batch_id) VALUES ('batch_member', %s)", (batch.id,)
        )
    with psycopg.connect(owned.database_url, autocommit=True) as db:
        assert batch_counters(db, batch.id) == (52, 52, 0)
        assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE batch_id = %s", batch.id) == 52


def test_an_addition_to_a_batch_holds_arguments_to_the_limit(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    """add_batch_jobs() inserts as the tables' owner, whom the insert guard lets by: it checks the
    arguments' size itself, as the guard does for the enqueuer's own inserts."""
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    batch = jobs_app.app.batch()
    over = json.dumps(["x" * (LIMIT - len('[""]') - len("{}") + 1)])
    with (
        psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer,
        pytest.raises(psycopg.errors.CheckViolation) as refused,
    ):
        enqueuer.execute(
            "SELECT * FROM pgjobs.add_batch_jobs(%s, '{default}', '{batch_member}', %s::text[],"
            " '{\"{}\"}', '{0}', '{1}', '{NULL}', '{0}', '{NULL}', NULL)",
            (batch.id, [over]),
        )
    assert re.fullmatch(
        rf"job \d+ \(batch_member\): its arguments are {LIMIT + 1} bytes as text, "
        rf"over the {LIMIT}-byte limit",
        str(refused.value.diag.message_primary),
    )
    assert refused.value.diag.constraint_name == "jobs_arguments_size_check"
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 0
    assert batch_counters(db, batch.id) == (0, 0, 0)


def test_worker_role_schedules_cron_entries_and_the_inspector_lists_them(
    roles: Roles, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    worker = WorkerProcess.start(
        ["--app", "tests.cron_app:app", "worker"],
        database_url=roles.url("worker"),
        log=tmp_path / "worker.log",
    )
    try:
        eventually(
            lambda: count(db, "SELECT count(*) FROM ledger WHERE label LIKE 'every.second@%%'") >= 2
        )
        with psycopg.connect(roles.url("worker"), autocommit=True) as as_worker:
            assert as_worker.execute("SELECT pgjobs.pause_cron('every.second')").fetchone() == (
                True,
            )
            assert as_worker.execute("SELECT pgjobs.run_cron('every.second')").fetchone()
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()
    finally:
        worker.kill()
    assert "permission denied" not in worker.output()
    listed = invoke(roles.url("inspector"), "--app", "tests.cron_app:app", "cron", "--json")
    assert listed.returncode == 0, listed.stderr
    names = {json.loads(line)["name"] for line in listed.stdout.splitlines()}
    assert "every.second" in names
    with (
        psycopg.connect(roles.url("inspector"), autocommit=True) as inspector,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
    ):
        inspector.execute("SELECT pgjobs.run_cron('every.second')")


def test_enqueuer_enqueues_unique_jobs_and_replaces_only_with_the_documented_grant(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    first = jobs_app.unique_noop.enqueue("once")
    again = jobs_app.unique_noop.enqueue("once")
    many = jobs_app.app.enqueue_many([jobs_app.unique_noop.call("once")] * 600)
    assert again.duplicate and again == first and set(many) == {first}
    copied = jobs_app.app.enqueue_many([jobs_app.unique_noop.call("once", i) for i in range(600)])
    assert copied[0] == first and len(set(copied)) == 600
    later = jobs_app.debounced.enqueue_in(timedelta(hours=1), 1, "first")  # an insert
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        jobs_app.debounced.enqueue(1, "second")  # a replace
    jobs_app.app.close()
    db.execute(
        "GRANT UPDATE (args, kwargs, priority, scheduled_at, state), SELECT (queue)"
        f' ON pgjobs.jobs TO "{roles.enqueuer}"'
    )  # as docs/roles.md says
    replaced = jobs_app.debounced.enqueue(1, "second")
    assert replaced.duplicate and replaced == later
    assert rows(db, "SELECT args, state FROM pgjobs.jobs WHERE id = %s", later) == [
        ([1, "second"], "available")
    ]
    with psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer:
        for statement in (
            "SELECT args FROM pgjobs.jobs",
            "UPDATE pgjobs.jobs SET state = 'completed', finished_at = now()",
            "DELETE FROM pgjobs.jobs",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                enqueuer.execute(statement)
        # nor can a unique insert slip a job that is not new past the guard
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may insert only new jobs"):
            enqueuer.execute(
                "INSERT INTO pgjobs.jobs (name, state, attempt, finished_at, unique_key,"
                " unique_states) VALUES ('noop', 'completed', 1, now(), 'k',"
                " '{scheduled,available,running,retryable,completed}')"
                " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL"
                " AND state = ANY (unique_states) DO NOTHING"
            )
    assert count(db, "SELECT count(*) FROM pgjobs.jobs") == 601


def test_the_worker_role_prunes_finished_batches_and_without_delete_says_so_once(
    roles: Roles, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    finished = (
        "INSERT INTO pgjobs.batches (sealed_at, finished_at)"
        " VALUES (now() - interval '2 days', now() - interval '2 days')"
    )
    db.execute(finished)
    args = ["--app", "tests.jobs_app:app", "worker", "--queues", "nothing-here"]
    granted = WorkerProcess.start(args, database_url=roles.url("worker"), log=tmp_path / "a.log")
    try:
        granted.wait_for_log("pruned 1 finished batch(es)")
        granted.signal(signal.SIGTERM)
        assert granted.wait() == 0
    finally:
        granted.kill()
    assert count(db, "SELECT count(*) FROM pgjobs.batches") == 0

    # a role granted before batches were pruned
    db.execute(f'REVOKE DELETE ON pgjobs.batches FROM "{roles.worker}"')
    db.execute(finished)
    refused = WorkerProcess.start(args, database_url=roles.url("worker"), log=tmp_path / "b.log")
    try:
        refused.wait_for_log("cannot prune finished batches")
        refused.signal(signal.SIGTERM)
        assert refused.wait() == 0  # the leader went on with its duties
    finally:
        refused.kill()
    assert count(db, "SELECT count(*) FROM pgjobs.batches") == 1
    assert refused.output().count("cannot prune finished batches") == 1
    assert "Traceback" not in refused.output()


def test_a_worker_role_without_job_stats_still_writes_outcomes_and_says_so(
    roles: Roles, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A role granted before job_stats existed: its outcomes are written, not counted."""
    db.execute(f'REVOKE INSERT, UPDATE, DELETE ON pgjobs.job_stats FROM "{roles.worker}"')
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    jobs_app.app.enqueue_many([jobs_app.noop.call(f"job {i}") for i in range(5)])
    worker = burst_as_worker(roles, tmp_path / "worker.log")
    assert count(db, "SELECT count(*) FROM pgjobs.jobs WHERE state = 'completed'") == 5
    assert count(db, "SELECT count(*) FROM pgjobs.job_stats") == 0
    assert worker.output().count("may not add to the job_stats table") == 1
    assert "Traceback" not in worker.output()
    db.execute(f'GRANT INSERT, UPDATE ON pgjobs.job_stats TO "{roles.worker}"')
    jobs_app.noop.enqueue("counted")
    burst_as_worker(roles, tmp_path / "again.log")
    assert value(db, "SELECT sum(runs) FROM pgjobs.job_stats") == 1


def test_the_inspector_serves_a_read_only_dashboard(
    roles: Roles, db: psycopg.Connection[Any]
) -> None:
    import httpx

    from tests.web_server import serving

    with psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer:
        job_id = enqueuer.execute(
            "INSERT INTO pgjobs.jobs (name, args) VALUES ('noop', '[\"x\"]') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
    app = pgjobs.App(database_url=roles.url("inspector"))
    with serving(app, read_only=True) as base:
        for path in ("/", "/live", "/queues", "/jobs", f"/jobs/{job_id}", "/workers", "/cron",
                     "/batches", "/metrics", "/jobs?state=completed&search=x"):  # fmt: skip
            assert httpx.get(base + path).status_code == 200, path


def test_the_worker_role_stores_results_and_progress_and_the_enqueuer_cannot(
    roles: Roles, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    jobs_app.app.configure(database_url=roles.url("enqueuer"))
    returned = jobs_app.returns.enqueue({"rows": 3})
    reported = jobs_app.progress_loop.enqueue(10)
    worker = burst_as_worker(roles, tmp_path / "worker.log")
    assert "permission denied" not in worker.output()
    assert rows(db, "SELECT state, result FROM pgjobs.jobs WHERE id = %s", returned) == [
        ("completed", {"rows": 3})
    ]
    assert rows(
        db, "SELECT progress, progress_message FROM pgjobs.jobs WHERE id = %s", reported
    ) == [(1.0, "done")]
    with psycopg.connect(roles.url("enqueuer"), autocommit=True) as enqueuer:
        for statement in (
            "UPDATE pgjobs.jobs SET result = '1'",
            "UPDATE pgjobs.jobs SET progress = 0.5, progress_message = 'forged'",
            "SELECT result FROM pgjobs.jobs",
            "SELECT pgjobs.await_job(1)",
            "UPDATE pgjobs.jobs SET awaited = true",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                enqueuer.execute(statement)
    # the inspector reads results and waits for jobs; it writes nothing
    inspector = pgjobs.App(database_url=roles.url("inspector"))
    try:
        assert inspector.get_result(returned) == {"rows": 3}
        assert inspector.wait_for(returned, timeout=5).result == {"rows": 3}
        waiting = value(db, "INSERT INTO pgjobs.jobs (name) VALUES ('noop') RETURNING id")
        with pytest.raises(TimeoutError, match=f"job {waiting} is still available"):
            inspector.wait_for(waiting, timeout=1)
    finally:
        inspector.close()
    assert value(db, "SELECT awaited FROM pgjobs.jobs WHERE id = %s", waiting) is True
