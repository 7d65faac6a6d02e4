"""Each peer in a virtual environment of its own, under ``.bench/venvs/<peer>``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PIP_TIMEOUT = 900.0


class PeerUnavailable(Exception):
    """The peer cannot be installed or started here; the message says why, in one line."""


@dataclass(frozen=True)
class Peer:
    """A system compared with pgjobs: what to install, and the module that drives it."""

    name: str
    requirements: tuple[str, ...]
    distributions: tuple[str, ...]
    """Installed when these distributions are (an existing environment is reused)."""

    @property
    def module(self) -> str:
        return f"tests.benchmarks.peers.{self.name.replace('-', '_')}_bench"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    return (errors or lines or ["no output"])[-1]


def ensure(peer: Peer, root: Path, *, upgrade: bool = False) -> Path:
    """The Python interpreter of ``peer``'s environment, creating or completing it if needed.

    Raises:
        PeerUnavailable: no environment could be made, or pip could not install the peer
            (no network, no wheel for this Python, …).
    """
    venv = root / peer.name
    python = venv / "bin" / "python"
    if not upgrade and python.exists() and _has(python, peer.distributions):
        return python
    if not python.exists():
        base = shutil.which("python3") or sys.executable
        made = subprocess.run(
            [base, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        if made.returncode:
            raise PeerUnavailable(f"python3 -m venv failed: {_last_line(made.stderr)}")
    command = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "20",
        "--upgrade",
        *peer.requirements,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"pip install took more than {PIP_TIMEOUT:g} s") from None
    if done.returncode:
        raise PeerUnavailable(
            f"pip install {' '.join(peer.requirements)}: {_last_line(done.stderr)}"
        )
    if not _has(python, peer.distributions):
        raise PeerUnavailable(f"installed, but {', '.join(peer.distributions)} not importable")
    return python


def _has(python: Path, distributions: tuple[str, ...]) -> bool:
    probe = "import importlib.metadata as m, sys\nfor d in sys.argv[1:]: m.version(d)"
    done = subprocess.run(
        [str(python), "-c", probe, *distributions], capture_output=True, check=False
    )
    return done.returncode == 0
