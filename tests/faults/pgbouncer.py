"""pgbouncer in front of a test's PostgreSQL, to check pgjobs behind a transaction pooler.

In ``pool_mode=transaction`` consecutive transactions of one client may run on different server
connections, so session state (advisory locks, LISTEN, prepared statements, SET) is not to be
trusted there. pgbouncer runs as a foreground child (so stopping it is ``terminate()``) with its
files in a temporary directory; when we are root it runs as the ``postgres`` user, which it needs.

pgbouncer is found on ``PATH`` or in ``/usr/sbin``. Without it the pgbouncer tests are skipped with
what to install, except in CI (``CI=true``), which installs it: there a missing pgbouncer fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg
import pytest

from tests.faults.cluster import free_port, log_tail, owned_tempdir, postgres_user

SYSTEM_PATH = "/usr/sbin"
"""Where Debian's package puts pgbouncer, often not on a user's ``PATH``."""
INSTALL_HINT = "install pgbouncer (apt-get install pgbouncer, brew install pgbouncer)"


def find_pgbouncer(environ: Mapping[str, str] = os.environ) -> Path | None:
    """pgbouncer on ``PATH``, else in :data:`SYSTEM_PATH`; None when there is none."""
    found = shutil.which("pgbouncer", path=environ.get("PATH", "")) or shutil.which(
        "pgbouncer", path=SYSTEM_PATH
    )
    return None if found is None else Path(found)


def require_pgbouncer(environ: Mapping[str, str] = os.environ) -> Path:
    """The pgbouncer program; skips the test when there is none, or fails it in CI."""
    found = find_pgbouncer(environ)
    if found is not None:
        return found
    message = f"pgbouncer not found on PATH or in {SYSTEM_PATH}: {INSTALL_HINT}"
    if environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: CI must run the pgbouncer tests)")
    pytest.skip(message)


# Startup parameters pgbouncer would otherwise refuse with "unsupported startup parameter".
# application_name needs no entry: pgbouncer tracks it (with client_encoding, DateStyle,
# TimeZone, standard_conforming_strings) and passes it on. libpq sends options only when
# PGOPTIONS or options= is set; pgbouncer drops ignored ones rather than passing them on.
IGNORE_STARTUP_PARAMETERS = "extra_float_digits,options"


class PgBouncer:
    """One pgbouncer process pooling connections to ``host``:``port`` (any database name)."""

    def __init__(self, host: str, port: int, pool_mode: str = "transaction") -> None:
        self.host = host
        self.target_port = port
        self.pool_mode = pool_mode
        self.port = 0
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        assert self.root is not None, "PgBouncer.start() first"
        return self.root / "pgbouncer.log"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}?sslmode=disable"

    def start(self, timeout: float = 15.0) -> PgBouncer:
        """Start pgbouncer and return once a client can connect through it to the server."""
        program = require_pgbouncer()
        self.root = owned_tempdir("pgjobs-pgbouncer-")
        self.port = free_port()
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.host} port={self.target_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            "default_pool_size = 4\n"
            "max_client_conn = 200\n"
            f"ignore_startup_parameters = {IGNORE_STARTUP_PARAMETERS}\n"
            "server_login_retry = 1\n"
        )
        user, group, extra_groups = _postgres_ids()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(program), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate pgbouncer (killing it if it lingers) and delete its files."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_until_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with {self.process.returncode}:\n{log_tail(self.log)}"
                )
            try:
                with psycopg.connect(
                    self.url_for("postgres"), connect_timeout=2, prepare_threshold=None
                ) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pgbouncer on port {self.port} did not accept a connection within "
                        f"{timeout} s: {exc}\n{log_tail(self.log)}"
                    ) from exc
            time.sleep(0.05)


def _postgres_ids() -> tuple[int | None, int | None, list[int] | None]:
    """Popen's ``user``, ``group`` and ``extra_groups`` to run as ``postgres`` when we are root.

    pgbouncer refuses root. Switching user in Popen rather than through runuser lets
    ``terminate()`` reach pgbouncer itself; runuser would linger 2 s after passing it on.
    """
    if os.geteuid() != 0:
        return None, None, None
    user = postgres_user()
    return user.pw_uid, user.pw_gid, []
