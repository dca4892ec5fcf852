"""Anomaly score v2: how surprising is a count, given the same facility's earlier counts of that class.

The full method, its choices and the benchmark behind them are in ``docs/anomaly.md``. In short:

* **Model.** A negative binomial GLM with log link fitted to the observations strictly before the one scored
  (the most recent :data:`FIT_WINDOW_DAYS` days, at most :data:`MAX_FIT_POINTS` points), on the raw irregular
  timestamps (no resampling). Covariates: an intercept, a yearly harmonic ``sin/cos(2 pi day_of_year / 365.25)``
  when the window spans >= :data:`MIN_SEASON_YEARS` years (two cycles) with >= :data:`MIN_SEASONAL_POINTS`
  points, and a linear trend (years) when it
  spans >= :data:`MIN_TREND_YEARS` years. Among the eligible designs the lowest AIC wins; a trend must also pass a
  likelihood-ratio test at 0.1 % against the same design without it. Coefficients by IRLS (weak ridge on
  non-intercept terms), dispersion ``alpha`` (``Var = mu + alpha mu^2``) by weighted ML, alternating.
* **Robust baseline (Farrington-style).** After a first fit, each history point's residual is the normal quantile
  of its mid-p upper tail under the fitted NB (a quantile residual, over ``sqrt(1 - leverage)``); points with
  ``|s| > 2.58`` get weight ``(2.58 / |s|)^2`` (weights renormalised to sum to ``n``), and the model is refitted,
  so earlier surges do not inflate the baseline, nor earlier drops lower it and widen its dispersion.
* **Prediction.** The predictive at the scored time integrates over the parameters' uncertainty: a mixture of NBs
  over the posterior of ``alpha`` (grid on ``log alpha``), each widened by the uncertainty of the fitted log-mean
  (``alpha_eff = (1 + alpha) exp(var_eta) - 1``, mean ``exp(eta + var_eta / 2)``): few points, wide spread.
* **Cold start.** With fewer than :data:`MIN_HISTORY` earlier points the rate gets a gamma prior pooled across
  facilities of the same kind (:class:`PooledPrior`, empirical Bayes), or a weakly informative one, updated with
  the facility's own points; ``reason`` says so. No earlier point and nothing to pool from: no score.
* **Scores.** ``score = -log10(P(X > x) + 0.5 P(X = x))`` (surges), ``drop_score = -log10(P(X < x) + 0.5 P(X = x))``
  (a yard emptying), capped at :data:`MAX_SCORE`. Under the model a score >= 2 happens about 1 % of the time.
* **Detector uncertainty.** An uploaded count is an estimate with standard deviation ``count_sd``; the tail
  probabilities are averaged over a discretised normal of the true count around it. Hand counts are exact.
* **History facts** (``history_max``, ``exceeds_history_max``, ``history_span_days``, ``highest_in_days``,
  ``lowest_in_days``) are exact, over the whole history, not the fit window.

Pure functions of numbers and datetimes; numpy and scipy only.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
from scipy import special, stats

#: Fewer earlier observations than this: cold start (pooled or weak prior), said so in ``reason``.
MIN_HISTORY: int = 8
#: Scores are capped here (a mid-p below 1e-300 is "impossible" for any practical purpose).
MAX_SCORE: float = 300.0
SECONDS_PER_DAY: float = 86_400.0
DAYS_PER_YEAR: float = 365.25
#: Only the most recent this-many days of history are fitted (Farrington uses 5 years).
FIT_WINDOW_DAYS: float = 5 * DAYS_PER_YEAR + 30
#: At most this many most recent points are fitted (keeps rescoring of long imports fast).
MAX_FIT_POINTS: int = 300
#: Fewest points in the fit window for the seasonal or trend terms to be considered.
MIN_SEASONAL_POINTS: int = 16
#: Shortest window (years) for the yearly seasonal term to be considered.
MIN_SEASON_YEARS: float = 2.0
#: Farrington's threshold on the scaled Anscombe residual above which a point is down-weighted.
REWEIGHT_THRESHOLD: float = 2.58
#: Likelihood-ratio statistic a trend must exceed (chi-square, 1 df, 0.1 %): a trend is extrapolated to the
#: scored time, so only a strong one is worth the risk (the benchmark lost AUC with a 5 % test).
TREND_LR_CRITICAL: float = 10.83
#: Shortest window (years) and fewest points for a trend to be considered.
MIN_TREND_YEARS: float = 3.0
MIN_TREND_POINTS: int = 24
#: Ridge (prior precision) on non-intercept coefficients; keeps sparse series from diverging.
RIDGE: float = 0.5
#: Within-facility dispersion assumed when nothing better is known (cold start without a pool).
DEFAULT_ALPHA: float = 0.5
#: Pseudo-observations with which a pooled dispersion is blended into a cold start's own estimate.
ALPHA_PRIOR_WEIGHT: float = 4.0
#: Prior sd of ``log alpha`` around a pooled dispersion (one e-fold: weakly informative).
ALPHA_PRIOR_SD: float = 1.0


# ------------------------------------------------------------------------------------------------ v1 helpers


@dataclass(frozen=True)
class CountModel:
    """A count distribution: Poisson or negative binomial (``Var = mean + mean^2 / n``)."""

    family: str  # "negative_binomial" or "poisson"
    mean: float
    variance: float
    n: float | None = None  # negative binomial size (scipy's ``n``)
    p: float | None = None  # negative binomial success probability (scipy's ``p``)

    @classmethod
    def from_mean_alpha(cls, mean: float, alpha: float) -> CountModel:
        """NB with ``Var = mean + alpha mean^2`` (Poisson when ``alpha`` is ~0)."""
        mean = max(float(mean), 1e-9)
        if alpha <= 1e-8:
            return cls("poisson", mean=mean, variance=mean)
        n = 1.0 / alpha
        return cls("negative_binomial", mean=mean, variance=mean + alpha * mean * mean, n=n, p=n / (n + mean))

    def _logsf_logpmf_logcdf_below(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.family == "negative_binomial":  # unfrozen calls: freezing a scipy distribution costs milliseconds
            return (
                stats.nbinom.logsf(x, self.n, self.p),
                stats.nbinom.logpmf(x, self.n, self.p),
                stats.nbinom.logcdf(x - 1, self.n, self.p),
            )
        m = self.mean
        return stats.poisson.logsf(x, m), stats.poisson.logpmf(x, m), stats.poisson.logcdf(x - 1, m)

    def log_mid_p(self, x: int) -> float:
        """Natural log of ``P(X > x) + 0.5 * P(X = x)``."""
        log_sf, log_pmf, _ = self._logsf_logpmf_logcdf_below(np.asarray([x]))
        return float(np.logaddexp(log_sf[0], math.log(0.5) + log_pmf[0]))

    def mid_p(self, x: int) -> float:
        """``P(X > x) + 0.5 * P(X = x)``."""
        return math.exp(self.log_mid_p(x))

    def log_mid_p_lower(self, x: int) -> float:
        """Natural log of ``P(X < x) + 0.5 * P(X = x)``."""
        _, log_pmf, log_cdf = self._logsf_logpmf_logcdf_below(np.asarray([x]))
        return float(np.logaddexp(log_cdf[0], math.log(0.5) + log_pmf[0]))

    def tail_probs(self, x: int, count_sd: float | None = None) -> tuple[float, float]:
        """Upper and lower mid-p of ``x``; with ``count_sd`` averaged over the uncertain true count.

        The true count is taken as a normal around ``x`` with standard deviation ``count_sd``, discretised on the
        non-negative integers within 4 standard deviations.
        """
        grid, weights = _true_count_grid(x, count_sd)
        log_sf, log_pmf, log_cdf = self._logsf_logpmf_logcdf_below(grid)
        half_pmf = math.log(0.5) + log_pmf
        upper = np.exp(np.logaddexp(log_sf, half_pmf))
        lower = np.exp(np.logaddexp(log_cdf, half_pmf))
        # log-space for the exact case keeps tiny probabilities (scores up to MAX_SCORE) finite
        if grid.size == 1:
            return float(np.logaddexp(log_sf, half_pmf)[0]), float(np.logaddexp(log_cdf, half_pmf)[0])
        return math.log(max(float(weights @ upper), 1e-320)), math.log(max(float(weights @ lower), 1e-320))

    def quantiles(self, lo: float = 0.05, hi: float = 0.95) -> tuple[float, float]:
        """The ``lo`` and ``hi`` quantiles of the count (e.g. a 90 % band)."""
        qs = np.asarray([lo, hi])
        if self.family == "negative_binomial":
            q = stats.nbinom.ppf(qs, self.n, self.p)
        else:
            q = stats.poisson.ppf(qs, self.mean)
        return float(q[0]), float(q[1])


def _nb_logpmf_np(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """scipy's ``nbinom.logpmf(k, n, p)`` formula, without its argument checks (which cost more than the maths)."""
    return (
        special.gammaln(n + k) - special.gammaln(k + 1.0) - special.gammaln(n) + n * np.log(p) + special.xlog1py(k, -p)
    )


