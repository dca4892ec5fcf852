"""The anomaly fit split into ``fit_predictor`` (costly, per history) and ``Predictor.predict_at`` (cheap, per time).

``predict`` must give what it gave before the split (``_predict_before_split`` below is its body at that commit,
kept verbatim as the reference: if the method itself changes, update or drop this reference), and a fit reused at
any time it ``covers`` must equal a fresh fit there, exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.scoring.anomaly import (
    DAYS_PER_YEAR,
    FIT_WINDOW_DAYS,
    MAX_FIT_POINTS,
    MIN_HISTORY,
    MIN_SEASON_YEARS,
    MIN_SEASONAL_POINTS,
    MIN_TREND_POINTS,
    MIN_TREND_YEARS,
    TREND_LR_CRITICAL,
    CountModel,
    GlmFit,
    NbMixture,
    PooledPrior,
    Prediction,
    _alpha_posterior,
    _angle,
    _cold_start,
    _design,
    _residual_weights,
    _screen_weights,
    fit_nb_glm,
    fit_predictor,
    predict,
)


def _predict_before_split(
    hist_days: np.ndarray, hist_counts: np.ndarray, at_day: float, prior: PooledPrior | None = None
) -> Prediction | None:
    k = int(hist_counts.size)
    if k < MIN_HISTORY:
        return _cold_start(hist_counts.astype(np.float64), prior)
    keep = hist_days >= at_day - FIT_WINDOW_DAYS
    keep[: max(0, k - MAX_FIT_POINTS)] = False
    if keep.sum() < MIN_HISTORY:
        keep[-MIN_HISTORY:] = True
    d = hist_days[keep] - at_day
    y = hist_counts[keep].astype(np.float64)
    ang = _angle(hist_days[keep])
    n = y.size
    if y.sum() == 0:
        return Prediction(CountModel.from_mean_alpha(1.0 / (n + 1), 0.0), "all-zero history, floored mean")
    span = float(-d[0])
    can_season = span >= MIN_SEASON_YEARS * DAYS_PER_YEAR and n >= MIN_SEASONAL_POINTS
    can_trend = span >= MIN_TREND_YEARS * DAYS_PER_YEAR and n >= MIN_TREND_POINTS
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
    for _ in range(2):
        w, n_down = _residual_weights(X, y, fit, np.ones(n))
        fit = fit_nb_glm(X, y, w)
    x_star = _design(np.zeros(1), _angle(np.asarray([at_day])), *choice)[0]
    eta = float(x_star @ fit.beta)
    var_eta = float(x_star @ fit.cov @ x_star)
    pooled_alpha = prior.alpha if prior is not None and n < 3 * MIN_HISTORY else None
    alphas, post = _alpha_posterior(y, fit.mu, w, pooled_alpha)
    inflate = math.exp(min(var_eta, 5.0))
    mean = math.exp(min(eta + 0.5 * min(var_eta, 5.0), 30.0))
    alpha = float(post @ alphas)
    model = NbMixture(mean, (1.0 + alphas) * inflate - 1.0, post)
    terms = ["intercept"] + (["trend"] if choice[1] else []) + (["yearly season"] if choice[0] else [])
    desc = f"negative binomial GLM ({' + '.join(terms)}) on {n} points, alpha {alpha:.3g}"
    if n_down:
        desc += f", {n_down} earlier outlier{'s' if n_down > 1 else ''} down-weighted"
    return Prediction(model, desc)


PRIOR = PooledPrior(shape=2.0, rate=0.1, alpha=0.3, n_facilities=3, kind="rail")


def _random_series(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Irregular epoch-day times and counts with level, season, trend, outliers and zeros; and a scoring time."""
    kind = rng.integers(0, 6)
    n = int(rng.choice([0, 1, 3, 7, 8, 12, 20, 40, 90, 200, 320, 450]))
    years = float(rng.choice([0.05, 0.5, 1.2, 3.5, 6.0, 9.0]))
    start = 17_000.0 + float(rng.uniform(0, 2000))
    days = np.sort(start + rng.uniform(0, years * DAYS_PER_YEAR, n))
    if n > 4 and rng.random() < 0.3:
        days[n // 2] = days[n // 2 - 1]  # a tie
    t = (days - start) / DAYS_PER_YEAR
    level = float(rng.choice([0.3, 3.0, 25.0, 400.0]))
    log_mu = math.log(level) + (0.6 * np.sin(2 * math.pi * t + 1.0) if kind in (1, 3) else 0.0)
    log_mu = log_mu + (0.25 * t if kind in (2, 3) else 0.0)
    mu = np.exp(log_mu) * np.ones(n)
    alpha = float(rng.choice([0.0, 0.05, 0.4]))
    lam = rng.gamma(1 / alpha, alpha * mu) if alpha > 0 else mu
    y = rng.poisson(lam).astype(np.int64)
    if kind == 4 and n:
        y[rng.integers(0, n, max(1, n // 15))] *= 6  # surges
    if kind == 5:
        y[:] = 0
    gap = float(rng.choice([0.01, 1.0, 30.0, 400.0]))
    at = float(days[-1] + gap) if n else start
    return days, y, at


def _assert_same(a: Prediction | None, b: Prediction | None, rel: float) -> None:
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.description == b.description and a.cold_start == b.cold_start
    assert type(a.model) is type(b.model)
    assert a.model.mean == pytest.approx(b.model.mean, rel=rel, abs=1e-300)
    if isinstance(a.model, NbMixture):
        assert isinstance(b.model, NbMixture)
        np.testing.assert_allclose(a.model.alphas, b.model.alphas, rtol=rel, atol=1e-12)
        np.testing.assert_allclose(a.model.weights, b.model.weights, rtol=rel, atol=1e-15)
    x = int(round(a.model.mean * 1.7)) + 2
    for sd in (None, 1.5):
        np.testing.assert_allclose(a.model.tail_probs(x, sd), b.model.tail_probs(x, sd), rtol=rel, atol=1e-12)
    assert a.model.quantiles() == b.model.quantiles()


@pytest.mark.parametrize("seed", range(4))
def test_predict_equals_the_former_predict(seed: int) -> None:
    rng = np.random.default_rng(seed)
    designs = set()
    for _ in range(60):
        days, y, at = _random_series(rng)
        prior = PRIOR if rng.random() < 0.5 else None
        new, old = predict(days, y, at, prior), _predict_before_split(days.copy(), y, at, prior)
        _assert_same(new, old, rel=1e-9)
        if new is not None:
            designs.add(new.description.split(" on ")[0])
    assert len(designs) >= 3  # cold starts, all-zero windows and several GLM designs were compared


def test_trend_and_season_designs_are_covered() -> None:
    """Long seasonal series with a strong trend: the designs whose time axis moved (trend) equal the former."""
    rng = np.random.default_rng(7)
    seen = set()
    for i in range(12):
        days = np.sort(18_000.0 + rng.uniform(0, 6 * DAYS_PER_YEAR, 150))
        t = (days - days[0]) / DAYS_PER_YEAR
        y = rng.poisson(np.exp(3 + 0.5 * np.sin(2 * math.pi * t) + (0.3 if i % 2 else -0.2) * t))
        at = float(days[-1] + 10)
        new, old = predict(days, y, at), _predict_before_split(days, y, at)
        _assert_same(new, old, rel=1e-9)
        assert new is not None
        seen.add(new.description.split(" on ")[0])
    assert "negative binomial GLM (intercept + trend + yearly season)" in seen


@pytest.mark.parametrize("seed", range(3))
def test_a_fit_reused_at_a_covered_time_equals_a_fresh_fit(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    reused = 0
    for _ in range(40):
        days, y, at = _random_series(rng)
        fitted = fit_predictor(days, y, at, PRIOR)
        for later in (at + 1e-3, at + 0.5, at + 3.0, at + 40.0, at + 400.0):
            if fitted.covers(later):
                reused += 1
                _assert_same(fitted.predict_at(later), predict(days, y, later, PRIOR), rel=0.0)
            else:
                with pytest.raises(ValueError, match="outside the times"):
                    fitted.predict_at(later)
    assert reused > 50


def test_covers_tracks_the_window_and_the_design_eligibility() -> None:
    # 20 points over 300 days: a season becomes eligible once the span reaches MIN_SEASON_YEARS
    days = np.linspace(18_000.0, 18_300.0, 20)
    y = np.full(20, 10)
    fitted = fit_predictor(days, y, 18_310.0)
    season_from = 18_000.0 + MIN_SEASON_YEARS * DAYS_PER_YEAR
    assert fitted.covers(18_310.0) and fitted.covers(season_from - 1e-6)
    assert not fitted.covers(season_from)  # the seasonal design is now eligible
    # the oldest point leaves the fit window
    long = np.linspace(18_000.0, 18_000.0 + FIT_WINDOW_DAYS - 10, 40)
    fitted = fit_predictor(long, np.full(40, 5), long[-1] + 5)
    assert fitted.covers(long[-1] + 9.0)
    assert not fitted.covers(18_000.0 + FIT_WINDOW_DAYS + 1e-6)
    # a cold start does not depend on the time at all
    assert fit_predictor(days[:3], y[:3], 18_100.0, PRIOR).covers(1e9)
