"""``pgjobs bench`` runs every mode on a real database, prints its figures and leaves no trace.

It asserts no timing: speed is measured by the command, not judged by the tests.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.helpers import run_cli

ALSO_REPORTED = {
    "steady": {"enqueued", "max_backlog", "backlog_at_end", "unreported"},
    "scale": {"claim_plan_indexes", "claim_plan_seq_scan", "claim_plan"},
}
"""Figures that may well be zero, false or text: present, not positive."""


@pytest.mark.parametrize(
    ("args", "figures"),
    [
        (
            ["enqueue", "--jobs", "40"],
            {"jobs_per_second", "bare_insert_per_second", "ratio_notify_on_to_off"},
        ),
        (["bulk", "--jobs", "600"], {"jobs_per_second"}),
        (
            ["enqueue", "--jobs", "40", "--unique"],
            {"jobs_per_second", "unique_per_second", "ratio_unique_to_plain"},
        ),
        (["bulk", "--jobs", "600", "--unique"], {"jobs_per_second"}),
        (["process", "--jobs", "50", "--processes", "1", "--unique"], {"ratio_unique_to_plain"}),
        (["process", "--jobs", "200", "--processes", "2"], {"jobs_per_second"}),
        (["process", "--jobs", "300", "--processes", "1", "--async-jobs"], {"jobs_per_second"}),
        (
            ["process", "--jobs", "100", "--processes", "1", "--limit", "--unique"],
            {"ratio_limited_to_plain", "ratio_unique_to_plain"},
        ),
        (["latency", "--samples", "5"], {"p50_ms", "p99_ms"}),
        (
            ["steady", "--rate", "200", "--duration", "2"],
            {"offered_per_second", "completed_per_second", "p50_ms", "p95_ms", "p99_ms", "max_ms"},
        ),
        (
            ["rate", "--rate", "10", "--duration", "2"],
            {"configured_per_second", "sustained_per_second", "max_in_any_window"},
        ),
        (
            ["rate", "--rate", "5", "--duration", "2", "--partitions", "2"],
            {"partitions", "sustained_per_second", "ratio_to_configured", "max_in_any_window"},
        ),
        (
            ["scale", "--available", "500", "--finished", "1000", "--samples", "8"],
            {
                "fill_seconds",
                *(
                    f"claim_{limit}_{figure}"
                    for limit in (1, 100)
                    for figure in ("p50_ms", "p99_ms", "max_ms")
                ),
            },
        ),
        (
            ["pages", "--available", "300", "--finished", "1000", "--samples", "2"],
            {
                "fill_seconds",
                "slowest_page_max_ms",
                *(
                    f"{page} {figure}"
                    for page in ("/", "/queues", "/jobs?state=available (page 2)", "/jobs/<id>")
                    for figure in ("p50_ms", "max_ms")
                ),
            },
        ),
    ],
)
def test_bench_modes_report_their_figures_and_drop_their_schema(
    args: list[str], figures: set[str], database_url: str, db: psycopg.Connection[Any]
) -> None:
    result = run_cli(database_url, "--log-level", "WARNING", "bench", *args, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == args[0]
    assert figures <= report.keys()
    assert all(report[name] > 0 for name in figures), report
    assert ALSO_REPORTED.get(args[0], set()) <= report.keys()
    if "jobs" in report:
        assert report["jobs"] == int(args[2])
    schemas = db.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgjobs_bench'"
    ).fetchone()
    assert schemas == (0,)
    assert db.execute("SELECT count(*) FROM pgjobs.jobs").fetchone() == (0,)  # yours untouched


def test_bench_table_output(database_url: str) -> None:
    result = run_cli(database_url, "bench", "bulk", "--jobs", "10")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["figure", "value"]
    assert any(line.split()[:2] == ["jobs", "10"] for line in lines)
