"""Measure this checkout against a reference commit in paired, alternated rounds.

Usage, from the repository root with its virtual environment::

    .venv/bin/python -m tests.benchmarks.against REV \\
        --database-url postgresql://postgres@127.0.0.1:5432/test \\
        [--rounds 8] [--mode process] [-- --jobs 50000 --processes 1 --concurrency 1000]

``REV`` (a commit, a branch, ``main``…) is checked out into a temporary worktree with a virtual
environment of its own (``pip install -e '.[binary]'``, as this checkout's should be: without
psycopg's binary build the figures drop by a fifth); both are removed at the end (``--keep``
keeps them under ``.bench/against/<commit>``, where a later run reuses them).

Each round runs ``pgjobs bench MODE --json`` once with each checkout, one after the other, the
order swapped every round so the machine's drift hits both alike; everything after ``--`` goes
to both commands. It prints each round, both medians, and each round's ratio (this ÷ reference)
with their median and how many rounds this checkout won. The figure compared is
``jobs_per_second`` unless ``--figure`` names another key of the bench's JSON output.

Exit status: 0; 1 if a bench run failed; 2 for bad arguments or a reference that cannot be built.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
THIS = "this"
REFERENCE = "reference"


class BuildError(Exception):
    """The reference checkout or its environment could not be made; the message says why."""


@dataclass(frozen=True)
class Round:
    """One paired round: the figure of each checkout, and which ran first."""

    this: float
    reference: float
    first: str

    @property
    def ratio(self) -> float:
        return self.this / self.reference if self.reference else float("inf")


def order(index: int) -> tuple[str, str]:
    """Who runs first in round ``index`` (from 0): this checkout in even rounds."""
    return (THIS, REFERENCE) if index % 2 == 0 else (REFERENCE, THIS)


def summary(rounds: Sequence[Round], figure: str) -> str:
    """The rounds, both medians and the paired ratios, as a Markdown table and a few lines."""
    lines = [
        f"| round | first | this {figure} | reference {figure} | this ÷ reference |",
        "|---|---|---|---|---|",
    ]
    for number, item in enumerate(rounds, 1):
        lines.append(
            f"| {number} | {item.first} | {item.this:,.0f} | {item.reference:,.0f} "
            f"| {item.ratio:.3f} |"
        )
    ratios = [item.ratio for item in rounds]
    wins = sum(ratio > 1 for ratio in ratios)
    lines += [
        "",
        f"median this: {statistics.median(item.this for item in rounds):,.0f}",
        f"median reference: {statistics.median(item.reference for item in rounds):,.0f}",
        f"paired ratio: median {statistics.median(ratios):.3f}, "
        f"min {min(ratios):.3f}, max {max(ratios):.3f}; this ahead in {wins} of {len(ratios)}",
    ]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.against",
        description="pgjobs bench, this checkout against a reference commit, in paired rounds.",
    )
    parser.add_argument("rev", metavar="REV", help="the reference commit (any git revision)")
    parser.add_argument("--database-url", required=True, help="postgresql:// URL of the server")
    parser.add_argument("--mode", default="process", help="the pgjobs bench mode [process]")
    parser.add_argument("--rounds", type=int, default=8, help="paired rounds [8]")
    parser.add_argument("--figure", default="jobs_per_second", help="the JSON key compared")
    parser.add_argument("--keep", action="store_true", help="keep the reference's environment")
    parser.add_argument("--bench-dir", type=Path, default=REPO / ".bench")
    parser.epilog = "Options after -- go to both pgjobs bench commands."
    args = list(sys.argv[1:] if argv is None else argv)
    bench_args = args[args.index("--") + 1 :] if "--" in args else []
    options = parser.parse_args(args[: len(args) - len(bench_args) - ("--" in args)])
    options.bench_args = bench_args
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    return options


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BuildError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def build(rev: str, root: Path) -> Path:
    """The ``pgjobs`` command of ``rev`` checked out under ``root`` (reused if there)."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = root / commit
    command = tree / ".venv" / "bin" / "pgjobs"
    if command.exists():
        return command
    if tree.exists():
        _git("worktree", "remove", "--force", str(tree))
    _git("worktree", "add", "--detach", str(tree), commit)
    steps = (
        [sys.executable, "-m", "venv", str(tree / ".venv")],
        [str(tree / ".venv" / "bin" / "pip"), "install", "-q", "-e", ".[binary]"],
    )
    for step in steps:
        done = subprocess.run(step, cwd=tree, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise BuildError(f"{' '.join(step[:3])}: {lines[-1]}")
    return command


def bench(command: Path, options: argparse.Namespace) -> float:
    """One ``pgjobs bench`` run's figure."""
    env = {**os.environ, "PGJOBS_DATABASE_URL": options.database_url}
    done = subprocess.run(
        [str(command), "bench", options.mode, "--json", *options.bench_args],
        capture_output=True,
        text=True,
        env=env,
        cwd=command.parents[2],  # ``python -m pgjobs`` (its worker) imports from there
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command} bench failed:\n{done.stderr.strip()}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result[options.figure])


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    this = Path(sys.executable).parent / "pgjobs"
    root = (
        options.bench_dir / "against"
        if options.keep
        else Path(tempfile.mkdtemp(prefix="pgjobs-against-"))
    )
    root.mkdir(parents=True, exist_ok=True)
    try:
        try:
            reference = build(options.rev, root)
        except BuildError as exc:
            print(f"error: cannot build {options.rev}: {exc}", file=sys.stderr)
            return 2
        commands = {THIS: this, REFERENCE: reference}
        rounds: list[Round] = []
        for index in range(options.rounds):
            figures: dict[str, float] = {}
            for who in order(index):
                figures[who] = bench(commands[who], options)
            rounds.append(Round(figures[THIS], figures[REFERENCE], order(index)[0]))
            print(
                f"round {index + 1}: this {figures[THIS]:,.0f}, "
                f"reference {figures[REFERENCE]:,.0f}",
                file=sys.stderr,
            )
        print(summary(rounds, options.figure))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not options.keep:
            for tree in root.iterdir():
                _git("worktree", "remove", "--force", str(tree))
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
