"""Anomaly score v1: how surprising is a count, given the same facility's earlier counts of that class.

Model: a negative binomial fitted by the method of moments to the history (sample mean ``m``, sample variance
``v`` with ``ddof=1``): ``n = m**2 / (v - m)``, ``p = m / v``. When ``v <= m`` (no over-dispersion) it falls back
to a Poisson with mean ``m``. ``expected`` is the sample mean ``m``. A history of all zeros would give a degenerate Poisson(0); its mean is floored at
``1 / (k + 1)`` for a history of ``k`` points, so a first non-zero count is very surprising but finitely so.

Score: ``-log10(P(X > x) + 0.5 * P(X = x))``, the mid-p upper-tail probability of the observed count ``x``
(computed in log space, capped at :data:`MAX_SCORE`). Only counts strictly earlier in ``captured_at`` than the
observation are history; with fewer than :data:`MIN_HISTORY` of them the score is ``None`` with a reason.

Pure functions of numbers and datetimes; numpy and scipy only.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
from scipy import stats

#: Fewest earlier observations needed to compute a score.
MIN_HISTORY: int = 8
#: Scores are capped here (a mid-p below 1e-300 is "impossible" for any practical purpose).
MAX_SCORE: float = 300.0
SECONDS_PER_DAY: float = 86_400.0


@dataclass(frozen=True)
class CountModel:
    """A fitted count distribution."""

    family: str  # "negative_binomial" or "poisson"
    mean: float
    variance: float
    n: float | None = None  # negative binomial size (scipy's ``n``)
    p: float | None = None  # negative binomial success probability (scipy's ``p``)

    def log_mid_p(self, x: int) -> float:
        """Natural log of ``P(X > x) + 0.5 * P(X = x)``."""
        if self.family == "negative_binomial":
            log_sf = float(stats.nbinom.logsf(x, self.n, self.p))
            log_pmf = float(stats.nbinom.logpmf(x, self.n, self.p))
        else:
            log_sf = float(stats.poisson.logsf(x, self.mean))
            log_pmf = float(stats.poisson.logpmf(x, self.mean))
        return float(np.logaddexp(log_sf, math.log(0.5) + log_pmf))

    def mid_p(self, x: int) -> float:
        """``P(X > x) + 0.5 * P(X = x)``."""
        return math.exp(self.log_mid_p(x))


@dataclass(frozen=True)
class AnomalyScore:
    """Score of one count of one class against its history."""

    score: float | None
    expected: float | None
    history_size: int
    history_max: int | None
    exceeds_history_max: bool
    history_span_days: float | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def fit_count_model(mean: float, variance: float, size: int) -> CountModel:
    """Method-of-moments fit from summary statistics of ``size`` (>= 1) counts."""
    if size < 1:
        raise ValueError("cannot fit a count model to an empty history")
    m = max(float(mean), 1.0 / (size + 1))
    v = float(variance)
    if size >= 2 and v > m:
        return CountModel("negative_binomial", mean=m, variance=v, n=m * m / (v - m), p=m / v)
    return CountModel("poisson", mean=m, variance=m)


def fit_history(history: Sequence[int]) -> CountModel:
    """Method-of-moments fit to a sequence of counts (see module docstring)."""
    arr = np.asarray(history, dtype=np.float64)
    var = float(arr.var(ddof=1)) if arr.size >= 2 else 0.0
    return fit_count_model(float(arr.mean()) if arr.size else 0.0, var, int(arr.size))


def score_from_moments(
    count: int,
    *,
    size: int,
    mean: float,
    variance: float,
    history_max: int | None,
    history_min: int | None = None,
    span_days: float | None,
) -> AnomalyScore:
    """Score ``count`` against a history summarised by its size, mean, sample variance, max, min and span."""
    exceeds = history_max is not None and count > history_max
    span = None if span_days is None else round(span_days, 3)
    expected = None if size == 0 else round(float(mean), 3)
    if size < MIN_HISTORY:
        if size == 0:
            reason = f"no earlier observations; at least {MIN_HISTORY} are needed to score"
        else:
            noun = "observation" if size == 1 else "observations"
            reason = f"only {size} earlier {noun}; at least {MIN_HISTORY} are needed to score"
        return AnomalyScore(None, expected, size, history_max, exceeds, span, reason)
    model = fit_count_model(mean, variance, size)
    log_mid_p = model.log_mid_p(int(count))
    score = -log_mid_p / math.log(10.0)
    score = MAX_SCORE if not math.isfinite(score) else min(max(score, 0.0), MAX_SCORE)
    window = f"{span_days:.0f} days of history" if span_days is not None else f"{size} earlier observations"
    if exceeds:
        reason = f"highest in {window}"
    elif history_min is not None and count < history_min:
        reason = f"lowest in {window}"
    else:
        reason = "within history"
    return AnomalyScore(round(score, 4), expected, size, history_max, exceeds, span, reason)


def score_count(
    count: int, history: Sequence[int], history_times: Sequence[datetime] | None = None,
    captured_at: datetime | None = None,
) -> AnomalyScore:
    """Score ``count`` against ``history`` (all of which must precede it); times give ``history_span_days``."""
    arr = np.asarray(history, dtype=np.int64)
    span = None
    if history_times and captured_at is not None:
        span = (captured_at - min(history_times)).total_seconds() / SECONDS_PER_DAY
    return score_from_moments(
        int(count),
        size=int(arr.size),
        mean=float(arr.mean()) if arr.size else 0.0,
        variance=float(arr.var(ddof=1)) if arr.size >= 2 else 0.0,
        history_max=int(arr.max()) if arr.size else None,
        history_min=int(arr.min()) if arr.size else None,
        span_days=span,
    )


def score_series(
    times: Sequence[datetime], counts: Sequence[int], since: datetime | None = None
) -> list[AnomalyScore | None]:
    """Score every point of a series against the points strictly earlier in time.

    ``times`` must be sorted ascending (ties allowed: tied points are not each other's history). Points earlier than
    ``since`` get ``None`` (not recomputed). Runs in O(N) plus one distribution evaluation per scored point.
    """
    n = len(times)
    if n != len(counts):
        raise ValueError("times and counts must have the same length")
    if any(times[i] > times[i + 1] for i in range(n - 1)):
        raise ValueError("times must be sorted ascending")
    c = np.asarray(counts, dtype=np.float64)
    s1 = np.concatenate([[0.0], np.cumsum(c)])
    s2 = np.concatenate([[0.0], np.cumsum(c * c)])
    run_max = np.maximum.accumulate(c) if n else c
    run_min = np.minimum.accumulate(c) if n else c
    out: list[AnomalyScore | None] = []
    for i in range(n):
        if since is not None and times[i] < since:
            out.append(None)
            continue
        k = bisect.bisect_left(times, times[i], 0, i)  # history = points [0, k), strictly earlier
        mean = s1[k] / k if k else 0.0
        var = max((s2[k] - k * mean * mean) / (k - 1), 0.0) if k >= 2 else 0.0
        span = (times[i] - times[0]).total_seconds() / SECONDS_PER_DAY if k else None
        out.append(
            score_from_moments(
                int(c[i]),
                size=k,
                mean=mean,
                variance=var,
                history_max=int(run_max[k - 1]) if k else None,
                history_min=int(run_min[k - 1]) if k else None,
                span_days=span,
            )
        )
    return out
