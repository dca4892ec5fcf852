"""Tests of app.detection.gsd_estimate: a GSD from the sizes of the objects a first detector pass finds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from app.detection.gsd_estimate import (
    CONTAINER_WIDTH_M,
    RAILCAR_LENGTH_M,
    box_sides,
    detect_estimating_gsd,
    estimate_gsd,
)
from app.detection.results import Detection, DetectionResult


def _box(class_name: str, long_px: float, short_px: float, angle_deg: float = 30.0, at: float = 50.0) -> Detection:
    a = math.radians(angle_deg)
    u, v = np.array([math.cos(a), math.sin(a)]) * long_px / 2, np.array([-math.sin(a), math.cos(a)]) * short_px / 2
    c = np.array([at, at])
    q = [c + u + v, c - u + v, c - u - v, c + u - v]
    return Detection(class_name, 0.9, tuple((float(x), float(y)) for x, y in q))


def _scene_at(gsd: float, containers: int = 6, railcars: int = 4) -> list[Detection]:
    """Boxes as drawn at ``gsd`` m/px: containers 2.47 m wide (20 or 40 ft long), railcars 16.7 m long."""
    boxes = [_box("container", (6.06 if i % 2 else 12.19) / gsd, CONTAINER_WIDTH_M / gsd) for i in range(containers)]
    return boxes + [_box("railcar", RAILCAR_LENGTH_M / gsd, 3.0 / gsd, angle_deg=-70) for _ in range(railcars)]


def test_box_sides_are_long_then_short_at_any_angle() -> None:
    for angle in (0.0, 33.0, 90.0, 145.0):
        assert box_sides(_box("railcar", 40.0, 7.0, angle)) == pytest.approx((40.0, 7.0))


@pytest.mark.parametrize("gsd", [0.3, 0.5, 0.65, 0.8])
def test_containers_and_railcars_vote_for_the_gsd_they_were_drawn_at(gsd: float) -> None:
    found = estimate_gsd(_scene_at(gsd))
    assert found is not None and found.votes == 10
    assert found.gsd_m == pytest.approx(gsd, rel=1e-3)


def test_the_median_vote_ignores_a_few_odd_boxes() -> None:
    boxes = _scene_at(0.65) + [_box("railcar", 5.0, 2.0), _box("container", 90.0, 30.0)]
    found = estimate_gsd(boxes)
    assert found is not None and found.gsd_m == pytest.approx(0.65, rel=0.05)


def test_too_few_votes_or_an_implausible_scale_give_no_estimate() -> None:
    assert estimate_gsd(_scene_at(0.5, containers=2, railcars=2)) is None
    assert estimate_gsd([]) is None
    assert estimate_gsd(_scene_at(4.0)) is None  # boxes a pixel wide: no satellite chip of this service
    assert estimate_gsd(_scene_at(0.05)) is None


class _Recorder:
    """A detector that answers with boxes drawn at ``true_gsd`` when run at the image's own scale."""

    def __init__(self, true_gsd: float, working_gsd: float = 0.4) -> None:
        self.info = SimpleNamespace(working_gsd_m=working_gsd)
        self.true_gsd = true_gsd
        self.calls: list[float | None] = []

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        self.calls.append(gsd_m)
        boxes = _scene_at(self.true_gsd) if gsd_m is None else []
        return DetectionResult(detections=boxes, width=100, height=100, gsd_m=gsd_m, timing_ms=1.0)


def test_a_second_pass_runs_at_the_estimate() -> None:
    det = _Recorder(true_gsd=0.65)
    result, found = detect_estimating_gsd(det, np.zeros((8, 8, 3), np.uint8))
    assert found is not None and found.gsd_m == pytest.approx(0.65, rel=1e-3)
    assert det.calls == [None, found.gsd_m] and result.gsd_m == found.gsd_m


def test_no_second_pass_when_the_image_is_at_the_working_scale_or_gives_no_estimate() -> None:
    at_working = _Recorder(true_gsd=0.4)
    result, found = detect_estimating_gsd(at_working, np.zeros((8, 8, 3), np.uint8))
    assert found is not None and at_working.calls == [None] and len(result.detections) == 10
    empty = _Recorder(true_gsd=0.65)
    empty.true_gsd = 50.0  # boxes far too small to be believed
    _, none = detect_estimating_gsd(empty, np.zeros((8, 8, 3), np.uint8))
    assert none is None and empty.calls == [None]


def test_a_second_detector_always_makes_the_counted_pass() -> None:
    first, second = _Recorder(true_gsd=0.4), _Recorder(true_gsd=0.4)
    _, found = detect_estimating_gsd(first, np.zeros((8, 8, 3), np.uint8), second=second)
    assert found is not None and first.calls == [None] and second.calls == [found.gsd_m]
