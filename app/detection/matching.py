"""Matching detections to true objects: which detections an analyst's boxes confirm, which fall in regions they
could not decide, and which are false. Shared by the service (review calibration) and the evaluator.

Railcars match a true box at rotated IoU >= 0.5; containers, 4 x 10 px at 0.65 m/px, loosely (IoU >= 0.3, or the
detection's centre inside the box). Greedy, highest score first, each true box used once. A detection with at least
half its area inside an ignore region is neither a hit nor a false positive. Pure numpy and shapely; no web imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np

from app.detection.geometry import polygon_area, rotated_iou

#: IoU a match needs, strict and loose.
MATCH_IOU: float = 0.5
LOOSE_MATCH_IOU: float = 0.3
#: Classes matched loosely (small boxes whose edges are guessed seams).
LOOSE_CLASSES: frozenset[str] = frozenset({"container"})
#: Share of a detection's area inside an ignore region that makes it ignored.
IGNORE_SHARE: float = 0.5


class Outcome(StrEnum):
    """What a detection turned out to be against an analyst's objects."""

    HIT = "hit"
    FALSE = "false"
    IGNORED = "ignored"


def _centre_inside(det: np.ndarray, box: np.ndarray) -> bool:
    import cv2

    return cv2.pointPolygonTest(box.astype(np.float32), tuple(map(float, det.mean(0))), False) >= 0


def match_quality(det: np.ndarray, truth: np.ndarray, loose: bool) -> float:
    """Match quality between a detection and a true box: rotated IoU, or 1 for a loose centre-inside match."""
    iou = rotated_iou(det, truth)
    if loose and iou < LOOSE_MATCH_IOU and _centre_inside(det, truth):
        return 1.0
    return iou


def ignored_by(det: np.ndarray, regions: Sequence[np.ndarray]) -> bool:
    """Whether at least :data:`IGNORE_SHARE` of the detection's area lies inside one of the ``regions``
    (polygons as (N, 2) points)."""
    if not regions:
        return False
    import shapely

    box = shapely.Polygon(np.asarray(det, np.float64))
    area = polygon_area(det)
    if area <= 0:
        return False
    for region in regions:
        poly = shapely.Polygon(np.asarray(region, np.float64))
        if not poly.is_valid:
            poly = poly.buffer(0)
        if box.intersection(poly).area >= IGNORE_SHARE * area:
            return True
    return False


def match_detections(
    detections: Sequence[np.ndarray],
    scores: Sequence[float],
    truth: Sequence[np.ndarray],
    ignore: Sequence[np.ndarray] = (),
    loose: bool = False,
) -> list[Outcome]:
    """The outcome of each detection (4 x 2 corners, one class) against the true boxes of that class and the
    ignore regions, greedily by descending score; in the order given."""
    threshold = LOOSE_MATCH_IOU if loose else MATCH_IOU
    used = [False] * len(truth)
    out = [Outcome.FALSE] * len(detections)
    for i in sorted(range(len(detections)), key=lambda i: -float(scores[i])):
        q = np.asarray(detections[i], np.float64)
        best, best_j = 0.0, -1
        for j, t in enumerate(truth):
            if not used[j]:
                m = match_quality(q, np.asarray(t, np.float64), loose)
                if m > best:
                    best, best_j = m, j
        if best >= threshold:
            used[best_j] = True
            out[i] = Outcome.HIT
        elif ignored_by(q, ignore):
            out[i] = Outcome.IGNORED
    return out
