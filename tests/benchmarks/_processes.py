"""Child processes of the comparison: each measured step and each worker runs in its own, with
its output in a log file; and the resident memory of a worker's process tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
"""Every child runs here, so ``python -m tests.benchmarks.peers.…`` finds its module."""


class StepFailed(Exception):
    """A measured step or a worker failed; the message is one line naming it and why."""


class Child:
    """A child process in a session of its own (so it and its children can be stopped
    together), writing to ``<logs>/<name>.out`` and ``.err``."""

    def __init__(
        self, name: str, command: list[str], logs: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.out_path = logs / f"{name}.out"
        self.err_path = logs / f"{name}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for the step to end; its JSON result (``{}`` if it printed none)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise StepFailed(f"{self.name}: no result within {timeout:g} s") from None
        except BaseException:  # interrupted: its own session does not get the Ctrl-C
            self.kill()
            raise
        return self.result()

    def result(self) -> dict[str, Any]:
        code = self.process.returncode
        if code:
            raise StepFailed(f"{self.name} exited {code}: {self.reason()}")
        for line in reversed(self.out_path.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
        return {}

    def reason(self) -> str:
        """The line of the error output that says what went wrong."""
        lines = [
            line.strip()
            for line in self.err_path.read_text(errors="replace").splitlines()
            if line.strip()
        ]
        marked = [line for line in lines if line.startswith("error:")]
        if marked:
            return marked[-1].removeprefix("error:").strip()
        return lines[-1] if lines else "no error output"

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM to the process (a supervisor passes it on), then SIGKILL to its session."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def rss_mb(self, *, descendants_only: bool = False) -> float | None:
        """Resident memory of this process and all its descendants (or of its descendants
        alone), in MB; ``None`` if there are none."""
        total = 0
        for pid in _tree(self.pid)[1 if descendants_only else 0 :]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024 if total else None


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return pids


def run(
    name: str, command: list[str], logs: Path, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one step to its end; its JSON result."""
    return Child(name, command, logs, env).wait(timeout)
