"""The ``pgjobs`` command: a thin shell over the library.

Bad input (a malformed flag, unknown job, bad JSON, missing migration) exits 2 with a one-line
message; a database that cannot be reached exits 1. Never a traceback for either.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import click
import psycopg

from ._admin import STATES
from ._app import App
from ._connection import one_line
from ._embedded import embedded_database_url, stop_embedded_server
from ._errors import ConfigError, DatabaseError, PgjobsError, SchemaError
from ._grants import grant_statements
from ._loading import import_app
from ._logs import configure_cli_logging
from ._migrate import check_schema, head_revision, migrate, migration_sql
from ._outcome import MAX_DELAY
from ._queues import PARTITIONS, check_limits, describe_rate
from ._records import CronRecord
from ._settings import load_settings, parse_duration
from ._supervisor import Supervisor, supervised_worker_id
from ._validation import MAX_DEPTH
from ._worker import EXIT_RETIRED, Worker

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("pgjobs")

JOB_ID = click.IntRange(-(2**63), 2**63 - 1)
"""A job id is a PostgreSQL ``bigint``."""

URL_FLAGS = ("--database-url", "--listen-database-url")
"""Flags whose values may hold a password: a supervisor hands them to its workers in their
environment (``PGJOBS_DATABASE_URL``…), never on their command lines, which ``ps`` shows to every
user of the machine."""


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=argv, prog_name="pgjobs")


@click.group()
@click.version_option(package_name="pgjobs", message="%(prog)s %(version)s")
@click.option(
    "--database-url", envvar=None, help="PostgreSQL URL [PGJOBS_DATABASE_URL, DATABASE_URL]"
)
@click.option("--schema", help="Schema of pgjobs' tables [PGJOBS_SCHEMA; default pgjobs]")
@click.option(
    "--app", "app_path", metavar="MODULE:ATTR", help="Where the pgjobs.App is [PGJOBS_APP]"
)
@click.option("--log-level", help="DEBUG, INFO, WARNING… [PGJOBS_LOG_LEVEL; default INFO]")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="A line of text or a JSON object per record [PGJOBS_LOG_FORMAT; default text]",
)
@click.pass_context
def cli(
    ctx: click.Context,
    database_url: str | None,
    schema: str | None,
    app_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Background jobs on PostgreSQL."""
    ctx.obj = {
        "database_url": database_url,
        "schema": schema,
        "app": app_path,
        "log_level": log_level,
        "log_format": log_format,
    }


