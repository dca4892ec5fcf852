"""Per-facility calibration from reviews: the fitted threshold, its shrinkage and bounds, bias and spread."""

from __future__ import annotations

import numpy as np
import pytest

from app.scoring.review_calibration import (
    MAX_LOGIT_SHIFT,
    Pool,
    ReviewEvidence,
    calibrate_class,
    corrected_count,
    effective_series,
    fit_threshold,
    logit,
)

DEFAULT, FLOOR, SD = 0.35, 0.1, 0.2


def _evidence(
    true_scores: list[float], false_scores: list[float], missed: int = 0, boxes: bool = True
) -> ReviewEvidence:
    scores = np.array(true_scores + false_scores)
    hits = np.array([True] * len(true_scores) + [False] * len(false_scores)) if boxes else None
    return ReviewEvidence(scores, hits, len(true_scores) + missed)


def test_counts_and_hits_at_thresholds() -> None:
    e = _evidence([0.9, 0.5, 0.2], [0.4, 0.15])
    t = np.array([0.1, 0.2, 0.45, 0.95])
    assert e.count_at(t).tolist() == [5, 4, 2, 0]
    assert e.hits_at(t).tolist() == [3, 3, 2, 0]


def test_no_reviews_give_the_model_default() -> None:
    cal = calibrate_class([], DEFAULT, FLOOR, SD)
    assert (cal.reviews, cal.threshold, cal.fitted_threshold, cal.count_bias, cal.count_rel_sd) == (
        0,
        DEFAULT,
        None,
        0.0,
        SD,
    )


def test_faint_true_objects_pull_the_threshold_down_and_false_ones_push_it_up() -> None:
    faint = _evidence([0.9] * 10 + [0.2] * 4, [])
    assert fit_threshold([faint], DEFAULT, FLOOR) <= 0.2
    noisy = _evidence([0.9] * 10, [0.5] * 6)
    assert fit_threshold([noisy], DEFAULT, FLOOR) > 0.5


def test_one_review_moves_the_threshold_a_third_of_the_way_and_never_to_an_extreme() -> None:
    extreme = _evidence([0.95] * 5, [0.9] * 40)  # only the very top is true: the fit wants ~0.93
    one = calibrate_class([extreme], DEFAULT, FLOOR, SD)
    assert one.fitted_threshold is not None and one.fitted_threshold > 0.9
    z = (logit(one.fitted_threshold) + 2 * logit(DEFAULT)) / 3
    assert one.threshold == pytest.approx(
        min(1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-(logit(DEFAULT) + MAX_LOGIT_SHIFT))))
    )
    many = calibrate_class([extreme] * 50, DEFAULT, FLOOR, SD)
    assert one.threshold < many.threshold <= 1 / (1 + np.exp(-(logit(DEFAULT) + MAX_LOGIT_SHIFT))) + 1e-9


def test_bias_and_spread_are_shrunk_and_bounded() -> None:
    over = _evidence([0.9] * 10, [0.9] * 10)  # counts double at every threshold above the false ones' score
    cal = calibrate_class([over], DEFAULT, FLOOR, SD)
    assert 0 < cal.count_bias < 1.0
    assert 0.02 <= cal.count_rel_sd <= 1.0
    steady = [_evidence([0.9] * 20, [], missed=5)] * 20  # always a fifth missed, exactly
    cal = calibrate_class(steady, DEFAULT, FLOOR, SD)
    assert cal.count_bias == pytest.approx(-0.2, abs=0.02)
    assert cal.count_rel_sd < 0.1  # steady: little spread left once the bias is known


def test_count_only_reviews_calibrate_by_counts() -> None:
    e = _evidence([0.9] * 10, [0.3] * 5, boxes=False)  # the analyst counted 10: 0.3 scores are too many
    assert e.hits is None
    assert fit_threshold([e], DEFAULT, FLOOR) > 0.3


def test_the_pool_moves_the_prior() -> None:
    e = [_evidence([0.9] * 10, [])]  # uninformative: every threshold up to 0.9 counts right
    alone = calibrate_class(e, DEFAULT, FLOOR, SD)
    pooled = calibrate_class(e, DEFAULT, FLOOR, SD, Pool(offsets=[1.0, 1.0, 1.0], biases=[0.1] * 3, spreads=[0.05] * 3))
    assert pooled.threshold > alone.threshold
    assert pooled.count_rel_sd < alone.count_rel_sd


def test_effective_series_uses_verified_counts_exactly_and_corrects_the_rest() -> None:
    history = [(1, None, 12, 2.0, None), (2, None, 12, 2.0, 15), (3, None, 0, None, None)]
    counts, sds = effective_series(history, bias=-0.2)
    assert counts == [15, 15, 0]
    assert sds == [pytest.approx(2.5), None, None]
    assert effective_series(history)[0] == [12, 15, 0]
    assert corrected_count(10, None, 0.0) == (10, None)
