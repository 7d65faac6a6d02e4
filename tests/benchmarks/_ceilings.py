"""The raw SQL ceilings printed beside the systems: what PostgreSQL itself does on this machine
with a jobs-like table (``raw_jobs``, see :mod:`tests.benchmarks.peers.raw_bench`) and no queue.

- enqueue: ``pgbench`` running one INSERT per transaction, 1 client, for ``ceiling_seconds``;
  and the same INSERT from one psycopg connection in a loop (N = the enqueue size).
- bulk: ``COPY … FROM STDIN`` of N rows from psycopg (N = the bulk size), commit included.
- process: ``pgbench`` running "claim 100 with ``FOR UPDATE SKIP LOCKED``, then mark them
  done" (two transactions) over a pre-filled table, with 1 and with 4 clients, for
  ``ceiling_seconds``; and the same loop from one psycopg connection burning down N rows.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.benchmarks._database import Server, settle
from tests.benchmarks._measure import Sample, Sizes
from tests.benchmarks._processes import StepFailed, run
from tests.benchmarks.peers import raw_bench

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
NAME = "raw"

INSERT_SCRIPT = f"{raw_bench.INSERT};\n"
CLAIM_SCRIPT = (
    " ".join(raw_bench.CLAIM.replace("%s", ":client_id").split())
    + ";\nUPDATE raw_jobs SET state = 'done' WHERE claimed_by = :client_id AND state = 'running';\n"
)
ROWS_PER_SECOND = 120_000
"""Rows pre-filled per second of a pgbench claim run: more than 4 clients burn here."""

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_TRANSACTIONS = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


def find_pgbench(given: str | None) -> Path | None:
    """``given``, else PostgreSQL 15's pgbench, else the one on PATH."""
    if given:
        return Path(given)
    if PGBENCH.exists():
        return PGBENCH
    found = shutil.which("pgbench")
    return Path(found) if found else None


class Ceilings:
    """Measures the raw ceilings for one benchmark at a time, each in a fresh database."""

    def __init__(
        self, server: Server, python: Path, logs: Path, sizes: Sizes, pgbench: Path | None
    ) -> None:
        self.server = server
        self.python = python
        self.logs = logs
        self.sizes = sizes
        self.pgbench = pgbench

    def measure(self, benchmark: str, run_number: int) -> list[Sample]:
        if benchmark == "enqueue":
            samples = [self._psycopg(run_number, "insert", self.sizes.enqueue_jobs)]
            if self.pgbench:
                samples.append(self._pgbench_insert(run_number))
            return samples
        if benchmark == "bulk":
            return [self._psycopg(run_number, "copy", self.sizes.bulk_jobs)]
        if benchmark == "process":
            samples = [self._psycopg(run_number, "claim", self.sizes.jobs)]
            if self.pgbench:
                samples += [self._pgbench_claim(run_number, clients) for clients in (1, 4)]
            return samples
        return []

    def _raw(self, mode: str, url: str, jobs: int, run_number: int) -> dict[str, float]:
        command = [str(self.python), "-m", raw_bench.__name__, mode, "--database-url", url]
        return run(
            f"r{run_number}-{NAME}-{mode}",
            [*command, "--jobs", str(jobs)],
            self.logs,
            self.sizes.timeout,
        )

    def _psycopg(self, run_number: int, mode: str, jobs: int) -> Sample:
        benchmark = {"insert": "enqueue", "copy": "bulk", "claim": "process"}[mode]
        with self.server.database(NAME) as url:
            self._raw("install", url, 0, run_number)
            if mode == "claim":
                self._raw("fill", url, jobs, run_number)
                settle(url)
            found = self._raw(mode, url, jobs, run_number)
        metric = {"insert": "psycopg_insert", "copy": "copy", "claim": "psycopg_claim"}[mode]
        return Sample(run_number, benchmark, NAME, metric, jobs / found["seconds"])

    def _pgbench(self, url: str, name: str, script: str, clients: int) -> tuple[float, int]:
        assert self.pgbench is not None
        path = self.logs / f"{name}.sql"
        path.write_text(script)
        command = [str(self.pgbench), "-n", "-M", "prepared", "-c", str(clients)]
        command += ["-j", str(clients), "-T", f"{self.sizes.ceiling_seconds:g}", "-f", str(path)]
        try:
            done = subprocess.run(
                [*command, url],
                capture_output=True,
                text=True,
                timeout=self.sizes.ceiling_seconds + 60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{name}: pgbench did not finish") from None
        (self.logs / f"{name}.out").write_text(done.stdout + done.stderr)
        tps, transactions = _TPS.search(done.stdout), _TRANSACTIONS.search(done.stdout)
        if done.returncode or not tps or not transactions:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise StepFailed(f"{name}: pgbench exited {done.returncode}: {lines[-1]}")
        return float(tps[1]), int(transactions[1])

    def _pgbench_insert(self, run_number: int) -> Sample:
        with self.server.database(NAME) as url:
            self._raw("install", url, 0, run_number)
            tps, _ = self._pgbench(url, f"r{run_number}-raw-pgbench-insert", INSERT_SCRIPT, 1)
        return Sample(run_number, "enqueue", NAME, "pgbench_insert_1", tps)

    def _pgbench_claim(self, run_number: int, clients: int) -> Sample:
        rows = max(50_000, int(self.sizes.ceiling_seconds * ROWS_PER_SECOND))
        with self.server.database(NAME) as url:
            self._raw("install", url, 0, run_number)
            self._raw("fill", url, rows, run_number)
            settle(url)
            tps, transactions = self._pgbench(
                url, f"r{run_number}-raw-pgbench-claim-{clients}", CLAIM_SCRIPT, clients
            )
            with psycopg.connect(url) as conn:
                done, left = conn.execute(
                    "SELECT count(*) FILTER (WHERE state = 'done'), "
                    "count(*) FILTER (WHERE state = 'available') FROM raw_jobs"
                ).fetchone() or (0, 0)
        # each pgbench transaction is one claim + complete: jobs/s = tps x rows per claim
        rate = tps * done / transactions if transactions else 0.0
        if left == 0:
            print(
                f"    pgbench claim, {clients} client(s): the table ran dry; a lower bound",
                file=sys.stderr,
            )
        return Sample(
            run_number,
            "process",
            NAME,
            f"pgbench_claim_{clients}",
            rate,
            {"tps": tps, "rows_left": left, "ran_dry": left == 0},
        )
