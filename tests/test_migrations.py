"""``pgjobs migrate``: from nothing, twice, concurrently, in another schema, offline, checked,
downgraded, beside the application's own Alembic, and from an installed wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from pgjobs._migrate import _config, head_revision
from tests.helpers import LEDGER_DDL, ROOT, WorkerProcess, eventually, invoke, run_cli, run_program

UNREACHABLE = "postgresql://nobody@127.0.0.1:9/nowhere"
OWNED = [
    ("alembic_version", "r"),
    ("batches", "r"),
    ("cron_entries", "r"),
    ("job_stats", "r"),
    ("jobs", "r"),
    ("leases", "r"),
    ("queue_counts", "v"),
    ("queue_starts", "r"),
    ("queues", "r"),
    ("schema_compatibility", "r"),
    ("workers", "r"),
]


@pytest.fixture
def empty_db(empty_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        yield conn


def relations(conn: psycopg.Connection[Any], schema: str) -> list[tuple[str, str]]:
    """Tables (r) and views (v) in ``schema``."""
    return conn.execute(
        "SELECT c.relname, c.relkind::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'v') ORDER BY 1",
        (schema,),
    ).fetchall()


def schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row == (1,)


def versions(conn: psycopg.Connection[Any], schema: str = "pgjobs") -> list[tuple[str]]:
    return conn.execute(f'SELECT version_num FROM "{schema}".alembic_version').fetchall()


def catalog(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    """Every object of ``schema`` by oid (recreating one changes its oid) and the version rows."""
    return {
        "relations": conn.execute(
            "SELECT c.oid::bigint, c.relname, c.relkind::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s ORDER BY 2",
            (schema,),
        ).fetchall(),
        "functions": conn.execute(
            "SELECT p.oid::bigint, p.proname FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s ORDER BY 2",
            (schema,),
        ).fetchall(),
        "triggers": conn.execute(
            "SELECT t.oid::bigint, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND NOT t.tgisinternal ORDER BY 2",
            (schema,),
        ).fetchall(),
        "versions": versions(conn, schema),
    }


def downgrade_to_base(database_url: str, schema: str = "pgjobs") -> None:
    """``alembic downgrade base`` through pgjobs' own migration environment."""
    engine = create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool
    )
    config = _config(schema)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
    finally:
        engine.dispose()


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.fresh_database
def test_migrate_creates_the_schema_from_an_empty_database(
    empty_database_url: str, empty_db: psycopg.Connection[Any]
) -> None:
    assert not schema_exists(empty_db, "pgjobs")
    result = invoke(empty_database_url, "migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"schema 'pgjobs': empty -> {head_revision()}"
    assert relations(empty_db, "pgjobs") == OWNED
    assert versions(empty_db) == [(head_revision(),)]
    assert relations(empty_db, "public") == []
    # the notify trigger works: inserting a job notifies its queue's channel
    empty_db.execute('LISTEN "pgjobs.jobs"')
    empty_db.execute("INSERT INTO pgjobs.jobs (name, queue) VALUES ('x', 'mailers')")
    notices = list(empty_db.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in notices] == [("pgjobs.jobs", "mailers")]


@pytest.mark.fresh_database
def test_second_migrate_changes_nothing(
    empty_database_url: str, empty_db: psycopg.Connection[Any]
) -> None:
    assert invoke(empty_database_url, "migrate").returncode == 0
    empty_db.execute("INSERT INTO pgjobs.jobs (name) VALUES ('kept')")
    before = catalog(empty_db, "pgjobs")

    again = invoke(empty_database_url, "migrate")

    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"schema 'pgjobs': {head_revision()} -> {head_revision()}"
    assert "Running upgrade" not in again.stderr
    assert catalog(empty_db, "pgjobs") == before
    assert empty_db.execute("SELECT name FROM pgjobs.jobs").fetchall() == [("kept",)]


@pytest.mark.fresh_database
def test_two_migrations_started_together_both_succeed(
    empty_database_url: str, empty_db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    # Hold the migration lock so that both processes get past their "what revision is this?"
    # check and then queue on the lock together: released at once, they race for real.
    gate = "SELECT pg_advisory_lock(hashtext('pgjobs.migrate:pgjobs'))"
    empty_db.execute(gate)
    processes = [
        WorkerProcess.start(["migrate"], database_url=empty_database_url, log=tmp_path / f"m{i}")
        for i in range(2)
    ]
    try:

        def both_waiting() -> bool:
            row = empty_db.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE d.datname = current_database() AND l.locktype = 'advisory' "
                "AND NOT l.granted"
            ).fetchone()
            for process in processes:
                assert process.process.poll() is None, process.output()
            return row == (2,)

        eventually(both_waiting, timeout=20)
        empty_db.execute("SELECT pg_advisory_unlock(hashtext('pgjobs.migrate:pgjobs'))")
        codes = [process.wait(timeout=60) for process in processes]
    finally:
        for process in processes:
            process.kill()

    assert codes == [0, 0], [process.output() for process in processes]
    assert versions(empty_db) == [(head_revision(),)]
    assert relations(empty_db, "pgjobs") == OWNED
    ran = [f"empty -> {head_revision()}" in process.output() for process in processes]
    assert sorted(ran) == [False, True], "exactly one process should have applied the revisions"


@pytest.mark.fresh_database
@pytest.mark.parametrize(
    ("flags", "env"),
    [(["--schema", "other_jobs"], {}), ([], {"PGJOBS_SCHEMA": "other_jobs"})],
    ids=["flag", "env"],
)
def test_non_default_schema(
    empty_database_url: str,
    empty_db: psycopg.Connection[Any],
    flags: list[str],
    env: dict[str, str],
) -> None:
    empty_db.execute(LEDGER_DDL)
    migrated = invoke(empty_database_url, *flags, "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema 'other_jobs'" in migrated.stdout

    assert relations(empty_db, "other_jobs") == OWNED
    assert versions(empty_db, "other_jobs") == [(head_revision(),)]
    assert not schema_exists(empty_db, "pgjobs")
    assert relations(empty_db, "public") == [("ledger", "r")]

    app = ["--app", "tests.jobs_app:app"]
    enqueued = invoke(
        empty_database_url, *flags, *app, "enqueue", "noop", "--args", '["other"]', env=env
    )
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = int(enqueued.stdout)
    worker = run_cli(empty_database_url, *flags, *app, "worker", "--burst", env=env)
    assert worker.returncode == 0, worker.stderr

    assert empty_db.execute("SELECT id, state FROM other_jobs.jobs").fetchall() == [
        (job_id, "completed")
    ]
    assert empty_db.execute("SELECT job_id, label FROM ledger").fetchall() == [(job_id, "other")]
    # the default schema is still not migrated, and checking it does not create it
    default = invoke(empty_database_url, "migrate", "--check")
    assert default.returncode == 1
    assert not schema_exists(empty_db, "pgjobs")


@pytest.mark.fresh_database
@pytest.mark.parametrize("schema", ["pgjobs", "other_jobs"])
def test_migrate_sql_prints_ddl_without_a_database(
    schema: str, empty_database_url: str, empty_db: psycopg.Connection[Any]
) -> None:
    result = invoke(UNREACHABLE, "migrate", "--sql", env={"PGJOBS_SCHEMA": schema})
    assert result.returncode == 0, result.stderr
    ddl = result.stdout
    assert f'CREATE SCHEMA IF NOT EXISTS "{schema}"' in ddl
    assert f'CREATE TABLE "{schema}".jobs' in ddl
    assert f"CREATE TABLE {schema}.alembic_version" in ddl
    assert f"version_num='{head_revision()}'" in ddl
    assert ddl.lstrip().startswith("BEGIN;") and ddl.rstrip().endswith("COMMIT;")
    other = {"pgjobs": "other_jobs", "other_jobs": "pgjobs"}[schema]
    assert other not in ddl

    # what a DBA would apply by hand gives the same schema `pgjobs migrate` would
    empty_db.execute(ddl)
    assert relations(empty_db, schema) == OWNED
    check = invoke(empty_database_url, "--schema", schema, "migrate", "--check")
    assert check.returncode == 0, check.stderr


@pytest.mark.fresh_database
def test_migrate_check(empty_database_url: str, empty_db: psycopg.Connection[Any]) -> None:
    before = invoke(empty_database_url, "migrate", "--check")
    assert before.returncode == 1
    assert "pgjobs migrate" in before.stderr
    assert_clean_failure(before)
    assert not schema_exists(empty_db, "pgjobs")

    assert invoke(empty_database_url, "migrate").returncode == 0
    after = invoke(empty_database_url, "migrate", "--check")
    assert after.returncode == 0, after.stderr
    assert head_revision() in after.stdout


def test_worker_refuses_an_unmigrated_database(
    empty_database_url: str, empty_db: psycopg.Connection[Any]
) -> None:
    result = run_cli(empty_database_url, "--app", "tests.jobs_app:app", "worker", "--burst")
    assert result.returncode != 0
    assert "pgjobs migrate" in result.stderr
    assert_clean_failure(result)
    assert not schema_exists(empty_db, "pgjobs")


@pytest.mark.fresh_database
def test_downgrade_to_base_then_upgrade_again(
    empty_database_url: str, empty_db: psycopg.Connection[Any]
) -> None:
    assert invoke(empty_database_url, "migrate").returncode == 0
    empty_db.execute("INSERT INTO pgjobs.jobs (name) VALUES ('old')")

    downgrade_to_base(empty_database_url)

    assert relations(empty_db, "pgjobs") == [("alembic_version", "r")]
    assert versions(empty_db) == []
    functions = empty_db.execute(
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgjobs'::regnamespace"
    ).fetchone()
    assert functions == (0,)
    assert invoke(empty_database_url, "migrate", "--check").returncode == 1

    again = invoke(empty_database_url, "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"schema 'pgjobs': empty -> {head_revision()}"
    assert relations(empty_db, "pgjobs") == OWNED
    assert empty_db.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (0,)
    assert invoke(empty_database_url, "migrate", "--check").returncode == 0


@pytest.mark.fresh_database
def test_application_tables_are_left_alone(
    empty_database_url: str, empty_db: psycopg.Connection[Any]
) -> None:
    # the application's own Alembic history, and a table of its own called "jobs"
    empty_db.execute(
        "CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY);"
        "INSERT INTO public.alembic_version VALUES ('app_0042');"
        "CREATE TABLE public.jobs (id int PRIMARY KEY, title text);"
        "INSERT INTO public.jobs VALUES (1, 'plumber')"
    )
    public_before = catalog(empty_db, "public") | {
        "jobs": empty_db.execute("SELECT * FROM public.jobs").fetchall()
    }

    def public_now() -> dict[str, Any]:
        return catalog(empty_db, "public") | {
            "jobs": empty_db.execute("SELECT * FROM public.jobs").fetchall()
        }

    # the application's alembic_version is not mistaken for pgjobs'
    check = invoke(empty_database_url, "migrate", "--check")
    assert check.returncode == 1 and "pgjobs migrate" in check.stderr

    migrated = invoke(empty_database_url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert versions(empty_db) == [(head_revision(),)]
    assert public_now() == public_before
    assert versions(empty_db, "public") == [("app_0042",)]

    downgrade_to_base(empty_database_url)
    assert public_now() == public_before
    assert invoke(empty_database_url, "migrate").returncode == 0
    assert public_now() == public_before


@pytest.mark.fresh_database
def test_database_from_a_newer_pgjobs_is_refused_cleanly(
    empty_database_url: str, empty_db: psycopg.Connection[Any]
) -> None:
    assert invoke(empty_database_url, "migrate").returncode == 0
    empty_db.execute("UPDATE pgjobs.alembic_version SET version_num = '9999'")
    # a newer schema that dropped what this release needs says so
    empty_db.execute("UPDATE pgjobs.schema_compatibility SET oldest_revision = '9998'")
    before = catalog(empty_db, "pgjobs")

    result = invoke(empty_database_url, "migrate")

    assert catalog(empty_db, "pgjobs") == before
    assert result.returncode != 0
    assert "9999" in result.stderr
    assert_clean_failure(result)

    # and the advice is to upgrade pgjobs, not to run the migration that just failed
    for args in (["migrate", "--check"], ["--app", "tests.jobs_app:app", "worker", "--burst"]):
        refused = run_cli(empty_database_url, *args)
        assert refused.returncode != 0, args
        assert "9999" in refused.stderr and "upgrade pgjobs" in refused.stderr, refused.stderr
        assert "9998 and later" in refused.stderr, refused.stderr
        assert_clean_failure(refused)
    assert catalog(empty_db, "pgjobs") == before


@pytest.mark.fresh_database
def test_newer_schema_that_still_serves_this_release_is_used(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """A schema migrated by a newer release that still serves this one (as every release's
    schema serves the previous release): workers start and work, ``migrate --check`` says so."""
    db.execute("UPDATE pgjobs.alembic_version SET version_num = '9999'")
    db.execute("INSERT INTO pgjobs.jobs (queue, name) VALUES ('default', 'noop')")

    check = invoke(database_url, "migrate", "--check")
    assert check.returncode == 0, check.stderr
    assert "at 9999, newer than this pgjobs" in check.stdout
    burst = run_cli(database_url, "--app", "tests.jobs_app:app", "worker", "--burst")
    assert burst.returncode == 0, burst.stderr
    assert "newer than this pgjobs" in burst.stderr
    assert db.execute("SELECT state FROM pgjobs.jobs").fetchall() == [("completed",)]


@pytest.mark.fresh_database
@pytest.mark.slow
def test_installed_wheel_migrates_an_empty_database(
    tmp_path: Path, empty_database_url: str, empty_db: psycopg.Connection[Any]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGJOBS_", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    env.pop("DATABASE_URL", None)

    def run(*args: str | Path, **extra: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(a) for a in args],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
        return result

    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, ROOT)
    (wheel,) = dist.glob("pgjobs-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"pgjobs-{version('pgjobs')}.dist-info/METADATA").decode()
    assert {"pgjobs/cli.py", "pgjobs/_migrations/env.py"} <= names
    assert any(n.startswith("pgjobs/_migrations/versions/0001") for n in names)
    assert f"pgjobs-{version('pgjobs')}.dist-info/licenses/LICENSE" in names
    # plain psycopg for the library; its binary wheel only through an extra
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: psycopg")]
    assert "Requires-Dist: psycopg[pool]>=3.2" in requires
    assert all("extra ==" in line for line in requires if "binary" in line), requires

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    pip = (venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check")
    run(*pip, f"{wheel}[binary]")  # what needs no libpq on the machine
    where = run(
        venv / "bin" / "python",
        "-c",
        "import json, pgjobs, pgjobs._migrate as m;"
        "print(json.dumps([pgjobs.__file__, str(m.migrations_directory())]))",
    )
    module, migrations = (Path(p) for p in json.loads(where.stdout))
    assert module.is_relative_to(venv) and migrations.is_relative_to(venv)

    result = run(venv / "bin" / "pgjobs", "migrate", PGJOBS_DATABASE_URL=empty_database_url)
    assert f"empty -> {head_revision()}" in result.stdout
    assert relations(empty_db, "pgjobs") == OWNED
    assert versions(empty_db) == [(head_revision(),)]


def test_revisions_read_from_file_names_match_alembics_own() -> None:
    """The worker reads revision ids from file names to spare itself Alembic; they must agree."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pgjobs._migrate import _known_revisions, migrations_directory

    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    scripts = ScriptDirectory.from_config(config)
    assert _known_revisions() == {script.revision for script in scripts.walk_revisions()}
    assert head_revision() == scripts.get_current_head()


def test_a_worker_process_does_not_load_alembic_or_sqlalchemy() -> None:
    result = run_program(
        None,
        [
            sys.executable,
            "-c",
            "import sys, pgjobs, pgjobs.cli, pgjobs._worker;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'sqlalchemy')))",
        ],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("queue", "accepted"),
    [
        ("a", True),
        ("x" * 128, True),
        ("Mail.out-2_b", True),
        ("", False),
        ("x" * 129, False),
        ("bad queue", False),
        ("ünïcode", False),
        ("semi;colon", False),
    ],
)
def test_the_table_holds_queue_names_to_the_rule_for_plain_sql_inserts(
    db: psycopg.Connection[Any], queue: str, accepted: bool
) -> None:
    insert = "INSERT INTO pgjobs.jobs (queue, name) VALUES (%s, 'x')"
    if accepted:
        db.execute(insert, (queue,))
        return
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_queue_check"):
        db.execute(insert, (queue,))