def _handles_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DatabaseError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except psycopg.Error as exc:  # the database refused: its reason, not a traceback
            reason = exc.diag.message_primary or one_line(exc)
            click.echo(f"Error: the database refused: {reason}", err=True)
            sys.exit(1)
        except (PgjobsError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


_app_option = click.option(
    "--app", "app_path", metavar="MODULE:ATTR", help="The pgjobs.App [PGJOBS_APP]"
)
"""``--app`` is accepted after the commands that need it, too."""


def _given(*sources: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line, later sources first; ``None`` means not given."""
    return {k: v for source in sources for k, v in source.items() if v is not None}


def _load_app(flags: dict[str, Any], *, require_app: bool = False) -> App:
    """The user's App (or a bare one), configured with the CLI's flags and a database."""
    flags = _given(flags)
    path = load_settings(flags).app
    if path:
        app = import_app(path, source="--app")
    elif require_app:
        raise ConfigError("this command needs --app MODULE:ATTR (or PGJOBS_APP) to know the jobs")
    else:
        app = App()
    app.configure(**flags)
    configure_cli_logging(app.settings.log_level, app.settings.log_format)
    if logging.root.level > logging.DEBUG:  # Alembic's line per revision: `migrate` sums them up
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if app.settings.database_url is None:
        app.configure(**flags, database_url=embedded_database_url())
    return app


def _without_urls(argv: Sequence[str]) -> list[str]:
    """``argv`` without the :data:`URL_FLAGS` and their values."""
    kept: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        flag, equals, _ = argument.partition("=")
        if flag not in URL_FLAGS:
            kept.append(argument)
        elif not equals:
            next(arguments, None)  # the value, given as the next argument
    return kept


@cli.command()
@click.option(
    "--queues",
    help="critical,default (strict) or critical:3,default:1 (weighted) [PGJOBS_QUEUES; default:"
    " every queue the app declares (its jobs', app.queue()'s) and default, at equal weights]",
)
@click.option("--concurrency", type=int, help="Jobs run at once per process [default 10]")
@click.option("--processes", type=int, help="Worker processes under one supervisor [default 1]")
@click.option("--poll-interval", help="Between polls, e.g. 2 or 500ms [default 5s]")
@click.option("--shutdown-timeout", help="Time running jobs get on stop [default 25s]")
@click.option("--heartbeat-interval", help="Between heartbeats [default 2s]")
@click.option("--lease-timeout", help="Silence after which a worker is presumed lost [default 30s]")
@click.option(
    "--vacuum-threshold",
    type=int,
    help="Dead rows (plus 2% of live ones) past which the leader vacuums the jobs table; 0: never"
    " [default 10000]",
)
@click.option("--poll-only", is_flag=True, default=None, help="No LISTEN (for transaction poolers)")
@click.option(
    "--listen-database-url", help="A direct (not pooled) URL for LISTEN and the worker's session"
)
@click.option(
    "--prepared-statements/--no-prepared-statements",
    default=None,
    help="Turn off behind PgBouncer in transaction mode",
)
@click.option("--burst", is_flag=True, help="Exit 0 once the queues are empty")
@_app_option
@click.pass_obj
@_handles_errors
def worker(obj: dict[str, Any], /, burst: bool, app_path: str | None, **flags: Any) -> None:
    """Run jobs until stopped (SIGTERM/SIGINT: finish or hand back running jobs, then exit).

    Exit status 3: the worker retired because a job's thread overran its timeout; start it again
    (``--processes`` does that by itself).
    """
    given = _given(obj, flags, {"app": app_path})
    app = _load_app(given, require_app=True)
    worker_id = supervised_worker_id()
    unserved = sorted(set(app.declared_queues) - set(app.settings.queue_spec.names))
    if unserved and worker_id is None:
        log.info("queues of the app not served here: %s", ", ".join(unserved))
    if app.settings.processes > 1 and worker_id is None:
        check_schema(app.settings)
        supervisor = Supervisor(
            app.settings,
            app.settings.processes,
            _without_urls(sys.argv[1:]),
            burst=burst,
            env={
                f"PGJOBS_{name.upper()}": value
                for name, value in (
                    # the embedded server's too: the workers use the supervisor's
                    ("database_url", app.settings.database_url),
                    ("listen_database_url", given.get("listen_database_url")),
                )
                if value
            },
        )
        asyncio.run(supervisor.run())
        return
    runner = Worker(
        app,
        burst=burst,
        worker_id=worker_id,
        supervisor_pid=os.getppid() if worker_id else None,
    )
    asyncio.run(runner.run())
    # Exit now: the interpreter would wait for every non-daemon thread, and a job may have left
    # one behind (started by its code, or its own thread handed back or stuck past its timeout).
    # Exit hooks do not run then: let go of the embedded server first.
    stop_embedded_server()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_RETIRED if runner.retired else 0)


@cli.command("migrate")
@click.option("--sql", "as_sql", is_flag=True, help="Print the DDL instead of applying it")
@click.option("--check", is_flag=True, help="Exit 1 unless the schema is up to date")
@click.pass_obj
@_handles_errors
def migrate_command(obj: dict[str, Any], as_sql: bool, check: bool) -> None:
    """Create or upgrade pgjobs' tables (safe to run twice, and concurrently)."""
    if as_sql:
        schema = load_settings(_given(obj)).schema
        click.echo(migration_sql(schema))
        return
    app = _load_app(obj)
    if check:
        try:
            revision = check_schema(app.settings)
        except SchemaError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)
        if revision == head_revision():
            click.echo(f"schema {app.settings.schema!r} is up to date ({revision})")
        else:
            click.echo(
                f"schema {app.settings.schema!r} is at {revision}, newer than this pgjobs "
                f"({head_revision()}), and serves it"
            )
        return
    before = migrate(app.settings)
    click.echo(f"schema {app.settings.schema!r}: {before or 'empty'} -> {head_revision()}")


@cli.command()
@click.argument("name")
@click.option("--args", "args_json", default="[]", help="JSON array of positional arguments")
@click.option("--kwargs", "kwargs_json", default="{}", help="JSON object of keyword arguments")
@click.option("--queue", help="Queue (default: the job's)")
@click.option("--priority", type=int, help="Lower runs first (default: the job's)")
@click.option("--max-attempts", type=int, help="Attempts before discard (default: the job's)")
@click.option("--at", help="Run at this ISO 8601 time with an offset, e.g. 2026-01-01T09:00+00:00")
@click.option("--in", "delay", help="Run after a delay: seconds, or 30s, 5m, 2h, 1d")
@click.option("--unique-key", "unique_key", help="JSON value: at most one such job while it waits")
@_app_option
@click.pass_obj
@_handles_errors
def enqueue(
    obj: dict[str, Any],
    name: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    at: str | None,
    delay: str | None,
    unique_key: str | None,
    app_path: str | None,
) -> None:
    """Enqueue a run of job NAME; prints the new job's id, or with a unique job that holds the
    key already, "duplicate of job ID"."""
    args = _parse_json(args_json, "--args", list)
    kwargs = _parse_json(kwargs_json, "--kwargs", dict)
    when = None if at is None else _parse_time(at)
    app = _load_app(_given(obj, {"app": app_path}), require_app=True)
    job = app.get(name).options(
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        at=when,
        delay=None if delay is None else _parse_delay(delay),
        unique_key=None if unique_key is None else _parse_json(unique_key, "--unique-key", object),
    )
    try:
        call = job.call(*args, **kwargs)
    except TypeError as exc:  # the arguments do not fit the job's function
        raise ConfigError(str(exc)) from None
    job_id = app.enqueue_many([call])[0]
    click.echo(f"duplicate of job {job_id}" if job_id.duplicate else job_id)


@cli.command()
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Repeatable")
@click.option("--queue", "queues", multiple=True, help="Repeatable")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line")
@click.pass_obj
@_handles_errors
def jobs(
    obj: dict[str, Any],
    states: tuple[str, ...],
    queues: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    app = _load_app(obj)
    rows = app.list_jobs(states=states or None, queues=queues or None, limit=limit)
    table = [
        [
            str(r.id),
            r.queue,
            r.name,
            r.state,
            f"{r.attempt}/{r.max_attempts}",
            f"{r.scheduled_at:%Y-%m-%d %H:%M:%S%z}",
            (r.errors[-1]["message"] if r.errors else "")[:60],
        ]
        for r in rows
    ]
    header = ["id", "queue", "name", "state", "attempt", "scheduled_at", "last error"]
    _print_rows(rows, as_json, header, table)


@cli.command()
@click.argument("job_id", type=JOB_ID, required=False)
@click.option("--all", "every", is_flag=True, help="Every job matching --state/--queue/--name")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s for s in STATES if s != "running"]),
    help="With --all, repeatable [default discarded]",
)
@click.option("--queue", "queues", multiple=True, help="With --all, repeatable")
@click.option("--name", "names", multiple=True, help="With --all: job name, repeatable")
@click.pass_obj
@_handles_errors
def retry(
    obj: dict[str, Any],
    job_id: int | None,
    every: bool,
    states: tuple[str, ...],
    queues: tuple[str, ...],
    names: tuple[str, ...],
) -> None:
    """Put job JOB_ID, or with --all every matching job, back to run now (a discarded job gets
    one more attempt). Running jobs are never touched."""
    if every == (job_id is not None):
        raise click.UsageError("give either JOB_ID or --all")
    if not every and (states or queues or names):
        raise click.UsageError("--state, --queue and --name go with --all")
    app = _load_app(obj)
    if every:
        count = app.retry_all(
            states=states or ("discarded",), queues=queues or None, names=names or None
        )
        click.echo(f"{count} job{'' if count == 1 else 's'} will run again")
        return
    assert job_id is not None
    if not app.retry(job_id):
        raise click.UsageError(f"no job {job_id}")
    click.echo(f"job {job_id} will run again")


