"""The raw SQL ceilings measured from Python: plain psycopg on a jobs-like table, no queue.

::

    python -m tests.benchmarks.peers.raw_bench MODE --database-url URL [--jobs N]

``install`` creates ``raw_jobs``; ``insert`` runs N single-row INSERTs on one autocommit
connection (one job per transaction); ``copy`` loads N rows with ``COPY … FROM STDIN`` in one
transaction; ``claim`` burns down N pre-filled rows with the loop every SKIP LOCKED queue runs
(claim 100, then mark them done), on one connection. Each prints ``{"seconds": …}``. ``fill``
pre-fills N rows (untimed). The pgbench ceilings use the same table and statements
(:mod:`tests.benchmarks._ceilings`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg

DDL = """
CREATE TABLE raw_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL DEFAULT 'default',
    name text NOT NULL,
    args jsonb NOT NULL DEFAULT '[]',
    state text NOT NULL DEFAULT 'available',
    claimed_by integer,
    inserted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX raw_jobs_available ON raw_jobs (queue, id) WHERE state = 'available';
CREATE INDEX raw_jobs_running ON raw_jobs (claimed_by) WHERE state = 'running';
"""
INSERT = "INSERT INTO raw_jobs (name, args) VALUES ('noop', '[]')"
FILL = "INSERT INTO raw_jobs (name) SELECT 'noop' FROM generate_series(1, %s)"
CLAIM_BATCH = 100
CLAIM = f"""
WITH c AS (
    SELECT id FROM raw_jobs WHERE queue = 'default' AND state = 'available'
    ORDER BY id LIMIT {CLAIM_BATCH} FOR UPDATE SKIP LOCKED
)
UPDATE raw_jobs j SET state = 'running', claimed_by = %s FROM c WHERE j.id = c.id RETURNING j.id
"""
COMPLETE = "UPDATE raw_jobs SET state = 'done' WHERE id = ANY(%s) AND state = 'running'"


def insert(url: str, jobs: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(INSERT)
        start = time.perf_counter()
        for _ in range(jobs):
            conn.execute(INSERT)
        return time.perf_counter() - start


def copy(url: str, jobs: int) -> float:
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY raw_jobs (name, args) FROM STDIN") as rows:
            for _ in range(jobs):
                rows.write_row(("noop", "[]"))
        conn.commit()
        return time.perf_counter() - start


def claim(url: str, jobs: int) -> float:
    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        while True:
            ids = [row[0] for row in conn.execute(CLAIM, (1,))]
            if not ids:
                break
            conn.execute(COMPLETE, (ids,))
            done += len(ids)
        elapsed = time.perf_counter() - start
    if done != jobs:
        raise RuntimeError(f"claimed {done} rows, expected {jobs}")
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="raw SQL ceilings")
    parser.add_argument("mode", choices=("install", "fill", "insert", "copy", "claim"))
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--jobs", type=int, default=1000)
    options = parser.parse_args(argv)
    url, jobs = options.database_url, options.jobs
    result: dict[str, Any] | None = None
    try:
        if options.mode == "install":
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(DDL)
        elif options.mode == "fill":
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(FILL, (jobs,))
        else:
            measure = {"insert": insert, "copy": copy, "claim": claim}[options.mode]
            result = {"jobs": jobs, "seconds": measure(url, jobs)}
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
