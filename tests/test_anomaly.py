"""Anomaly score v1 on known series, and the mid-p against hand computations."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from app.anomaly import MIN_HISTORY, fit_history, score_count, score_series

T0 = datetime(2019, 1, 1, tzinfo=UTC)


def _series(n: int = 60, seed: int = 0) -> tuple[list[datetime], list[int]]:
    rng = np.random.default_rng(seed)
    counts = [int(c) for c in np.clip(rng.poisson(15, n), 5, 30)]
    times = [T0 + timedelta(days=30 * i) for i in range(n)]
    return times, counts


def test_spike_scores_high_and_exceeds_history() -> None:
    times, counts = _series()
    when = T0 + timedelta(days=1826)
    s = score_count(73, counts, times, when)
    assert s.score is not None and s.score > 3
    assert s.exceeds_history_max is True
    assert s.history_size == 60
    assert s.history_max == max(counts)
    assert s.history_span_days == pytest.approx(1826.0)
    assert s.reason == "highest in 1826 days of history"
    assert s.expected == pytest.approx(np.mean(counts), abs=1e-3)


def test_typical_value_scores_low() -> None:
    times, counts = _series()
    s = score_count(int(np.median(counts)), counts, times, T0 + timedelta(days=1800))
    assert s.score is not None and s.score < 1
    assert s.exceeds_history_max is False
    assert s.reason == "within history"


def test_low_value_reason() -> None:
    times, counts = _series()
    s = score_count(0, counts, times, T0 + timedelta(days=1800))
    assert s.reason.startswith("lowest in 1800 days")
    assert s.score is not None and s.score < 0.01  # upper-tail score: a low count is not "high"


@pytest.mark.parametrize("size", [0, 1, MIN_HISTORY - 1])
def test_short_history_gives_null_score_with_reason(size: int) -> None:
    times = [T0 + timedelta(days=i) for i in range(size)]
    s = score_count(50, [10] * size, times, T0 + timedelta(days=100))
    assert s.score is None
    assert str(MIN_HISTORY) in s.reason
    assert s.history_size == size
    if size:
        assert s.exceeds_history_max is True
        assert s.expected == 10.0
        assert s.history_span_days == pytest.approx(100.0)
    else:
        assert s.expected is None and s.history_max is None and s.history_span_days is None


def test_exactly_min_history_is_scored() -> None:
    s = score_count(10, [8, 9, 10, 11, 12, 10, 9, 11])
    assert s.score is not None


def _poisson_mid_p(mu: float, x: int) -> float:
    pmf = [math.exp(-mu) * mu**k / math.factorial(k) for k in range(x + 1)]
    return (1.0 - sum(pmf)) + 0.5 * pmf[x]


def _nbinom_mid_p(n: float, p: float, x: int) -> float:
    def pmf(k: int) -> float:
        return math.exp(math.lgamma(k + n) - math.lgamma(n) - math.lgamma(k + 1) + n * math.log(p)
                        + k * math.log(1 - p))

    return (1.0 - sum(pmf(k) for k in range(x + 1))) + 0.5 * pmf(x)


def test_mid_p_poisson_by_hand() -> None:
    history = [10, 10, 10, 10, 10, 10, 10, 10, 10, 10]  # variance 0 <= mean: Poisson(10)
    model = fit_history(history)
    assert model.family == "poisson" and model.mean == 10
    expected = _poisson_mid_p(10.0, 15)
    assert model.mid_p(15) == pytest.approx(expected, rel=1e-9)
    assert score_count(15, history).score == pytest.approx(-math.log10(expected), abs=1e-4)


def test_mid_p_negative_binomial_by_hand() -> None:
    history = [2, 5, 9, 14, 3, 20, 7, 1, 11, 6]
    m = float(np.mean(history))
    v = float(np.var(history, ddof=1))
    assert v > m
    model = fit_history(history)
    assert model.family == "negative_binomial"
    n, p = m * m / (v - m), m / v
    assert model.n == pytest.approx(n) and model.p == pytest.approx(p)
    for x in (0, 7, 25):
        assert model.mid_p(x) == pytest.approx(_nbinom_mid_p(n, p, x), rel=1e-7)
    assert score_count(25, history).score == pytest.approx(-math.log10(_nbinom_mid_p(n, p, 25)), abs=1e-4)


def test_all_zero_history_is_finite() -> None:
    s = score_count(5, [0] * 20)
    assert s.score is not None and math.isfinite(s.score) and s.score > 5
    mu = 1 / 21  # floored mean of an all-zero history of 20
    assert score_count(0, [0] * 20).score == pytest.approx(-math.log10(1 - 0.5 * math.exp(-mu)), abs=1e-4)


def test_absurd_count_is_capped_and_finite() -> None:
    s = score_count(10**6, [1, 2, 1, 2, 1, 2, 1, 2])
    assert s.score is not None and math.isfinite(s.score) and s.score <= 300


def test_series_matches_pointwise_and_uses_strictly_earlier_points() -> None:
    times, counts = _series(30, seed=3)
    times[10] = times[11] = times[12]  # a tie of three at one timestamp (still sorted)
    times = sorted(times)
    scores = score_series(times, counts)
    for i in (0, 5, 9, 10, 11, 12, 20, 29):
        hist = [c for t, c in zip(times, counts, strict=True) if t < times[i]]
        hist_t = [t for t in times if t < times[i]]
        ref = score_count(counts[i], hist, hist_t, times[i])
        got = scores[i]
        assert got is not None
        assert got.history_size == ref.history_size == len(hist)
        assert got.history_max == ref.history_max
        assert got.history_span_days == ref.history_span_days
        assert got.reason == ref.reason
        if ref.score is None:
            assert got.score is None
        else:
            assert got.score == pytest.approx(ref.score, abs=1e-6)
    s10, s12 = scores[10], scores[12]
    assert s10 is not None and s12 is not None
    assert s10.history_size == s12.history_size == 10  # tied points are not each other's history


def test_series_since_skips_earlier_points() -> None:
    times, counts = _series(20)
    scores = score_series(times, counts, since=times[15])
    assert all(s is None for s in scores[:15])
    assert all(s is not None for s in scores[15:])


def test_series_rejects_unsorted() -> None:
    with pytest.raises(ValueError):
        score_series([T0 + timedelta(days=1), T0], [1, 2])