@cli.command("job")
@click.argument("job_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="One JSON object")
@click.pass_obj
@_handles_errors
def job_command(obj: dict[str, Any], job_id: int, as_json: bool) -> None:
    """Show job JOB_ID: its columns (its result as JSON, its progress), then each failed
    attempt's error with its traceback."""
    row = _load_app(obj).get_job(job_id)
    if row is None:
        raise click.UsageError(f"no job {job_id}")
    if as_json:
        click.echo(json.dumps(asdict(row), default=str))
        return
    for key, value in asdict(row).items():
        json_column = isinstance(value, list | dict) or (key == "result" and value is not None)
        shown = json.dumps(value) if json_column else value
        if key == "progress" and value is not None:
            shown = f"{value:.0%}"
        if key != "errors":
            click.echo(f"{key + ':':<20} {'' if shown is None else shown}")
    for error in row.errors:
        click.echo(f"\nattempt {error.get('attempt')} at {error.get('at')}: {error.get('class')}")
        click.echo(f"  {error.get('message')}")
        for line in (error.get("traceback") or "").rstrip().splitlines():
            click.echo(f"  {line}")


@cli.command("run-now")
@click.argument("job_id", type=JOB_ID)
@click.pass_obj
@_handles_errors
def run_now(obj: dict[str, Any], job_id: int) -> None:
    """Make scheduled or retryable job JOB_ID available now (its attempt is not changed)."""
    if not _load_app(obj).run_job_now(job_id):
        raise click.UsageError(f"no job {job_id}")
    click.echo(f"job {job_id} is available now")


@cli.command()
@click.argument("job_id", type=JOB_ID)
@click.pass_obj
@_handles_errors
def delete(obj: dict[str, Any], job_id: int) -> None:
    """Delete job JOB_ID, unless it is running or waited for by its batch (cancel it then)."""
    if not _load_app(obj).delete_job(job_id):
        raise click.UsageError(f"no job {job_id}")
    click.echo(f"job {job_id} deleted")


@cli.command()
@click.argument("job_id", type=JOB_ID)
@click.pass_obj
@_handles_errors
def cancel(obj: dict[str, Any], job_id: int) -> None:
    """Cancel job JOB_ID: a waiting job never runs; a running one is asked to stop."""
    app = _load_app(obj)
    state = app.cancel(job_id)
    if state is None:
        raise click.UsageError(f"no job {job_id}")
    if state == "cancelled":
        click.echo(f"job {job_id} cancelled")
    elif state == "cancelling":
        click.echo(f"job {job_id} is running: its worker was asked to cancel it")
    else:
        click.echo(f"job {job_id}: {state}; nothing to cancel", err=True)
        sys.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
@click.pass_obj
@_handles_errors
def workers(obj: dict[str, Any], as_json: bool) -> None:
    """Registered worker processes: heartbeat, leader, running jobs."""
    app = _load_app(obj)
    rows = app.list_workers()
    table = [
        [
            r.id,
            r.hostname,
            str(r.pid),
            r.queues,
            f"{r.running}/{r.concurrency}",
            f"{r.heartbeat_age:.1f}s ago",
            "yes" if r.leader else "",
        ]
        for r in rows
    ]
    header = ["id", "host", "pid", "queues", "running", "heartbeat", "leader"]
    _print_rows(rows, as_json, header, table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
@click.pass_obj
@_handles_errors
def stats(obj: dict[str, Any], as_json: bool) -> None:
    """Jobs by queue and state."""
    app = _load_app(obj)
    counts = app.queue_counts()
    if as_json:
        click.echo(json.dumps(counts))
        return
    _print_table(
        ["queue", *STATES],
        [[queue, *(str(by_state.get(s, 0)) for s in STATES)] for queue, by_state in counts.items()],
    )


@cli.command()
@click.argument(
    "mode",
    type=click.Choice(
        ["enqueue", "bulk", "process", "latency", "steady", "rate", "scale", "pages"]
    ),
)
@click.option("--jobs", type=click.IntRange(1), help="Jobs to enqueue or process")
@click.option("--processes", type=click.IntRange(1), default=2, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=20, show_default=True)
@click.option("--async-jobs", is_flag=True, help="Time async def jobs, not def ones")
@click.option(
    "--samples",
    type=click.IntRange(1),
    help="latency: jobs timed [200]; scale: claims of 1 job, and a quarter as many of 100 [2000]; "
    "pages: requests of each dashboard page [20]",
)
@click.option(
    "--rate",
    type=click.IntRange(1),
    help="steady: jobs/s offered [5000]; rate: the queue's rate limit, starts/s [20]",
)
@click.option(
    "--duration",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="steady: seconds of offered load; rate: seconds measured",
)
@click.option(
    "--available",
    type=click.IntRange(1),
    default=1_000_000,
    show_default=True,
    help="scale, pages: available jobs in the table",
)
@click.option(
    "--finished",
    type=click.IntRange(0),
    default=5_000_000,
    show_default=True,
    help="scale, pages: completed jobs in the table",
)
@click.option(
    "--unique",
    is_flag=True,
    help="enqueue, bulk: also/only jobs with a unique key each; process: plain and unique runs",
)
@click.option(
    "--limit",
    is_flag=True,
    help="process: rounds with a concurrency limit that never binds, beside plain ones",
)
@click.option(
    "--partitions",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="rate: the limit holds per partition key, for this many keys (0: the whole queue)",
)
@click.option(
    "--results", is_flag=True, help="process: the jobs return a small dict, stored as a result"
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table")
@click.pass_obj
@_handles_errors
def bench(
    obj: dict[str, Any],
    mode: str,
    jobs: int | None,
    processes: int,
    concurrency: int,
    async_jobs: bool,
    samples: int | None,
    rate: int | None,
    duration: float,
    available: int,
    finished: int,
    unique: bool,
    limit: bool,
    partitions: int,
    results: bool,
    as_json: bool,
) -> None:
    """Measure pgjobs on this database, in a schema of its own (pgjobs_bench, dropped after).

    MODE: enqueue (one job per transaction, beside bare INSERT+COMMIT), bulk (enqueue_many),
    process (a burst worker burns down no-op jobs), latency (commit to job start, idle worker),
    steady (a worker under --rate jobs/s for --duration s: commit to job start, backlog), rate
    (a backlog under a rate limit of --rate starts/s, per key with --partitions: the rate
    sustained over --duration s, and the most starts in any second), scale
    (the claim statement on a table of --available and --finished jobs, and its plan), pages
    (the dashboard's server time per page on such a table; needs pgjobs[web]).
    """
    from . import bench as _bench

    settings = _load_app(obj).settings
    default_jobs = {"enqueue": 10_000, "bulk": 100_000, "process": 100_000}
    options = _bench.BenchOptions(
        jobs=jobs or default_jobs.get(mode, 0),
        processes=processes,
        concurrency=concurrency,
        async_jobs=async_jobs,
        samples=samples or {"scale": 2000, "pages": 20}.get(mode, 200),
        rate=rate or (20 if mode == "rate" else 5000),
        duration=duration,
        available=available,
        finished=finished,
        unique=unique,
        limit=limit,
        partitions=partitions,
        results=results,
    )
    result = _bench.run(mode, settings, options)
    if as_json:
        click.echo(json.dumps(result))
        return
    shown = {key: value for key, value in result.items() if key not in _bench.JSON_ONLY}
    _print_table(
        ["figure", "value"],
        [
            [key, ", ".join(value) if isinstance(value, list) else str(value)]
            for key, value in shown.items()
        ],
    )


@cli.command()
@click.option("--migrator", multiple=True, metavar="ROLE", help="Owns the schema; runs migrate")
@click.option("--enqueuer", multiple=True, metavar="ROLE", help="Inserts jobs (the web app)")
@click.option("--worker", multiple=True, metavar="ROLE", help="Runs `pgjobs worker`")
@click.option("--inspector", multiple=True, metavar="ROLE", help="Reads tables and views")
@click.pass_obj
@_handles_errors
def grants(obj: dict[str, Any], /, **roles: tuple[str, ...]) -> None:
    """Print the GRANT statements that give each ROLE its kind of access (repeatable options).

    Run them as a superuser, e.g. through psql: the migrator's before the first `pgjobs migrate`,
    the others after it and again after each upgrade. docs/roles.md says what each kind may do.
    """
    schema = load_settings(_given(obj)).schema
    click.echo(grant_statements(schema, roles))


@cli.command("batch")
@click.argument("batch_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="One JSON object")
@click.pass_obj
@_handles_errors
def batch_command(obj: dict[str, Any], batch_id: int, as_json: bool) -> None:
    """Show batch BATCH_ID: its counters, whether it is sealed, and its callback jobs."""
    row = _load_app(obj).batch_status(batch_id)
    if row is None:
        raise click.UsageError(f"no batch {batch_id}")
    if as_json:
        click.echo(json.dumps(asdict(row), default=str))
        return
    for key, value in asdict(row).items():
        click.echo(f"{key + ':':<17} {'' if value is None else value}")


@cli.command()
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line")
@click.pass_obj
@_handles_errors
def batches(obj: dict[str, Any], limit: int, as_json: bool) -> None:
    """List batches, newest first."""
    rows = _load_app(obj).list_batches(limit=limit)
    table = [
        [
            str(r.id),
            r.description or "",
            str(r.total),
            str(r.pending),
            str(r.succeeded),
            str(r.failed),
            "yes" if r.sealed else "no",
            "" if r.finished_at is None else f"{r.finished_at:%Y-%m-%d %H:%M:%S%z}",
        ]
        for r in rows
    ]
    header = ["id", "description", "total", "pending", "succeeded", "failed", "sealed", "finished"]
    _print_rows(rows, as_json, header, table)


def _print_rows(
    rows: Sequence[DataclassInstance], as_json: bool, header: list[str], table: list[list[str]]
) -> None:
    """``rows`` (records) as one JSON object per line, or ``table`` under ``header``."""
    if not as_json:
        _print_table(header, table)
        return
    for row in rows:
        click.echo(json.dumps(asdict(row), default=str))


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _parse_json(text: str, option: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{option}: nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{option}: expected a JSON {'array' if kind is list else 'object'}")
    return value


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--at {text!r}: not an ISO 8601 time") from None
    if when.utcoffset() is None:
        raise ConfigError(f"--at {text!r}: add a UTC offset, e.g. {text}+00:00")
    return when


def _parse_delay(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise ConfigError(f"--in {text!r}: expected seconds or 30s, 5m, 2h, 1d") from None
    if not 0 <= seconds <= MAX_DELAY:
        raise ConfigError(f"--in {text!r}: must be from 0 seconds to 100 years")
    return seconds


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line")
@_app_option
@click.pass_context
@_handles_errors
def cron(ctx: click.Context, as_json: bool, app_path: str | None) -> None:
    """Cron entries: job, schedule, paused, last run (a tick's or a run now's job), next 3 runs.
    Marked: entries the app's code no longer declares (never enqueued), and entries it declares
    that no worker has registered yet (a worker, but a --burst one, schedules them at start).
    Subcommands pause, resume and run one (registering an entry the app declares)."""
    ctx.obj = _given(ctx.obj, {"app": app_path})
    if ctx.invoked_subcommand is not None:
        return
    app = _load_app(ctx.obj, require_app=True)
    rows = app.list_cron()
    table = [
        [
            _cron_name(r),
            r.job_name,
            r.expression,
            r.timezone,
            "yes" if r.paused else "",
            _cron_last_run(r),
            ", ".join(_local_time(t, r.timezone) for t in r.next_runs),
        ]
        for r in rows
    ]
    header = ["name", "job", "expression", "tz", "paused", "last run", "next runs"]
    _print_rows(rows, as_json, header, table)


@cron.command("pause")
@click.argument("name")
@click.pass_obj
@_handles_errors
def cron_pause(obj: dict[str, Any], name: str) -> None:
    """Stop enqueuing entry NAME; its ticks pass without a job until resumed. An entry the app
    declares is registered first if no worker has yet (as with resume and run)."""
    _load_app(obj).pause_cron(name)
    click.echo(f"cron entry {name!r} paused")


@cron.command("resume")
@click.argument("name")
@click.pass_obj
@_handles_errors
def cron_resume(obj: dict[str, Any], name: str) -> None:
    """Enqueue entry NAME again from its next tick on."""
    _load_app(obj).resume_cron(name)
    click.echo(f"cron entry {name!r} resumed")


@cron.command("run")
@click.argument("name")
@click.pass_obj
@_handles_errors
def cron_run(obj: dict[str, Any], name: str) -> None:
    """Enqueue entry NAME's job now (not counted as a tick); prints its id."""
    click.echo(_load_app(obj).run_cron(name))


def _cron_name(row: CronRecord) -> str:
    if not row.in_code:
        return f"{row.name} (not in code)"
    if not row.registered:
        return f"{row.name} (not yet registered)"
    return str(row.name)


def _cron_last_run(row: CronRecord) -> str:
    """When the last job was enqueued, its id, and whether a tick or a run now enqueued it."""
    if row.last_enqueued_at is None:
        return "never"
    kind = f", {row.last_job_kind}" if row.last_job_kind else ""
    when = _local_time(row.last_enqueued_at, row.timezone)
    return f"{when} (job {row.last_job_id}{kind})"


def _local_time(moment: datetime, zone: str) -> str:
    """``moment`` in the entry's zone, to the second."""
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S%z")


@cli.command("queues")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
@click.pass_obj
@_handles_errors
def queues_command(obj: dict[str, Any], as_json: bool) -> None:
    """Queues: paused or not, limits, available and running jobs."""
    rows = _load_app(obj).list_queues()
    table = [
        [
            r.name,
            "yes" if r.paused else "",
            "-" if r.concurrency is None else str(r.concurrency),
            describe_rate(r.rate_limit, r.rate_period),
            r.partition or "-",
            str(r.available),
            str(r.running),
            "yes" if r.held_back else "",
        ]
        for r in rows
    ]
    header = [
        "queue", "paused", "concurrency", "rate", "partition", "available", "running", "held",
    ]  # fmt: skip
    _print_rows(rows, as_json, header, table)


@cli.command("metrics")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=9188, show_default=True, help="0: any free"
)
@click.option(
    "--user", "web_user", help="HTTP basic user (password in PGJOBS_WEB_PASSWORD) [PGJOBS_WEB_USER]"
)
@click.pass_obj
@_handles_errors
def metrics_command(obj: dict[str, Any], host: str, port: int, web_user: str | None) -> None:
    """Serve Prometheus metrics of the jobs on http://HOST:PORT/metrics until stopped.

    Authentication is the dashboard's, and needed anywhere but loopback: HTTP basic with --user
    and the password in PGJOBS_WEB_PASSWORD, or a bearer token in PGJOBS_WEB_TOKEN.
    """
    try:
        import prometheus_client  # noqa: F401

        from .web import serve_metrics, standalone_auth
    except ImportError:
        raise click.UsageError(
            "pgjobs metrics needs prometheus-client and the dashboard's server and "
            "authentication: pip install 'pgjobs[metrics,web]'"
        ) from None
    app = _load_app(_given(obj, {"web_user": web_user}))
    try:
        serve_metrics(app, host, port, auth=_standalone_auth(standalone_auth, app))
    except OSError as exc:
        click.echo(f"Error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except ConfigError as exc:  # no authentication abroad
        _refuse(exc)


@cli.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8188, show_default=True, help="0: any free"
)
@click.option(
    "--user", "web_user", help="HTTP basic user (password in PGJOBS_WEB_PASSWORD) [PGJOBS_WEB_USER]"
)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing")
@_app_option
@click.pass_obj
@_handles_errors
def web_command(
    obj: dict[str, Any],
    host: str,
    port: int,
    web_user: str | None,
    read_only: bool,
    app_path: str | None,
) -> None:
    """Serve the web dashboard on http://HOST:PORT/ until stopped.

    Anywhere but loopback it needs authentication: HTTP basic with --user and the password in
    PGJOBS_WEB_PASSWORD, or a token in PGJOBS_WEB_TOKEN (sent as a bearer token, or typed into
    the sign-in page).
    """
    try:
        from .web import serve, standalone_auth
    except ImportError:
        raise click.UsageError(
            "pgjobs web needs the dashboard's libraries: pip install 'pgjobs[web]'"
        ) from None
    app = _load_app(_given(obj, {"app": app_path, "web_user": web_user}))
    try:
        serve(app, host, port, auth=_standalone_auth(standalone_auth, app), read_only=read_only)
    except OSError as exc:
        click.echo(f"Error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except ConfigError as exc:  # no authentication abroad
        _refuse(exc)


def _standalone_auth(standalone_auth: Callable[[Any], Any], app: App) -> Any:
    """The authentication that ``pgjobs web`` or ``pgjobs metrics`` is given, or exit 2 with one
    line naming the setting to fix."""
    try:
        return standalone_auth(app.settings)
    except ConfigError as exc:
        _refuse(exc)


def _refuse(exc: ConfigError) -> NoReturn:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(2)


@cli.group("queue")
def queue_group() -> None:
    """Pause, resume or limit a queue (stored: it holds for every worker, across restarts)."""


@queue_group.command("pause")
@click.argument("name")
@click.pass_obj
@_handles_errors
def queue_pause(obj: dict[str, Any], name: str) -> None:
    """No worker starts jobs from queue NAME until it is resumed; running jobs finish."""
    _load_app(obj).pause_queue(name)
    click.echo(f"queue {name} paused")


@queue_group.command("resume")
@click.argument("name")
@click.pass_obj
@_handles_errors
def queue_resume(obj: dict[str, Any], name: str) -> None:
    """Workers start jobs from queue NAME again."""
    _load_app(obj).resume_queue(name)
    click.echo(f"queue {name} resumed")


@queue_group.command("limit")
@click.argument("name")
@click.option("--concurrency", type=int, help="Jobs of the queue (or partition) run at once")
@click.option("--rate", help="Starts per period, e.g. 100/1m, 10/2s, 5/h")
@click.option("--partition-by", type=click.Choice(PARTITIONS), help="Limit per job, key or both")
@click.option("--clear", is_flag=True, help="Remove every limit")
@click.pass_obj
@_handles_errors
def queue_limit(
    obj: dict[str, Any],
    name: str,
    concurrency: int | None,
    rate: str | None,
    partition_by: str | None,
    clear: bool,
) -> None:
    """Set queue NAME's limits (the ones not given are cleared), or --clear them all."""
    if clear and (concurrency is not None or rate is not None or partition_by is not None):
        raise ConfigError("--clear removes every limit: give it alone")
    if not clear and concurrency is None and rate is None:
        raise ConfigError("give --concurrency N and/or --rate N/PERIOD, or --clear")
    check_limits(concurrency, rate, partition_by)  # before connecting: bad input writes nothing
    _load_app(obj).set_queue_limits(
        name, concurrency=concurrency, rate=rate, partition_by=partition_by
    )
    click.echo(f"queue {name} limits {'cleared' if clear else 'set'}")
