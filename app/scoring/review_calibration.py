"""What a facility's reviews teach about the detector there: per class, the operating threshold that counts best
at that facility, and the relative count error left at it (bias and spread).

Each review is :class:`ReviewEvidence`: the scores of the image's stored detections down to the candidate floor
(those in the analyst's undecided regions left out), which of them matched a true object (box reviews), and the
true count. The facility's own best threshold minimises, summed over its reviews,
``((count(t) - true) / max(true, 1))^2`` plus, for box reviews, ``1 - F1(t)``; ties go to the threshold nearest the
model's default. Reviews are few, so it is shrunk on the logit scale towards a prior,

    logit(t) = (n * logit(t_fit) + k * logit(t_prior)) / (n + k),    k = PRIOR_REVIEWS,

where ``t_prior`` is the model's default moved by the median offset of the other calibrated facilities (a
hierarchical prior, itself shrunk towards the default while few facilities are calibrated), and the result is
kept within :data:`MAX_LOGIT_SHIFT` of the default: one review moves a threshold a third of the way, never to an
extreme. The count bias ``b`` (mean relative error at ``t``) and spread ``s`` are shrunk the same way, towards the
pool's median bias and the assumed spread; ``s`` replaces the assumed 20 % count error in the anomaly scores, and a
detector count ``x`` enters the history as ``x / (1 + b)``. Pure numpy; no web or database imports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Weight of the prior threshold, in reviews.
PRIOR_REVIEWS: float = 2.0
#: Weight of the pool's median offset, in facilities (the pooled prior moves half way with two facilities).
PRIOR_FACILITIES: float = 2.0
#: Weight of the prior bias and spread, in reviews.
PRIOR_BIAS_REVIEWS: float = 1.0
PRIOR_SPREAD_REVIEWS: float = 2.0
#: The calibrated threshold stays within this many logits of the model's default (0.35 -> 0.11 ... 0.71).
MAX_LOGIT_SHIFT: float = 1.5
#: Bounds of the count bias and spread (a detector that finds half or double the objects is the widest allowed).
BIAS_RANGE: tuple[float, float] = (-0.5, 1.0)
SPREAD_RANGE: tuple[float, float] = (0.02, 1.0)
#: Candidate thresholds tried.
GRID_STEP: float = 0.01


@dataclass(frozen=True)
class ReviewEvidence:
    """One reviewed image, one class: detection scores, their matches (None: a count-only review) and the truth."""

    scores: np.ndarray
    hits: np.ndarray | None
    true_count: int

    def count_at(self, thresholds: np.ndarray) -> np.ndarray:
        """Detections counted at each threshold."""
        s = np.sort(np.asarray(self.scores, np.float64))
        return len(s) - np.searchsorted(s, thresholds, side="left")

    def hits_at(self, thresholds: np.ndarray) -> np.ndarray:
        """Hits counted at each threshold (zeros for a count-only review)."""
        if self.hits is None:
            return np.zeros(len(thresholds))
        s = np.asarray(self.scores, np.float64)[np.asarray(self.hits, bool)]
        s.sort()
        return len(s) - np.searchsorted(s, thresholds, side="left")


@dataclass(frozen=True)
class ClassCalibration:
    """A facility's calibration for one class."""

    reviews: int
    threshold: float
    fitted_threshold: float | None
    count_bias: float
    count_rel_sd: float

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready form."""
        return {
            "reviews": self.reviews,
            "threshold": round(self.threshold, 4),
            "fitted_threshold": None if self.fitted_threshold is None else round(self.fitted_threshold, 4),
            "count_bias": round(self.count_bias, 4),
            "count_rel_sd": round(self.count_rel_sd, 4),
        }


@dataclass(frozen=True)
class Pool:
    """What other calibrated facilities say: their fitted thresholds' logit offsets from the default, their
    biases and spreads (one entry per facility)."""

    offsets: Sequence[float] = ()
    biases: Sequence[float] = ()
    spreads: Sequence[float] = ()


def logit(p: float) -> float:
    """``log(p / (1 - p))``, with ``p`` kept inside (0, 1)."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    """Inverse of :func:`logit`."""
    return 1.0 / (1.0 + math.exp(-z))


def threshold_loss(evidence: Sequence[ReviewEvidence], thresholds: np.ndarray) -> np.ndarray:
    """The loss of each threshold over the reviews (see the module's docstring)."""
    loss = np.zeros(len(thresholds))
    for e in evidence:
        counted = e.count_at(thresholds).astype(np.float64)
        loss += ((counted - e.true_count) / max(e.true_count, 1)) ** 2
        if e.hits is not None:
            tp = e.hits_at(thresholds).astype(np.float64)
            denom = counted + e.true_count
            f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
            loss += 1.0 - f1
    return loss


def fit_threshold(evidence: Sequence[ReviewEvidence], default: float, floor: float) -> float:
    """The facility's own best threshold on a grid from ``floor`` to 0.95 (ties: nearest ``default``)."""
    grid = np.round(np.arange(floor, 0.95 + 1e-9, GRID_STEP), 4)
    loss = threshold_loss(evidence, grid)
    best = np.flatnonzero(loss <= loss.min() + 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - default))]])


