"""Tests of training.failure_analysis: which false alarms count as lying beside a label."""

from __future__ import annotations

import math

import numpy as np

from training.failure_analysis import beside_a_label


def _box(cx: float, cy: float, length: float, width: float, angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    u, v = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    c = np.array([cx, cy])
    return np.array(
        [
            c - u * length / 2 - v * width / 2,
            c + u * length / 2 - v * width / 2,
            c + u * length / 2 + v * width / 2,
            c - u * length / 2 + v * width / 2,
        ]
    )


def test_a_box_on_the_band_beside_a_wagon_is_beside_it_at_any_orientation() -> None:
    for angle in (0.0, 33.0, 90.0, 151.0):
        wagon = _box(100, 100, 40, 8, angle)
        a = math.radians(angle)
        across = np.array([-math.sin(a), math.cos(a)]) * 8.5  # one width over: the shadow band
        band = _box(*(np.array([100, 100]) + across), 38, 8, angle + 4)
        assert beside_a_label(band, [wagon])
        # corner order does not matter (a box whose first edge is the short one)
        assert beside_a_label(np.roll(band, 1, axis=0), [np.roll(wagon, 1, axis=0)])


def test_boxes_that_are_not_beside_a_label() -> None:
    wagon = _box(100, 100, 40, 8, 20)
    assert not beside_a_label(_box(100, 100, 40, 8, 20), [wagon])  # on it (a hit, not a neighbour)
    assert not beside_a_label(_box(100, 130, 40, 8, 20), [wagon])  # three widths away: another track
    assert not beside_a_label(_box(145, 116, 40, 8, 20), [wagon])  # the next wagon along the track
    assert not beside_a_label(_box(97, 108, 40, 8, 70), [wagon])  # across it
    assert not beside_a_label(_box(97, 108, 40, 8, 20), [])


def test_across_offsets_are_in_label_widths_and_one_width_over_is_the_band() -> None:
    from training.failure_analysis import across_offsets, one_width_over

    wagon = _box(100, 100, 40, 8, 30)
    a = math.radians(30)
    normal = np.array([-math.sin(a), math.cos(a)])
    for k, expected_one_over in ((0.0, False), (0.6, False), (1.0, True), (1.15, True), (1.4, False)):
        box = _box(*(np.array([100, 100]) + normal * 8 * k), 40, 8, 30)
        offsets = across_offsets(box, [wagon])
        assert len(offsets) == 1 and abs(offsets[0] - k) < 1e-6
        assert one_width_over(box, [wagon]) is expected_one_over
        assert beside_a_label(box, [wagon]) is (0.5 <= k <= 1.6)
    assert across_offsets(_box(100, 100, 40, 8, 100), [wagon]) == []  # across it: not alongside
    assert across_offsets(_box(145, 126, 40, 8, 30), [wagon]) == []  # the next wagon along the track
