"""Percentiles in `make bench` reports: never quoted from fewer values than they need; missing values counted."""

from __future__ import annotations

import pytest

from bench import stats
from bench.stats import summary

pytestmark = pytest.mark.unit


def test_p95_and_p99_need_20_and_100_values() -> None:
    assert [stats.min_samples(q) for q in (50, 90, 95, 99)] == [1, 10, 20, 100]


def test_summary_of_a_few_values_gives_no_p95_and_says_why() -> None:
    s = summary([563.0, 737.0, 500.0, 610.0])
    assert s["n"] == 4 and s["p50"] == pytest.approx(586.5) and s["max"] == 737.0
    assert s["p95"] is None and s["p99"] is None
    assert s["omitted"] == {"p95": "n too small (4 < 20)", "p99": "n too small (4 < 100)"}


def test_summary_reports_p95_from_20_values_and_p99_from_100() -> None:
    s20 = summary(float(x) for x in range(20))
    assert s20["p95"] == pytest.approx(18.05, abs=0.06) and s20["p99"] is None and set(s20["omitted"]) == {"p99"}
    s100 = summary(float(x) for x in range(100))
    assert s100["p99"] == pytest.approx(98.01, abs=0.06) and "omitted" not in s100


def test_summary_counts_missing_values_and_leaves_them_out() -> None:
    s = summary([100.0, None, 300.0, None])
    assert s["n"] == 2 and s["missing"] == 2 and s["mean"] == 200.0 and s["min"] == 100.0
    empty = summary([None, None])
    assert empty["n"] == 0 and empty["missing"] == 2 and empty["p50"] is None and "omitted" not in empty
