"""The embedded PostgreSQL of a CLI run with no database configured: every command stops it on
its way out, however it ends, unless another pgjobs process still uses it.

Each test runs the real ``pgjobs`` in a directory of its own with no database URL in its
environment, so the server's data is in that directory's ``.pgjobs/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PGJOBS, ROOT, eventually


@pytest.fixture
def here(tmp_path: Path) -> Iterator[Path]:
    """An empty working directory; a server a failed test left running there is shut down."""
    yield tmp_path
    for pid in servers_of(tmp_path / ".pgjobs"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)


def environment() -> dict[str, str]:
    """This process's environment without a database URL, with the quickstart's app."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PGJOBS_DATABASE_URL")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["PGJOBS_APP"] = "docs.examples.quickstart:app"
    return env


def pgjobs(here: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PGJOBS, *args],
        cwd=here,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def start_worker(here: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A ``pgjobs worker`` once it listens for jobs, and its log."""
    log = here / f"worker-{len(list(here.glob('worker-*.log')))}.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [PGJOBS, "worker", *args], cwd=here, env=environment(), stdout=out, stderr=out
        )

    def listening() -> bool:
        assert worker.poll() is None, log.read_text()
        return "listening on" in log.read_text()

    eventually(listening, timeout=60)
    return worker, log


def servers_of(data: Path) -> list[int]:
    """Pids of the processes started with ``data`` on their command line: a server of it."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone
            continue
        if str(data).encode() in argv:
            found.append(int(entry.name))
    return found


def holders(data: Path) -> list[int]:
    """The pids recorded as using the server."""
    return list(json.loads((data / ".handle_pids.json").read_text()))


def assert_stopped(here: Path) -> None:
    data = here / ".pgjobs"
    assert not (data / "postmaster.pid").exists()
    assert servers_of(data) == []
    assert holders(data) == []


def test_the_quickstart_leaves_no_server_running(here: Path) -> None:
    result = subprocess.run(
        ["sh", str(ROOT / "docs/examples/quickstart.sh")],
        cwd=here,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "using embedded PostgreSQL in ./.pgjobs/" in result.stderr
    assert result.stdout.splitlines()[-1].split()[:6] == ["default", "0", "0", "0", "0", "2"]
    assert_stopped(here)


def test_every_way_out_of_a_command_stops_the_server(here: Path) -> None:
    assert pgjobs(here, "migrate").returncode == 0
    assert_stopped(here)

    # bad input, found once the server runs: exit 2
    refused = pgjobs(here, "enqueue", "no.such.job")
    assert refused.returncode == 2, refused.stderr
    assert "no job named 'no.such.job'" in refused.stderr
    assert_stopped(here)

    # a worker stopped by SIGTERM
    worker, log = start_worker(here)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, log.read_text()
    assert_stopped(here)

    # a supervisor and its worker processes
    assert pgjobs(here, "enqueue", "greet", "--args", '["world"]').returncode == 0
    burst = pgjobs(here, "worker", "--burst", "--processes", "2")
    assert burst.returncode == 0, burst.stderr
    assert "hello, world" in burst.stderr
    assert_stopped(here)

    # a worker killed outright cannot let go; the next command forgets it, and stops the server
    worker, log = start_worker(here)
    worker.kill()
    worker.wait(timeout=60)
    assert servers_of(here / ".pgjobs") != []
    assert holders(here / ".pgjobs") == [worker.pid]
    stats = pgjobs(here, "stats")
    assert stats.returncode == 0, stats.stderr
    assert_stopped(here)


def test_an_app_whose_database_url_is_none_uses_the_embedded_server(here: Path) -> None:
    """``App(database_url=os.environ.get("DATABASE_URL"))`` with the variable unset."""
    (here / "unset_url.py").write_text(
        "import os\n"
        "import pgjobs\n"
        "app = pgjobs.App(database_url=os.environ.get('DATABASE_URL'))\n"
        "@app.job(name='hello')\n"
        "def hello() -> None: ...\n"
    )
    assert pgjobs(here, "migrate").returncode == 0
    result = pgjobs(here, "--app", "unset_url:app", "enqueue", "hello")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0
    assert_stopped(here)
