"""Finding PostgreSQL's server programs and pgbouncer for the fault tests, on any machine.

Fake installs (folders of executable stubs) stand in for the real ones, so each step of the search
order can be shown to win over the ones after it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.faults.cluster import PG_BIN_VARIABLE, SERVER_PROGRAMS, find_pg_bin
from tests.faults.pgbouncer import find_pgbouncer, require_pgbouncer


def stub(path: Path, body: str = "exit 0") -> Path:
    """An executable shell script at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def server_install(directory: Path) -> Path:
    """A folder with every server program the cluster runs."""
    for name in SERVER_PROGRAMS:
        stub(directory / name)
    return directory


class Installs:
    """One fake install for each step of the search, all present at first."""

    def __init__(self, root: Path) -> None:
        self.override = server_install(root / "override")
        self.pg_config_bin = server_install(root / "pg-config-bin")
        self.pg_config_dir = root / "pg-config"
        stub(self.pg_config_dir / "pg_config", f"echo {self.pg_config_bin}")
        self.on_path = server_install(root / "on-path")
        self.debian = root / "debian"
        server_install(self.debian / "9" / "bin")
        self.debian_newest = server_install(self.debian / "16" / "bin")
        server_install(self.debian / "15" / "bin")
        self.pgserver = server_install(root / "pgserver" / "pginstall" / "bin")
        self.environ = {
            PG_BIN_VARIABLE: str(self.override),
            "PATH": os.pathsep.join([str(self.pg_config_dir), str(self.on_path)]),
        }

    def find(self) -> Path:
        return find_pg_bin(self.environ, self.debian, self.pgserver)


def test_the_search_order_takes_the_first_install_that_has_the_server_programs(
    tmp_path: Path,
) -> None:
    installs = Installs(tmp_path)
    assert installs.find() == installs.override

    del installs.environ[PG_BIN_VARIABLE]
    assert installs.find() == installs.pg_config_bin

    # pg_config of a client-only install: its bindir has no initdb, so the search goes on
    (installs.pg_config_bin / "initdb").unlink()
    assert installs.find() == installs.on_path

    installs.environ["PATH"] = str(installs.pg_config_dir)
    assert installs.find() == installs.debian_newest  # 16, not 15, nor 9 by string order

    (installs.debian_newest / "pg_ctl").unlink()
    assert installs.find() == installs.debian / "15" / "bin"

    installs.debian = tmp_path / "no-debian"
    assert installs.find() == installs.pgserver


def test_an_override_without_the_programs_is_an_error_not_skipped(tmp_path: Path) -> None:
    installs = Installs(tmp_path)
    (installs.override / "pg_ctl").chmod(0o644)  # there, but not executable

    with pytest.raises(RuntimeError, match=PG_BIN_VARIABLE):
        installs.find()


def test_nothing_found_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="pip install pgserver"):
        find_pg_bin({"PATH": str(tmp_path)}, tmp_path / "no-debian", None)


def test_pgbouncer_is_found_on_path(tmp_path: Path) -> None:
    program = stub(tmp_path / "bin" / "pgbouncer")

    assert find_pgbouncer({"PATH": str(tmp_path / "bin")}) == program


def test_a_missing_pgbouncer_skips_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tests.faults.pgbouncer.SYSTEM_PATH", str(tmp_path / "sbin"))

    with pytest.raises(pytest.skip.Exception, match="apt-get install pgbouncer"):
        require_pgbouncer({"PATH": str(tmp_path)})


def test_a_missing_pgbouncer_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.faults.pgbouncer.SYSTEM_PATH", str(tmp_path / "sbin"))

    with pytest.raises(pytest.fail.Exception, match="brew install pgbouncer"):
        require_pgbouncer({"PATH": str(tmp_path), "CI": "true"})
