"""Benchmark timing: percentiles against numpy, summary statistics, warm-up/repeat counts, the CPU clock."""

import time

import numpy as np
import pytest

from tinylm.core.bench import Stopwatch, TimingStats, measure, percentile


@pytest.mark.parametrize("q", [0, 10, 25, 50, 90, 100])
@pytest.mark.parametrize("values", [[3.0], [5.0, 1.0], [4.0, 1.0, 9.0, 2.0, 7.0, 3.5]])
def test_percentile_matches_numpy_linear(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_timing_stats_summaries():
    stats = TimingStats([4.0, 1.0, 3.0, 2.0, 100.0])
    assert stats.median == 3.0  # the outlier does not move the headline number
    assert stats.mean == pytest.approx(22.0)
    assert stats.min == 1.0
    assert stats.p10 == pytest.approx(1.4) and stats.p90 == pytest.approx(61.6)
    d = stats.to_dict()
    assert set(d) == {"median", "p10", "p90", "mean", "min", "all"}
    assert d["all"] == [4.0, 1.0, 3.0, 2.0, 100.0]


def test_measure_runs_warmup_then_repeats_and_times_only_the_repeats():
    calls = []

    def fn():
        calls.append(len(calls))
        time.sleep(0.05 if len(calls) <= 2 else 0.005)  # slow warm-up calls must not be timed

    stats = measure(fn, warmup=2, repeats=4, device="cpu")
    assert len(calls) == 6
    assert len(stats.times_ms) == 4
    assert all(4.5 <= t < 45 for t in stats.times_ms), stats.times_ms


def test_measure_needs_a_repeat():
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, warmup=0, repeats=0)


def test_stopwatch_on_cpu_is_the_wall_clock():
    with Stopwatch("cpu") as sw:
        time.sleep(0.02)
    assert 19 <= sw.ms < 200