def _true_count_grid(x: int, count_sd: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Possible true counts around a reported ``x`` and their weights (discretised normal, +-4 sd)."""
    if count_sd is None or count_sd <= 0.05:
        return np.asarray([int(x)]), np.ones(1)
    lo = max(0, int(math.floor(x - 4 * count_sd)))
    hi = int(math.ceil(x + 4 * count_sd))
    grid = np.arange(lo, hi + 1)
    weights = np.exp(-0.5 * ((grid - x) / count_sd) ** 2)
    return grid, weights / weights.sum()


@dataclass(frozen=True)
class NbMixture:
    """Predictive count distribution: a mixture of NBs with one mean and several dispersions.

    The components are the dispersion's posterior grid (``weights`` sum to 1): the predictive integrates over the
    dispersion's uncertainty instead of plugging in a point estimate, whose tails are too light on short histories.
    """

    mean: float
    alphas: np.ndarray
    weights: np.ndarray

    @property
    def alpha(self) -> float:
        """Posterior-mean dispersion: the mixture's variance is ``mean + alpha mean^2``."""
        return float(self.weights @ self.alphas)

    def _np(self) -> tuple[np.ndarray, np.ndarray]:
        """scipy's ``(n, p)`` of the components, as a column (unfrozen calls: freezing costs more than the maths)."""
        r = 1.0 / np.maximum(self.alphas, 1e-8)
        return r[:, None], (r / (r + self.mean))[:, None]

    def tail_probs(self, x: int, count_sd: float | None = None) -> tuple[float, float]:
        """Natural logs of the upper and lower mid-p of ``x`` (see :meth:`CountModel.tail_probs`).

        Over a grid of possible true counts, each component's tails come from one incomplete-beta call at each end
        of the grid and its probabilities in between (cumulated): a few per cent of the cost of a tail per grid
        point, the same sums of positive terms. Tails too small for that (below 1e-250) are computed in logs.
        """
        grid, gw = _true_count_grid(x, count_sd)
        if grid.size > 1:
            fast = self._tail_probs_cumulated(grid, gw)
            if fast is not None:
                return fast
        return self._tail_probs_logs(grid, gw)

    def _pmf_table(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Per component (rows): ``P(X < lo)`` as a column and ``P(X = k)`` for ``k = lo .. hi``."""
        n, p = self._np()
        below = special.betainc(n, float(lo), p) if lo > 0 else np.zeros_like(n)
        pmf = np.exp(_nb_logpmf_np(np.arange(lo, hi + 1, dtype=np.float64)[None, :], n, p))
        return below, pmf

    def _tail_probs_cumulated(self, grid: np.ndarray, gw: np.ndarray) -> tuple[float, float] | None:
        n, p = self._np()
        lo, hi = int(grid[0]), int(grid[-1])  # the grid is every integer from lo to hi
        cdf_below, pmf = self._pmf_table(lo, hi)
        sf_hi = special.betaincc(n, hi + 1.0, p)  # P(X > hi)
        above = sf_hi + np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1] - pmf  # P(X > k)
        below = cdf_below + np.cumsum(pmf, axis=1) - pmf  # P(X < k)
        up = float(self.weights @ (above + 0.5 * pmf) @ gw)
        down = float(self.weights @ (below + 0.5 * pmf) @ gw)
        if not (up > 1e-250 and down > 1e-250):
            return None
        return math.log(up), math.log(down)

    def _tail_probs_logs(self, grid: np.ndarray, gw: np.ndarray) -> tuple[float, float]:
        n, p = self._np()
        g = grid[None, :]
        half_pmf = math.log(0.5) + stats.nbinom.logpmf(g, n, p)
        log_up = np.logaddexp(stats.nbinom.logsf(g, n, p), half_pmf)  # components x grid
        log_down = np.logaddexp(stats.nbinom.logcdf(g - 1, n, p), half_pmf)
        b = self.weights[:, None] * gw[None, :]
        return float(special.logsumexp(log_up, b=b)), float(special.logsumexp(log_down, b=b))

    def log_mid_p_lower(self, x: int) -> float:
        """Natural log of ``P(X < x) + 0.5 * P(X = x)``."""
        return self.tail_probs(x)[1]

    def mid_p(self, x: int) -> float:
        """``P(X > x) + 0.5 * P(X = x)``."""
        return math.exp(self.tail_probs(x)[0])

    def quantiles(self, lo: float = 0.05, hi: float = 0.95) -> tuple[float, float]:
        """The ``lo`` and ``hi`` quantiles of the mixture (each lies between its components' quantiles).

        The mixture's distribution function is cumulated over the counts that can hold them: each component's
        quantiles lie within ``t`` standard deviations of the mean (Cantelli's inequality), so one incomplete-beta
        call per component and the probabilities above it suffice (no quantile search per component).
        """
        sd = np.sqrt(self.mean + self.alphas * self.mean**2)
        t_lo, t_hi = math.sqrt((1.0 - lo) / lo), math.sqrt(hi / (1.0 - hi))
        k0 = max(0, math.floor(self.mean - t_lo * float(sd.max())) - 1)
        k1 = math.ceil(self.mean + t_hi * float(sd.max())) + 1
        if k1 - k0 > 20_000:  # very wide: search each component's quantiles instead
            return self._quantiles_searched(lo, hi)
        k = np.arange(k0, k1 + 1)
        below, pmf = self._pmf_table(k0, k1)
        cdf = self.weights @ (below + np.cumsum(pmf, axis=1))
        idx = np.minimum(np.searchsorted(cdf, np.asarray([lo, hi]) - 1e-12), k.size - 1)
        return float(k[idx[0]]), float(k[idx[1]])

    def _quantiles_searched(self, lo: float, hi: float) -> tuple[float, float]:
        n, p = self._np()
        comp = stats.nbinom.ppf(np.asarray([[lo, hi]]), n, p)
        k = np.arange(int(comp.min()), int(comp.max()) + 1)
        cdf = self.weights @ stats.nbinom.cdf(k[None, :], n, p)
        idx = np.minimum(np.searchsorted(cdf, np.asarray([lo, hi]) - 1e-12), k.size - 1)
        return float(k[idx[0]]), float(k[idx[1]])


def fit_count_model(mean: float, variance: float, size: int) -> CountModel:
    """Method-of-moments fit from summary statistics of ``size`` (>= 1) counts (v1; used by baselines)."""
    if size < 1:
        raise ValueError("cannot fit a count model to an empty history")
    m = max(float(mean), 1.0 / (size + 1))
    v = float(variance)
    if size >= 2 and v > m:
        return CountModel("negative_binomial", mean=m, variance=v, n=m * m / (v - m), p=m / v)
    return CountModel("poisson", mean=m, variance=m)


def fit_history(history: Sequence[int]) -> CountModel:
    """Method-of-moments fit to a sequence of counts (v1)."""
    arr = np.asarray(history, dtype=np.float64)
    var = float(arr.var(ddof=1)) if arr.size >= 2 else 0.0
    return fit_count_model(float(arr.mean()) if arr.size else 0.0, var, int(arr.size))


# ----------------------------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class AnomalyScore:
    """Score of one count of one class against its history (v1 fields first; v2 fields added after)."""

    score: float | None
    expected: float | None
    history_size: int
    history_max: int | None
    exceeds_history_max: bool
    history_span_days: float | None
    reason: str
    drop_score: float | None = None
    model: str | None = None
    count_sd: float | None = None
    highest_in_days: float | None = None
    lowest_in_days: float | None = None
    expected_lo: float | None = None  # 5 % quantile of the predictive (90 % band with expected_hi)
    expected_hi: float | None = None  # 95 % quantile of the predictive

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class PooledPrior:
    """Empirical-Bayes prior for cold starts, pooled from other facilities of the same kind.

    ``shape``/``rate``: gamma prior on a facility's mean count; ``alpha``: typical within-facility dispersion.
    """

    shape: float
    rate: float
    alpha: float
    n_facilities: int
    kind: str = ""

    @property
    def mean(self) -> float:
        """Prior mean count."""
        return self.shape / self.rate


#: Tukey's far-out fences: values beyond this many interquartile ranges past the quartiles are clipped to them.
FENCE_IQR = 3.0
#: Largest dispersion a pooled prior may carry.
MAX_POOLED_ALPHA = 5.0


def fenced(values: Sequence[float]) -> np.ndarray:
    """``values`` clipped to Tukey's far-out fences (:data:`FENCE_IQR` interquartile ranges past the quartiles): one
    absurd value cannot move a mean or variance further than the bulk of the data allows."""
    arr = np.asarray(values, np.float64)
    if arr.size < 4:
        return arr
    q1, q3 = np.percentile(arr, [25, 75])
    iqr = max(float(q3 - q1), 1.0)  # counts are whole numbers: a constant history still allows one either side
    return np.clip(arr, q1 - FENCE_IQR * iqr, q3 + FENCE_IQR * iqr)


def facility_stats(counts: Sequence[int]) -> tuple[int, float, float]:
    """``(n, mean, sample variance)`` of one facility's counts, after :func:`fenced` (robust to a few absurd
    counts)."""
    arr = fenced(counts)
    n = int(arr.size)
    if n == 0:
        return 0, 0.0, 0.0
    return n, float(arr.mean()), float(arr.var(ddof=1)) if n >= 2 else 0.0


def pooled_prior(stats_by_facility: Sequence[tuple[int, float, float]], kind: str = "") -> PooledPrior | None:
    """Pool ``(n, mean, variance)`` of other facilities' histories (each with ``n >= MIN_HISTORY``; make them with
    :func:`facility_stats`).

    Gamma prior on the facility mean, centred on the median of the facility means, with its shape by moments of the
    means after :func:`fenced` (clamped to [0.5, 50]); with one facility a wide prior (shape 1) around its mean.
    Dispersion: median of the facilities' moment estimates, at most :data:`MAX_POOLED_ALPHA`. Every facility weighs
    the same, however long its history: one facility with absurd counts moves the prior no more than any other.
    """
    rows = [(n, m, v) for n, m, v in stats_by_facility if n >= MIN_HISTORY and math.isfinite(m) and math.isfinite(v)]
    if not rows:
        return None
    means = fenced([max(m, 0.05) for _, m, _ in rows])
    centre = float(np.median(means))
    if len(rows) >= 2 and float(means.var(ddof=1)) > 0:
        shape = float(np.clip(centre * centre / float(means.var(ddof=1)), 0.5, 50.0))
    else:
        shape = 1.0
    alphas = [max(0.0, (v - m) / (m * m)) if m > 0 else DEFAULT_ALPHA for _, m, v in rows]
    alpha = float(min(np.median(alphas), MAX_POOLED_ALPHA))
    return PooledPrior(shape=shape, rate=shape / centre, alpha=alpha, n_facilities=len(rows), kind=kind)


# -------------------------------------------------------------------------------------------------- the GLM


@dataclass(frozen=True)
class GlmFit:
    """A fitted NB GLM: coefficients, dispersion, covariance of the coefficients, weighted log-likelihood."""

    beta: np.ndarray
    alpha: float
    cov: np.ndarray
    loglik: float
    mu: np.ndarray


def _nb_logpmf(y: np.ndarray, mu: np.ndarray, alpha: float) -> np.ndarray:
    mu = np.maximum(mu, 1e-12)
    if alpha <= 1e-8:
        return y * np.log(mu) - mu - special.gammaln(y + 1)
    r = 1.0 / alpha
    return (
        special.gammaln(y + r)
        - special.gammaln(r)
        - special.gammaln(y + 1)
        + r * np.log(r / (r + mu))
        + y * np.log(mu / (r + mu))
    )


def fit_nb_glm(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, max_iter: int = 25) -> GlmFit:
    """Weighted NB GLM (log link): IRLS for the coefficients alternating with weighted ML for ``alpha``.

    ML (not moments) for the dispersion: an outlier's pull on it grows only logarithmically, which with
    Farrington's weights keeps a past surge from widening the baseline. A ridge of :data:`RIDGE` on the
    non-intercept coefficients acts as a weak prior (sparse series stay finite).
    """
    n, p = X.shape
    w = np.ones(n) if w is None else w
    sw = float(w.sum())
    ybar = max(float(w @ y) / sw, 0.5 / (sw + 1.0))
    beta = np.zeros(p)
    beta[0] = math.log(ybar)
    ridge = np.diag(np.r_[0.0, np.full(p - 1, RIDGE)])
    mu = np.full(n, ybar)
    alpha = _moment_alpha(y, mu, w, p)
    for _outer in range(3):
        for _ in range(max_iter):
            eta = X @ beta
            W = w * mu / (1.0 + alpha * mu)
            z = eta + (y - mu) / mu
            XtW = X.T * W
            new = np.linalg.solve(XtW @ X + ridge, XtW @ z)
            step = new - beta
            big = float(np.max(np.abs(step)))
            if big > 5.0:
                new = beta + step * (5.0 / big)
            beta = new
            mu = np.exp(np.clip(X @ beta, -30, 30))
            if big < 1e-6:
                break
        new_alpha = _ml_alpha(y, mu, w, alpha)
        done = abs(new_alpha - alpha) <= 0.02 * max(alpha, 1e-2)
        alpha = new_alpha
        if done:
            break
    W = w * mu / (1.0 + alpha * mu)
    cov = np.linalg.inv((X.T * W) @ X + ridge)
    loglik = float(w @ _nb_logpmf(y, mu, alpha))
    return GlmFit(beta=beta, alpha=alpha, cov=cov, loglik=loglik, mu=mu)


_LOG_ALPHA_GRID = np.linspace(-10.0, math.log(50.0), 50)


def _ml_alpha(y: np.ndarray, mu: np.ndarray, w: np.ndarray, start: float) -> float:
    """Weighted ML of ``alpha`` given the means: a vectorised grid on ``log alpha`` refined by a parabola.

    0 (Poisson) when no grid value beats the Poisson likelihood.
    """
    mu = np.maximum(mu, 1e-12)
    ll = _alpha_grid_loglik(y, mu, w)
    pois = float(w @ (y * np.log(mu) - mu))
    i = int(np.argmax(ll))
    if ll[i] <= pois:
        return 0.0
    if 0 < i < ll.size - 1:
        y0, y1, y2 = ll[i - 1], ll[i], ll[i + 1]
        denom = y0 - 2 * y1 + y2
        h = _LOG_ALPHA_GRID[1] - _LOG_ALPHA_GRID[0]
        off = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
        return float(math.exp(_LOG_ALPHA_GRID[i] + h * float(np.clip(off, -0.5, 0.5))))
    return float(math.exp(_LOG_ALPHA_GRID[i]))


_GRID_R = np.exp(-_LOG_ALPHA_GRID)[:, None]
_GRID_GAMMALN_R = special.gammaln(_GRID_R)


def _alpha_grid_loglik(y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted NB log-likelihood (up to a constant in ``alpha``) on :data:`_LOG_ALPHA_GRID`.

    ``gammaln(y + r)`` is evaluated once per distinct count and spread to the points (counts repeat: a window of
    300 points holds a few dozen values), which gives the same numbers as evaluating it at every point.
    """
    r = _GRID_R
    values, where = np.unique(y, return_inverse=True)
    s = r + mu
    return (special.gammaln(values + r)[:, where] - _GRID_GAMMALN_R + r * np.log(r / s) + y * np.log(mu / s)) @ w


def _alpha_posterior(
    y: np.ndarray, mu: np.ndarray, w: np.ndarray, prior_alpha: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior of ``alpha`` on :data:`_LOG_ALPHA_GRID` given the means: grid values and weights (pruned).

    Prior on ``log alpha``: flat over the grid, or, with a pooled dispersion from facilities of the same kind,
    normal around its log with sd :data:`ALPHA_PRIOR_SD` (weakly informative: it matters only on short histories).
    """
    lp = _alpha_grid_loglik(y, np.maximum(mu, 1e-12), w)
    if prior_alpha is not None:
        centre = math.log(max(prior_alpha, math.exp(_LOG_ALPHA_GRID[0])))
        lp = lp - 0.5 * ((_LOG_ALPHA_GRID - centre) / ALPHA_PRIOR_SD) ** 2
    post = np.exp(lp - lp.max())
    keep = post > 1e-4
    return np.exp(_LOG_ALPHA_GRID[keep]), post[keep] / post[keep].sum()


def _moment_alpha(y: np.ndarray, mu: np.ndarray, w: np.ndarray, p: int) -> float:
    """Pearson moment estimate: ``alpha`` solving ``sum w (y - mu)^2 / (mu (1 + alpha mu)) = sum w - p``.

    Each point's Pearson term is bounded after the outlier weights, so one huge point cannot dominate.
    The left side decreases and is convex in ``alpha``: Newton from 0 climbs monotonically to the root.
    """
    df = float(w.sum()) - p
    if df <= 0:
        return 0.0
    mu = np.maximum(mu, 1e-9)
    num = w * (y - mu) ** 2
    a = 0.0
    for _ in range(60):
        d = 1.0 + a * mu
        f = float(np.sum(num / (mu * d))) - df
        if f <= 0:
            return a
        fp = -float(np.sum(num / (d * d)))
        if fp >= 0:
            return a
        step = -f / fp
        a += step
        if a >= 50.0:
            return 50.0
        if step < 1e-7 * max(a, 1e-3):
            break
    return float(a)


_ROBUST_ALPHA_GRID = np.r_[0.0, np.geomspace(1e-4, 50.0, 48)]
#: Log means at which :func:`_lower_quartile_table` tabulates the NB's lower quartile: e^-7 to e^12.5.
_QUARTILE_LOG_STEP = 0.04
_QUARTILE_LOG_MU = np.arange(-7.0, 12.5 + 1e-9, _QUARTILE_LOG_STEP)


@functools.cache
def _lower_quartile_table() -> tuple[np.ndarray, np.ndarray]:
    """Per (:data:`_ROBUST_ALPHA_GRID`, :data:`_QUARTILE_LOG_MU`): the NB's lower quartile count ``k1`` (the
    smallest ``k`` with ``F(k) >= 1/4``) and ``f1 = (1/4 - F(k1 - 1)) / f(k1)``, the share of its mass below 1/4.

    A count ``y`` then has its randomised PIT (uniform on ``[F(y - 1), F(y)]``) below 1/4 with probability
    ``[y < k1] + f1 [y = k1]``, whose mean under the model is exactly 1/4 at any mean and dispersion, however
    discrete the counts. Computed once per process (about 0.2 s).
    """
    mu = np.exp(_QUARTILE_LOG_MU)[None, :]
    a = _ROBUST_ALPHA_GRID[:, None]
    size = 1.0 / np.maximum(a, 1e-300)
    prob = size / (size + mu)
    pois = np.broadcast_to(a == 0.0, (a.size, mu.size))
    mu_b = np.broadcast_to(mu, pois.shape)

    def cdf(k: np.ndarray) -> np.ndarray:
        out = np.where(pois, stats.poisson.cdf(k, mu_b), stats.nbinom.cdf(k, size, prob))
        return np.where(k < 0, 0.0, out)

    k1 = np.where(pois, stats.poisson.ppf(0.25, mu_b), stats.nbinom.ppf(0.25, size, prob))
    below, upto = cdf(k1 - 1), cdf(k1)
    f1 = np.clip((0.25 - below) / np.maximum(upto - below, 1e-300), 0.0, 1.0)
    return k1, f1


def _robust_alpha(y: np.ndarray, mu: np.ndarray) -> float:
    """``alpha`` at which a quarter of the counts, in expectation, fall below the lower quartile of NB(``mu``,
    ``alpha``) (randomised PIT below 1/4): a dispersion estimate that surges cannot move.

    Only the lower side is used: an upward outlier adds nothing, and below the quartile is informative at every
    mean (for sparse counts it is the share of zeros against ``P(X = 0)``). It replaces "the median squared
    Anscombe residual is a normal's (0.455)", which holds only for large means: Poisson counts with mean 0.8 gave
    ``alpha`` about 1, so a few earlier surges in a sparse series looked ordinary and became the baseline. The
    quartile is that of the tabulated mean nearest ``mu`` (within 2 %), shifted by the rounded difference. The
    share falls as ``alpha`` grows; bracketed on the grid and interpolated; 0 when a Poisson already puts at most
    a quarter below, 50 when no grid value does.
    """
    k1, f1 = _lower_quartile_table()
    log_mu = np.log(np.maximum(mu, math.exp(_QUARTILE_LOG_MU[0])))
    j = np.clip(np.rint((log_mu - _QUARTILE_LOG_MU[0]) / _QUARTILE_LOG_STEP).astype(int), 0, _QUARTILE_LOG_MU.size - 1)
    z = y - np.rint(mu - np.exp(_QUARTILE_LOG_MU[j]))  # the count, moved by the tabulated mean's offset
    q = k1[:, j]
    g = ((z < q) + f1[:, j] * (z == q)).sum(axis=1) - 0.25 * y.size  # observed minus expected, per grid value
    below = g <= 0
    if below[0]:
        return 0.0
    if not below.any():
        return float(_ROBUST_ALPHA_GRID[-1])
    i = int(np.argmax(below))
    a0, a1, g0, g1 = _ROBUST_ALPHA_GRID[i - 1], _ROBUST_ALPHA_GRID[i], g[i - 1], g[i]
    return float(a0 + (a1 - a0) * g0 / (g0 - g1))


def _screen_weights(y: np.ndarray) -> np.ndarray:
    """First-pass weights against a robust level (the median), before any fit.

    Several past surges inflate a plain first fit so much that none of them looks outlying (masking); screening
    against the median (breakdown 50 %, like the robust z-score's) first breaks that. A 20 % trimmed mean did
    not: an early outbreak that is a quarter of a short history lifted it. Points far below the level are
    down-weighted too, as in :func:`_residual_weights`. Later passes recompute the weights from the fitted model.
    """
    level = max(float(np.median(y)), 0.5 / (y.size + 1))
    mu = np.full_like(y, level)
    r = 1.5 * (np.cbrt(y) ** 2 - np.cbrt(mu) ** 2) / mu ** (1.0 / 6.0)
    return _outlier_weights(r / np.sqrt(1.0 + _robust_alpha(y, mu) * mu))[0]


def _residual_weights(X: np.ndarray, y: np.ndarray, fit: GlmFit, w: np.ndarray) -> tuple[np.ndarray, int]:
    """Farrington-style reweighting (see :func:`_outlier_weights`) from a fit; also the number down-weighted.

    The residual is the normal quantile of the point's mid-p upper tail under the fitted NB (a quantile residual,
    Dunn & Smyth 1996), over ``sqrt(1 - leverage)``: exact at any mean and dispersion, where the Anscombe residual
    Farrington uses is too heavy-tailed for an over-dispersed NB and trims its legitimate tail points (which biased
    the mean low: 2.2-2.5 % of quiet points scored >= 2 at ``alpha`` 1.5). Points far below the fit are
    down-weighted too (Farrington's method, built for surges only, keeps them): this service scores drops as well,
    and a past drop (a holiday, a closed yard) would otherwise lower the level and inflate the dispersion that
    later surges and drops are judged by. A zero is that far only above a mean of about 4.6 (Poisson; more with
    over-dispersion), so sparse series are unaffected. The dispersion in the tails is the smaller of the fitted
    one and a robust one (:func:`_robust_alpha`), so that outliers cannot mask themselves by inflating it.
    """
    mu = np.maximum(fit.mu, 1e-9)
    W = w * mu / (1.0 + fit.alpha * mu)
    h = np.clip(np.einsum("ij,jk,ik->i", X, fit.cov, X) * W, 0.0, 0.99)
    alpha = min(fit.alpha, _robust_alpha(y, mu))
    s = stats.norm.isf(np.clip(_upper_mid_p(y, mu, alpha), 1e-300, 1.0)) / np.sqrt(1.0 - h)
    return _outlier_weights(s)


def _upper_mid_p(y: np.ndarray, mu: np.ndarray, alpha: float) -> np.ndarray:
    """Mid-p upper tail ``P(X > y) + P(X = y) / 2`` of NB(``mu``, ``alpha``) (Poisson when ``alpha`` is 0)."""
    if alpha > 1e-8:
        size = 1.0 / alpha
        prob = size / (size + mu)
        return stats.nbinom.sf(y, size, prob) + 0.5 * stats.nbinom.pmf(y, size, prob)
    return stats.poisson.sf(y, mu) + 0.5 * stats.poisson.pmf(y, mu)


def _outlier_weights(s: np.ndarray) -> tuple[np.ndarray, int]:
    """Weights ``(c / |s|)^2`` beyond ``c`` = :data:`REWEIGHT_THRESHOLD`, renormalised to sum to ``n``; the count.

    Farrington's ``s^-2`` drops from 1 to 0.15 at the threshold, which trims legitimate tail points of a quiet
    series and biases the dispersion (and mean) low; ``(c / s)^2`` is continuous there and still gives a surge with
    ``s = 8`` a weight of 0.1.
    """
    s = np.abs(s)
    out = np.ones_like(s)
    bad = s > REWEIGHT_THRESHOLD
    out[bad] = (REWEIGHT_THRESHOLD / s[bad]) ** 2
    return out * (s.size / out.sum()), int(bad.sum())


@dataclass(frozen=True)
class Prediction:
    """Predictive distribution of the next count, and how it was obtained."""

    model: CountModel | NbMixture
    description: str
    cold_start: bool = False


def _design(days: np.ndarray, doy_angle: np.ndarray, season: bool, trend: bool) -> np.ndarray:
    cols = [np.ones_like(days)]
    if trend:
        cols.append(days / DAYS_PER_YEAR)
    if season:
        cols += [np.sin(doy_angle), np.cos(doy_angle)]
    return np.column_stack(cols)


def _angle(t: np.ndarray) -> np.ndarray:
    """Yearly phase of epoch-day times (2 pi per 365.25 days)."""
    return 2.0 * math.pi * (t / DAYS_PER_YEAR)


def predict(
    hist_days: np.ndarray, hist_counts: np.ndarray, at_day: float, prior: PooledPrior | None = None
) -> Prediction | None:
    """Predictive distribution of the count at ``at_day`` from earlier ``(day, count)`` points.

    Days are any consistent day scale (e.g. days since the Unix epoch). ``None`` when there is no history and no
    prior to pool from. The composition of :func:`fit_predictor` (the costly fit) and :meth:`Predictor.predict_at`.
    """
    return fit_predictor(hist_days, hist_counts, at_day, prior).predict_at(at_day)


@dataclass(frozen=True, eq=False)
class Predictor:
    """A history fitted once (:func:`fit_predictor`); :meth:`predict_at` evaluates it at a scoring time, cheaply.

    The fit depends on the scoring time only through the fit window and the eligible designs; :meth:`covers` says
    whether a time keeps exactly the same window and eligibility (then :meth:`predict_at` equals a fresh fit). The
    GLM's time axis is centred at ``reference`` (the newest fitted day), not at the scoring time, so the same fit
    serves any covered time (the trend is extrapolated from the reference).
    """

    fixed: Prediction | None = None  # cold start or all-zero window: the same at every covered time
    choice: tuple[bool, bool] = (False, False)  # (season, trend) of the GLM
    beta: np.ndarray | None = None  # None: no GLM, ``fixed`` is the prediction
    cov: np.ndarray | None = None
    alphas: np.ndarray | None = None
    post: np.ndarray | None = None
    description: str = ""
    reference: float = 0.0
    # validity: window edges (a fitted day that must stay inside, an unfitted one that must stay outside) and the
    # design eligibility (first fitted day, points, can_season, can_trend); None: any scoring time
    in_day: float | None = None
    out_day: float | None = None
    eligibility: tuple[float, int, bool, bool] | None = None

    def covers(self, at_day: float) -> bool:
        """Whether scoring at ``at_day`` would fit the same window with the same eligible designs."""
        lo = at_day - FIT_WINDOW_DAYS
        if self.in_day is not None and not self.in_day >= lo:
            return False
        if self.out_day is not None and not self.out_day < lo:
            return False
        if self.eligibility is None:
            return True
        first, n, season, trend = self.eligibility
        return _eligible(at_day - first, n) == (season, trend)

    def predict_at(self, at_day: float) -> Prediction | None:
        """Predictive distribution at ``at_day``; :class:`ValueError` unless :meth:`covers` it."""
        if not self.covers(at_day):
            raise ValueError(f"day {at_day} is outside the times this fit covers (another window or design)")
        if self.beta is None:
            return self.fixed
        assert self.cov is not None and self.alphas is not None and self.post is not None
        x_star = _design(np.asarray([at_day - self.reference]), _angle(np.asarray([at_day])), *self.choice)[0]
        eta = float(x_star @ self.beta)
        var_eta = float(x_star @ self.cov @ x_star)
        inflate = math.exp(min(var_eta, 5.0))  # a log-normal mean: alpha_eff = (1 + alpha) exp(var_eta) - 1
        mean = math.exp(min(eta + 0.5 * min(var_eta, 5.0), 30.0))  # predictive mean, not the median exp(eta)
        model = NbMixture(mean, (1.0 + self.alphas) * inflate - 1.0, self.post)
        return Prediction(model, self.description)


def _eligible(span: float, n: int) -> tuple[bool, bool]:
    """Whether a window spanning ``span`` days with ``n`` points may have a season and a trend."""
    can_season = span >= MIN_SEASON_YEARS * DAYS_PER_YEAR and n >= MIN_SEASONAL_POINTS
    can_trend = span >= MIN_TREND_YEARS * DAYS_PER_YEAR and n >= MIN_TREND_POINTS
    return can_season, can_trend


def fit_predictor(
    hist_days: np.ndarray, hist_counts: np.ndarray, at_day: float, prior: PooledPrior | None = None
) -> Predictor:
    """Fit earlier ``(day, count)`` points for scoring at ``at_day`` (and at any other time it :meth:`covers
    <Predictor.covers>`): the fit window, robust weights, design choice, coefficients and dispersion posterior."""
    k = int(hist_counts.size)
    if k < MIN_HISTORY:
        return Predictor(fixed=_cold_start(hist_counts.astype(np.float64), prior))
    keep = hist_days >= at_day - FIT_WINDOW_DAYS
    region = hist_days[max(0, k - MAX_FIT_POINTS) :]
    inside = keep[max(0, k - MAX_FIT_POINTS) :]
    in_day = float(region[inside].min()) if inside.any() else None
    out_day = float(region[~inside].max()) if not inside.all() else None
    keep[: max(0, k - MAX_FIT_POINTS)] = False
    if keep.sum() < MIN_HISTORY:
        keep[-MIN_HISTORY:] = True
    reference = float(hist_days[keep][-1])
    d = hist_days[keep] - reference  # the trend's origin (the scored time enters only in predict_at)
    y = hist_counts[keep].astype(np.float64)
    ang = _angle(hist_days[keep])
    n = y.size
    if y.sum() == 0:  # an all-zero window: Poisson with a floored mean (first non-zero is very surprising)
        return Predictor(
            fixed=Prediction(CountModel.from_mean_alpha(1.0 / (n + 1), 0.0), "all-zero history, floored mean"),
            in_day=in_day,
            out_day=out_day,
        )
    first = float(hist_days[keep][0])
    can_season, can_trend = _eligible(at_day - first, n)
    X0 = _design(d, ang, False, False)
    w = _screen_weights(y)
    base = fit_nb_glm(X0, y, w)
    w, _ = _residual_weights(X0, y, base, np.ones(n))
    options: list[tuple[bool, bool]] = [(False, False)]
    if can_season:
        options.append((True, False))
    if can_trend:
        options += [(False, True)] + ([(True, True)] if can_season else [])
    fits: dict[tuple[bool, bool], tuple[np.ndarray, GlmFit]] = {}
    for season, trend in options:
        X = _design(d, ang, season, trend)
        fits[(season, trend)] = (X, fit_nb_glm(X, y, w))

    def aic(key: tuple[bool, bool]) -> float:
        X, f = fits[key]
        return -2.0 * f.loglik + 2.0 * (X.shape[1] + 1)

    def admissible(key: tuple[bool, bool]) -> bool:
        season, trend = key
        if not trend:
            return True
        return 2.0 * (fits[key][1].loglik - fits[(season, False)][1].loglik) >= TREND_LR_CRITICAL

    choice = min((o for o in options if admissible(o)), key=aic)
    X, fit = fits[choice]
    for _ in range(2):  # reweight from the chosen fit, twice: a big surge first hides the smaller ones
        w, n_down = _residual_weights(X, y, fit, np.ones(n))
        fit = fit_nb_glm(X, y, w)
    pooled_alpha = prior.alpha if prior is not None and n < 3 * MIN_HISTORY else None  # short history only
    alphas, post = _alpha_posterior(y, fit.mu, w, pooled_alpha)
    alpha = float(post @ alphas)
    terms = ["intercept"] + (["trend"] if choice[1] else []) + (["yearly season"] if choice[0] else [])
    desc = f"negative binomial GLM ({' + '.join(terms)}) on {n} points, alpha {alpha:.3g}"
    if n_down:
        desc += f", {n_down} earlier outlier{'s' if n_down > 1 else ''} down-weighted"
    return Predictor(
        choice=choice,
        beta=fit.beta,
        cov=fit.cov,
        alphas=alphas,
        post=post,
        description=desc,
        reference=reference,
        eligibility=(first, n, can_season, can_trend),
        in_day=in_day,
        out_day=out_day,
    )


#: Where a history's fit comes from: ``(hist_days, hist_counts, at_day, prior) -> Predictor`` covering ``at_day``.
Fitter = Callable[[np.ndarray, np.ndarray, float, PooledPrior | None], Predictor]


def _cold_start(y: np.ndarray, prior: PooledPrior | None) -> Prediction | None:
    """Gamma-prior predictive for fewer than :data:`MIN_HISTORY` points (see module docstring)."""
    k = int(y.size)
    if k == 0 and prior is None:
        return None
    if prior is not None:
        a0, b0, alpha0 = prior.shape, prior.rate, prior.alpha
        src = (
            f"prior pooled from {prior.n_facilities} {prior.kind + ' ' if prior.kind else ''}"
            f"facilit{'y' if prior.n_facilities == 1 else 'ies'}"
        )
    else:
        a0, b0, alpha0 = 0.5, 1e-3, DEFAULT_ALPHA
        src = "weakly informative prior (no other facility of this kind to pool from)"
    alpha = alpha0
    if k >= 3:
        m, v = float(y.mean()), float(y.var(ddof=1))
        own = max(0.0, (v - m) / (m * m)) if m > 0 else alpha0
        alpha = (ALPHA_PRIOR_WEIGHT * alpha0 + (k - 1) * own) / (ALPHA_PRIOR_WEIGHT + k - 1)
    m_hat = float(y.mean()) if k else a0 / b0
    exposure = 1.0 / (1.0 + alpha * m_hat)  # NB information about the rate, per point, relative to Poisson
    shape = a0 + float(y.sum()) * exposure
    rate = b0 + k * exposure
    mean = shape / rate
    alpha_eff = (1.0 + alpha) * (1.0 + 1.0 / shape) - 1.0
    noun = "observation" if k == 1 else "observations"
    desc = f"cold start: {k} earlier {noun}, {src}"
    return Prediction(CountModel.from_mean_alpha(mean, alpha_eff), desc, cold_start=True)


# --------------------------------------------------------------------------------------------------- scoring


def _to_score(log_p: float) -> float:
    s = -log_p / math.log(10.0)
    s = MAX_SCORE if not math.isfinite(s) else min(max(s, 0.0), MAX_SCORE)
    return round(s, 4)


def epoch_days(t: datetime) -> float:
    """Days since the Unix epoch (fractional)."""
    return t.timestamp() / SECONDS_PER_DAY


def _history_facts(
    count: int, hist_days: np.ndarray, hist_counts: np.ndarray, at_day: float | None
) -> tuple[int | None, bool, float | None, float | None, float | None, int | None]:
    """max, exceeds, span, highest_in_days, lowest_in_days, min (exact, over the whole history)."""
    if hist_counts.size == 0:
        return None, False, None, None, None, None
    hmax, hmin = int(hist_counts.max()), int(hist_counts.min())
    exceeds = count > hmax
    span = None if at_day is None or not hist_days.size else round(at_day - float(hist_days[0]), 3)
    highest = lowest = None
    if at_day is not None and hist_days.size:
        if exceeds:
            highest = span
        elif count > hist_counts[-1]:
            j = int(np.flatnonzero(hist_counts >= count)[-1])
            highest = round(at_day - float(hist_days[j]), 3)
        if count < hmin:
            lowest = span
        elif count < hist_counts[-1]:
            j = int(np.flatnonzero(hist_counts <= count)[-1])
            lowest = round(at_day - float(hist_days[j]), 3)
    return hmax, exceeds, span, highest, lowest, hmin


def _score_point(
    count: int,
    hist_days: np.ndarray,
    hist_counts: np.ndarray,
    at_day: float | None,
    prior: PooledPrior | None,
    count_sd: float | None,
    fit: Fitter | None = None,
) -> AnomalyScore:
    count = int(count)
    size = int(hist_counts.size)
    hmax, exceeds, span, highest, lowest, hmin = _history_facts(count, hist_days, hist_counts, at_day)
    sd = None if count_sd is None or count_sd <= 0 else round(float(count_sd), 3)
    at = at_day if at_day is not None else float(size)
    pred = (fit or fit_predictor)(hist_days, hist_counts, at, prior).predict_at(at)  # = predict(...) uncached
    if pred is None:
        reason = (
            f"no earlier observations and no other facility of this kind to pool a prior from; "
            f"scores start with the first earlier observation (a full model needs {MIN_HISTORY})"
        )
        return AnomalyScore(None, None, 0, None, False, None, reason, count_sd=sd)
    log_up, log_down = pred.model.tail_probs(count, sd)
    window = f"{span:.0f} days of history" if span is not None else f"{size} earlier observations"
    if exceeds:
        facts = f"highest in {window}"
    elif hmin is not None and count < hmin:
        facts = f"lowest in {window}"
    else:
        facts = "within history" if size else "no earlier observation"
    reason = f"{pred.description}; {facts}" if pred.cold_start else facts
    q_lo, q_hi = pred.model.quantiles(0.05, 0.95)
    return AnomalyScore(
        score=_to_score(log_up),
        expected=round(pred.model.mean, 3),
        history_size=size,
        history_max=hmax,
        exceeds_history_max=exceeds,
        history_span_days=span,
        reason=reason[:200],
        drop_score=_to_score(log_down),
        model=pred.description[:200],
        count_sd=sd,
        highest_in_days=highest,
        lowest_in_days=lowest,
        expected_lo=q_lo,
        expected_hi=q_hi,
    )


def score_count(
    count: int,
    history: Sequence[int],
    history_times: Sequence[datetime] | None = None,
    captured_at: datetime | None = None,
    *,
    prior: PooledPrior | None = None,
    count_sd: float | None = None,
) -> AnomalyScore:
    """Score ``count`` against ``history`` (all of which must precede it, oldest first).

    Without times the points are taken as equally spaced one day apart (no season, no trend, no span).
    """
    counts = np.asarray(history, dtype=np.int64)
    if history_times and captured_at is not None:
        days = np.asarray([epoch_days(t) for t in history_times])
        order = np.argsort(days, kind="stable")
        return _score_point(count, days[order], counts[order], epoch_days(captured_at), prior, count_sd)
    days = np.arange(counts.size, dtype=np.float64)
    s = _score_point(count, days, counts, None, prior, count_sd)
    return s


def score_series(
    times: Sequence[datetime],
    counts: Sequence[int],
    since: datetime | None = None,
    *,
    prior: PooledPrior | None = None,
    count_sd: Sequence[float | None] | None = None,
    fit: Fitter | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[AnomalyScore | None]:
    """Score every point of a series against the points strictly earlier in time.

    ``times`` must be sorted ascending (ties allowed: tied points are not each other's history). Points earlier than
    ``since`` get ``None`` (not recomputed). ``count_sd`` gives each point's count uncertainty (``None``: exact).
    ``fit``: where a point's fitted history comes from (default :func:`fit_predictor`; e.g. a cache of such fits,
    which must return what :func:`fit_predictor` would, or a fit that :meth:`Predictor.covers` the point).
    ``progress`` is called with each scored point's index.
    """
    n = len(times)
    if n != len(counts):
        raise ValueError("times and counts must have the same length")
    if count_sd is not None and len(count_sd) != n:
        raise ValueError("count_sd must have one entry per point")
    if any(times[i] > times[i + 1] for i in range(n - 1)):
        raise ValueError("times must be sorted ascending")
    days = np.asarray([epoch_days(t) for t in times], dtype=np.float64)
    c = np.asarray(counts, dtype=np.int64)
    out: list[AnomalyScore | None] = []
    for i in range(n):
        if since is not None and times[i] < since:
            out.append(None)
            continue
        k = bisect.bisect_left(times, times[i], 0, i)  # history = points [0, k), strictly earlier
        sd = None if count_sd is None else count_sd[i]
        out.append(_score_point(int(c[i]), days[:k], c[:k], float(days[i]), prior, sd, fit))
        if progress is not None:
            progress(i)
    return out


def count_uncertainty(confidences: Sequence[float], count: int, rel_error: float) -> float:
    """Standard deviation of a detector's count: ``sqrt(sum p(1-p) + (rel_error * count)^2)``.

    ``sum p(1-p)`` is the Bernoulli variance of the kept detections being real; ``rel_error`` is the detector's
    measured count error as a share of the true count (misses and merges that confidences do not show).
    """
    p = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
    return float(math.sqrt(float(np.sum(p * (1.0 - p))) + (rel_error * count) ** 2))