def relative_errors(evidence: Sequence[ReviewEvidence], threshold: float) -> np.ndarray:
    """``(count - true) / max(true, 1)`` of each review at ``threshold``."""
    t = np.array([threshold])
    return np.array([(float(e.count_at(t)[0]) - e.true_count) / max(e.true_count, 1) for e in evidence])


def _shrunk_pool_offset(pool: Pool) -> float:
    if not pool.offsets:
        return 0.0
    m = len(pool.offsets)
    return float(np.median(pool.offsets)) * m / (m + PRIOR_FACILITIES)


def calibrate_class(
    evidence: Sequence[ReviewEvidence],
    default_threshold: float,
    floor: float,
    default_rel_sd: float,
    pool: Pool = Pool(),
) -> ClassCalibration:
    """A facility's calibration for one class from its reviews (none: the default threshold, no bias, the pool's
    median spread or the assumed one)."""
    n = len(evidence)
    prior_sd = float(np.median(pool.spreads)) if pool.spreads else default_rel_sd
    prior_bias = (
        float(np.median(pool.biases)) * len(pool.biases) / (len(pool.biases) + PRIOR_FACILITIES)
        if (pool.biases)
        else 0.0
    )
    if n == 0:
        return ClassCalibration(0, default_threshold, None, 0.0, prior_sd)
    z0 = logit(default_threshold)
    z_prior = z0 + _shrunk_pool_offset(pool)
    fitted = fit_threshold(evidence, default_threshold, floor)
    z = (n * logit(fitted) + PRIOR_REVIEWS * z_prior) / (n + PRIOR_REVIEWS)
    z = min(max(z, z0 - MAX_LOGIT_SHIFT), z0 + MAX_LOGIT_SHIFT)
    threshold = max(sigmoid(z), floor)
    errors = relative_errors(evidence, threshold)
    bias = (float(errors.sum()) + PRIOR_BIAS_REVIEWS * prior_bias) / (n + PRIOR_BIAS_REVIEWS)
    bias = min(max(bias, BIAS_RANGE[0]), BIAS_RANGE[1])
    spread2 = (float(np.sum((errors - bias) ** 2)) + PRIOR_SPREAD_REVIEWS * prior_sd**2) / (n + PRIOR_SPREAD_REVIEWS)
    spread = min(max(math.sqrt(spread2), SPREAD_RANGE[0]), SPREAD_RANGE[1])
    return ClassCalibration(n, threshold, fitted, bias, spread)


def corrected_count(count: int, count_sd: float | None, bias: float) -> tuple[int, float | None]:
    """A detector count on the true scale, ``count / (1 + bias)`` (rounded), and its standard deviation."""
    if bias == 0.0:
        return count, count_sd
    return max(0, round(count / (1.0 + bias))), None if count_sd is None else count_sd / (1.0 + bias)


def effective_series(
    history: Sequence[tuple[int, object, int, float | None, int | None]], bias: float = 0.0
) -> tuple[list[int], list[float | None]]:
    """The counts and count uncertainties a history is scored on, from ``(id, time, count, count_sd,
    verified_count)`` rows: a verified count as it is (exact), a detector count corrected by the facility's
    ``bias`` (:func:`corrected_count`)."""
    counts: list[int] = []
    sds: list[float | None] = []
    for _, _, count, sd, verified in history:
        if verified is not None:
            counts.append(int(verified))
            sds.append(None)
        else:
            c, s = corrected_count(int(count), sd, bias)
            counts.append(c)
            sds.append(s)
    return counts, sds
