"""Matching detections to an analyst's objects and undecided regions."""

from __future__ import annotations

import numpy as np

from app.detection.matching import Outcome, ignored_by, match_detections
from app.detection.results import Detection, DetectionResult, apply_thresholds, rethreshold, split_counted


def _box(x: float, y: float, w: float = 20.0, h: float = 6.0) -> np.ndarray:
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], float)


def test_greedy_matching_by_score_each_truth_once() -> None:
    truth = [_box(0, 0), _box(50, 0)]
    dets = [_box(1, 0), _box(0, 1), _box(50, 0), _box(100, 100)]
    out = match_detections(dets, [0.9, 0.95, 0.8, 0.7], truth)
    assert out == [Outcome.FALSE, Outcome.HIT, Outcome.HIT, Outcome.FALSE]


def test_ignored_when_mostly_inside_an_undecided_region() -> None:
    region = np.array([[90, 90], [140, 90], [140, 120], [90, 120]], float)
    assert ignored_by(_box(100, 100), [region])
    assert not ignored_by(_box(135, 100), [region])  # a quarter inside
    out = match_detections([_box(100, 100)], [0.5], [], [region])
    assert out == [Outcome.IGNORED]


def test_containers_match_loosely() -> None:
    truth = [_box(0, 0, 10, 4)]
    shifted = _box(3, 1, 10, 4)  # IoU under 0.5, centre inside
    assert match_detections([shifted], [0.9], truth) == [Outcome.FALSE]
    assert match_detections([shifted], [0.9], truth, loose=True) == [Outcome.HIT]


def test_thresholds_split_detections_without_rerunning_anything() -> None:
    q = tuple(map(tuple, _box(0, 0)))
    dets = [Detection("railcar", 0.9, q, score=0.8), Detection("railcar", 0.3, q, score=0.3, counted=False)]
    res = DetectionResult(dets[:1], 10, 10, None, 0.0, candidates=dets[1:])
    low = rethreshold(res, {"railcar": 0.25})
    assert [d.confidence for d in low.detections] == [0.9, 0.3] and low.candidates == []
    high = rethreshold(res, {"railcar": 0.85})  # the score, not the reported confidence, decides
    assert high.detections == [] and len(high.candidates) == 2
    assert split_counted(apply_thresholds(dets, {})) == ([dets[0]], [dets[1]])
