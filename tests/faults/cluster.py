"""A throwaway PostgreSQL cluster that one test owns, so it may stop, crash or restart it.

Fault tests cannot share the suite's server: a restart or ``-m immediate`` stop would break every
other test. Each cluster is a copy of one initdb'd template (initdb runs once per session), listens
on its own free loopback port, and lives in a temporary directory that is deleted afterwards.
PostgreSQL refuses to run as root, so when we are root its programs run as the ``postgres`` user.

The server programs (``initdb``, ``pg_ctl``) are found by :func:`find_pg_bin`, first match wins:
``$PGJOBS_PG_BIN``; ``pg_config --bindir``; ``initdb`` on ``PATH``; the newest of Debian's
``/usr/lib/postgresql/*/bin``; the ``pgserver`` wheel's own (the test extra installs it).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql

PG_BIN_VARIABLE = "PGJOBS_PG_BIN"
"""Environment variable naming the folder of the server programs (overrides the search)."""
SERVER_PROGRAMS = ("initdb", "pg_ctl", "pg_isready")
DEBIAN_ROOT = Path("/usr/lib/postgresql")
OS_USER = "postgres"
ADMIN_APPLICATION_NAME = "pgjobs-faults-admin"

StopMode = Literal["smart", "fast", "immediate"]


def has_server_programs(directory: Path) -> bool:
    """Whether ``directory`` holds every one of :data:`SERVER_PROGRAMS`, executable."""
    return all(os.access(directory / name, os.X_OK) for name in SERVER_PROGRAMS)


def pgserver_bin() -> Path | None:
    """The ``pgserver`` wheel's folder of PostgreSQL programs, without importing the wheel."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def pg_bin_candidates(
    environ: Mapping[str, str], debian_root: Path, pgserver: Path | None
) -> Iterator[tuple[str, Path]]:
    """(where it came from, folder) of each place server programs may be, in search order."""
    if environ.get(PG_BIN_VARIABLE):
        yield f"${PG_BIN_VARIABLE}", Path(environ[PG_BIN_VARIABLE])
    path = environ.get("PATH", "")
    pg_config = shutil.which("pg_config", path=path)
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode == 0 and result.stdout.strip():
            yield "pg_config --bindir", Path(result.stdout.strip())
    initdb = shutil.which("initdb", path=path)
    if initdb is not None:
        yield "PATH", Path(initdb).parent
    versions = [d for d in debian_root.glob("*/bin") if d.parent.name.isdigit()]
    for directory in sorted(versions, key=lambda d: int(d.parent.name), reverse=True):
        yield str(debian_root), directory
    if pgserver is not None:
        yield "pgserver", pgserver


def find_pg_bin(
    environ: Mapping[str, str] = os.environ,
    debian_root: Path = DEBIAN_ROOT,
    pgserver: Path | None = None,
) -> Path:
    """The first folder with :data:`SERVER_PROGRAMS` (the module docstring has the order).

    A ``$PGJOBS_PG_BIN`` without them is an error rather than skipped: it was asked for.
    """
    for source, directory in pg_bin_candidates(environ, debian_root, pgserver):
        if has_server_programs(directory):
            return directory
        if source == f"${PG_BIN_VARIABLE}":
            raise RuntimeError(
                f"${PG_BIN_VARIABLE}={directory} lacks one of {', '.join(SERVER_PROGRAMS)}"
            )
    raise RuntimeError(
        f"no PostgreSQL server programs ({', '.join(SERVER_PROGRAMS)}) found: install PostgreSQL "
        "(apt-get install postgresql, brew install postgresql), set "
        f"${PG_BIN_VARIABLE} to their folder, or pip install pgserver (the test extra)"
    )


@functools.cache
def pg_bin() -> Path:
    """The folder of the server programs the fault tests run, found once per session."""
    return find_pg_bin(pgserver=pgserver_bin())


def as_postgres(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` OS user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", OS_USER, "--", *argv]
    return argv


def owned_tempdir(prefix: str) -> Path:
    """A new temporary directory that the user running PostgreSQL (or pgbouncer) can write."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    give_to_postgres(path)
    return path


def postgres_user() -> pwd.struct_passwd:
    """The OS user PostgreSQL runs as when we are root."""
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, the fault tests run PostgreSQL as the OS user {OS_USER!r}, "
            f"which does not exist: create it (useradd --system {OS_USER}) or run as another user"
        ) from None


def give_to_postgres(path: Path) -> None:
    """Hand ``path`` to the ``postgres`` OS user when we are root; otherwise it is ours already."""
    if os.geteuid() == 0:
        user = postgres_user()
        os.chown(path, user.pw_uid, user.pw_gid)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run_checked(argv: list[str], what: str, log: Path | None = None, timeout: float = 60) -> None:
    """Run ``argv``; on failure raise with its output and the tail of ``log``."""
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        message = f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n"
        message += f"{result.stdout}{result.stderr}"
        if log is not None:
            message += f"\n--- {log} ---\n{log_tail(log)}"
        raise RuntimeError(message)


def init_template(directory: Path) -> Path:
    """initdb into ``directory/data`` (``directory`` must be writable by PostgreSQL's user)."""
    data = directory / "data"
    run_checked(
        as_postgres(
            [
                str(pg_bin() / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        ),
        "initdb",
        timeout=120,
    )
    return data


class Cluster:
    """One PostgreSQL server, copied from ``template``, that the test may restart or crash.

    The port stays the same across ``restart()``, so URLs taken before a restart still work after.
    """

    def __init__(self, template: Path) -> None:
        self.root = owned_tempdir("pgjobs-cluster-")
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "postgresql.log"
        self.port = free_port()
        # cp -a keeps the postgres ownership and the 0700 mode PostgreSQL insists on.
        try:
            run_checked(["cp", "-a", str(template), str(self.data)], "copying the template")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.sockets.mkdir()
        give_to_postgres(self.sockets)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
            "fsync": "on",
            "max_connections": "200",
        }
        # Appending keeps the file's owner, which cp -a preserved.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/faults/cluster.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        self._pg_ctl("start", "-l", str(self.log))
        run_checked(
            [
                str(pg_bin() / "pg_isready"),
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"),
                *("-t", "30"),
            ],
            "pg_isready",
            self.log,
        )

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server; ``immediate`` is a crash (no checkpoint, recovery on next start)."""
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop with ``mode`` and start again on the same port."""
        self.stop(mode)
        self.start()

    def terminate_backends(self, application_name_like: str) -> int:
        """Terminate backends whose ``application_name`` is LIKE the pattern; return how many.

        Waits (up to 5 s each) until each backend has exited, so the next query on a terminated
        connection fails rather than racing the signal.
        """
        with psycopg.connect(
            self.url, autocommit=True, application_name=ADMIN_APPLICATION_NAME
        ) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
                " FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                [application_name_like],
            ).fetchone()
        assert row is not None
        count: int = row[0]
        return count

    def create_database(self, name: str) -> None:
        with psycopg.connect(
            self.url, autocommit=True, application_name=ADMIN_APPLICATION_NAME
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def remove(self) -> None:
        """Crash-stop the server if it runs, and delete its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        except RuntimeError:
            pass  # no server behind a stale pid file: nothing left to stop
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _pg_ctl(self, *args: str) -> None:
        argv = [str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args]
        run_checked(as_postgres(argv), f"pg_ctl {args[0]}", self.log, timeout=90)
