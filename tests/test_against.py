"""The paired-rounds comparison's arithmetic and arguments (running it builds a checkout)."""

from __future__ import annotations

import pytest

from tests.benchmarks.against import REFERENCE, THIS, Round, order, parse, summary


def test_the_order_swaps_every_round() -> None:
    assert [order(i) for i in range(3)] == [
        (THIS, REFERENCE),
        (REFERENCE, THIS),
        (THIS, REFERENCE),
    ]


def test_the_summary_gives_both_medians_and_the_paired_ratios() -> None:
    rounds = [Round(110, 100, THIS), Round(90, 100, REFERENCE), Round(130, 100, THIS)]
    text = summary(rounds, "jobs_per_second")
    assert "| 1 | this | 110 | 100 | 1.100 |" in text
    assert "median this: 110" in text
    assert "median reference: 100" in text
    assert "paired ratio: median 1.100, min 0.900, max 1.300; this ahead in 2 of 3" in text


def test_options_after_the_separator_go_to_the_bench() -> None:
    options = parse(["main", "--database-url", "postgresql://x/y", "--rounds", "3", "--",
                     "--jobs", "50000", "--rounds", "9"])  # fmt: skip
    assert (options.rev, options.rounds) == ("main", 3)
    assert options.bench_args == ["--jobs", "50000", "--rounds", "9"]
    assert parse(["HEAD~1", "--database-url", "postgresql://x/y"]).bench_args == []


def test_rounds_must_be_at_least_one() -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(["main", "--database-url", "postgresql://x/y", "--rounds", "0"])
    assert exit_info.value.code == 2
