"""The bootstrap interval of a median: reproducible, around the median, and narrower with more values."""

from __future__ import annotations

import statistics

import pytest

from eep_testkit.stats import bootstrap_median_ci


def test_the_interval_is_reproducible_and_holds_the_median() -> None:
    values = [1.0 + 0.01 * ((i * 7) % 13) for i in range(60)]
    low, high = bootstrap_median_ci(values)
    assert bootstrap_median_ci(values) == [low, high]
    assert min(values) <= low <= statistics.median(values) <= high <= max(values)


def test_more_values_narrow_it() -> None:
    few = [1.0 + 0.01 * ((i * 7) % 13) for i in range(13)]
    low, high = bootstrap_median_ci(few)
    wide_low, wide_high = bootstrap_median_ci(few * 20)
    assert high - low > wide_high - wide_low


def test_one_value() -> None:
    assert bootstrap_median_ci([1.5]) == [1.5, 1.5]


def test_no_values() -> None:
    with pytest.raises(statistics.StatisticsError):
        bootstrap_median_ci([])
