"""app.detection.railcar_trains: which railcar boxes are coupled to another, and the rescoring of lone ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from app.detection.railcar_trains import coupled, rescore_lone_railcars


def _box(cx: float, cy: float, length: float = 32.0, width: float = 6.0, angle_deg: float = 0.0) -> np.ndarray:
    """Corners of a rotated box (long side ``length`` along ``angle_deg``)."""
    a = math.radians(angle_deg)
    u = np.array([math.cos(a), math.sin(a)]) * length / 2
    v = np.array([-math.sin(a), math.cos(a)]) * width / 2
    c = np.array([cx, cy])
    return np.array([c - u - v, c + u - v, c + u + v, c - u + v])


def _train(n: int, x0: float = 0.0, y0: float = 0.0, gap: float = 2.0, angle_deg: float = 0.0) -> list[np.ndarray]:
    step = 32.0 + gap
    a = math.radians(angle_deg)
    return [_box(x0 + k * step * math.cos(a), y0 + k * step * math.sin(a), angle_deg=angle_deg) for k in range(n)]


@pytest.mark.parametrize("angle", [0.0, 27.0, 90.0, -63.0])
def test_cars_coupled_end_to_end_are_coupled_and_a_lone_one_is_not(angle: float) -> None:
    boxes = _train(4, angle_deg=angle) + [_box(500, 500, angle_deg=angle)]
    assert coupled(np.stack(boxes), np.full(5, 0.9), floor=0.3).tolist() == [True, True, True, True, False]


def test_side_by_side_boxes_are_not_a_train() -> None:
    """Parallel tracks, or a row of containers read as railcars: neighbours across, not end to end."""
    boxes = np.stack([_box(0, 0), _box(0, 7), _box(0, 14)])
    assert not coupled(boxes, np.full(3, 0.9), floor=0.3).any()


def test_crossing_or_distant_cars_are_not_coupled() -> None:
    perpendicular = np.stack([_box(0, 0), _box(34, 0, angle_deg=90.0)])
    assert not coupled(perpendicular, np.full(2, 0.9), floor=0.3).any()
    too_far = np.stack(_train(2, gap=32.0 * 0.25 + 1.0))  # gap beyond a quarter of a car length
    assert not coupled(too_far, np.full(2, 0.9), floor=0.3).any()
    near_enough = np.stack(_train(2, gap=32.0 * 0.25 - 1.0))
    assert coupled(near_enough, np.full(2, 0.9), floor=0.3).all()
    overlapping = np.stack(_train(2, gap=-5.0))  # boxes of coupled cars may overlap a little
    assert coupled(overlapping, np.full(2, 0.9), floor=0.3).all()


def test_a_neighbour_below_the_floor_does_not_couple() -> None:
    boxes = np.stack(_train(2))
    assert coupled(boxes, np.array([0.9, 0.2]), floor=0.3).tolist() == [False, True]


def test_long_trains_are_judged_in_chunks_alike() -> None:
    boxes = np.stack(_train(600) + [_box(-1000, -1000)])
    flags = coupled(boxes, np.full(len(boxes), 0.9), floor=0.3)
    assert flags[:-1].all() and not flags[-1]


def test_rescoring_scales_only_lone_railcars() -> None:
    boxes = np.stack(_train(2) + [_box(500, 500), _box(900, 900)])
    scores = np.array([0.9, 0.8, 0.9, 0.9])
    classes = np.array([0, 0, 0, 1])  # the last is a container
    out = rescore_lone_railcars(boxes, scores, classes, railcar_class=0, factor=0.6, floor=0.3)
    assert out == pytest.approx([0.9, 0.8, 0.54, 0.9])
    assert rescore_lone_railcars(boxes, scores, classes, 0, 1.0, 0.3) == pytest.approx(scores)
    assert rescore_lone_railcars(np.zeros((0, 4, 2)), np.zeros(0), np.zeros(0, int), 0, 0.6, 0.3).size == 0


def test_a_sidecar_without_the_setting_keeps_the_context_off(tmp_path: Path) -> None:
    from app.detection.detector import read_model_info

    weights = tmp_path / "m.pt"
    weights.write_bytes(b"x")
    weights.with_suffix(".json").write_text(json.dumps({"name": "m", "version": "1"}))
    assert read_model_info(weights).lone_railcar_factor == 1.0
