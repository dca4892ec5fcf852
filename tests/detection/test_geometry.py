"""Tests of app.detection.geometry: rotated IoU, NMS and the tile layout that keeps seams free of losses and doubles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.detection.geometry import box_axes, greedy_rotated_nms, rotated_iou, tile_core, tile_origins


def box(cx: float, cy: float, length: float, width: float, angle_deg: float) -> np.ndarray:
    a = np.radians(angle_deg)
    u = np.array([np.cos(a), np.sin(a)]) * length / 2
    v = np.array([-np.sin(a), np.cos(a)]) * width / 2
    c = np.array([cx, cy])
    return np.array([c + u + v, c - u + v, c - u - v, c + u - v])


def test_rotated_iou_identical_disjoint_and_half() -> None:
    a = box(0, 0, 10, 4, 30)
    assert rotated_iou(a, a) == pytest.approx(1.0, abs=1e-4)
    assert rotated_iou(a, box(100, 0, 10, 4, 30)) == 0.0
    # shifted by half its length along its axis: overlap 5x4 of union 15x4
    shifted = box(5 * np.cos(np.radians(30)), 5 * np.sin(np.radians(30)), 10, 4, 30)
    assert rotated_iou(a, shifted) == pytest.approx(1 / 3, abs=1e-3)


def test_rotated_iou_of_nearly_identical_boxes_is_one() -> None:
    # the same box from two runtimes, a few millionths of a pixel apart: OpenCV's intersectConvexConvex gave 0.5
    a = np.array([[334.5, 82.0], [339.2, 81.6], [336.7, 54.3], [332.0, 54.8]])
    b = a + np.array([[5e-6, -3e-6], [-4e-6, 2e-6], [1e-6, 6e-6], [-2e-6, -5e-6]])
    assert rotated_iou(a, b) == pytest.approx(1.0, abs=1e-4)
    assert rotated_iou(a, b[::-1]) == pytest.approx(1.0, abs=1e-4)  # either winding


def test_rotated_boxes_side_by_side_do_not_suppress_each_other() -> None:
    # wagons packed side by side at 45 degrees: their axis-aligned boxes overlap heavily, oriented boxes do not
    wagons = np.array([box(50 + 3.2 * k * 0.707, 50 - 3.2 * k * 0.707, 30, 3, 45) for k in range(6)])
    scores = np.linspace(0.9, 0.5, 6)
    keep = greedy_rotated_nms(wagons, scores, np.zeros(6, int), iou=0.5)
    assert sorted(keep) == list(range(6))


def test_nms_removes_duplicates_per_class_only() -> None:
    a = box(10, 10, 20, 4, 0)
    b = box(10.5, 10, 20, 4, 0)
    corners = np.array([a, b, a])
    keep = greedy_rotated_nms(corners, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), iou=0.5)
    assert sorted(keep) == [0, 2]


@pytest.mark.parametrize("length", [100, 640, 641, 1000, 1279, 2048, 5000])
def test_tiles_cover_and_cores_partition_the_axis(length: int) -> None:
    tile, overlap = 640, 128
    origins = tile_origins(length, tile, overlap)
    assert origins[0] == 0
    assert origins[-1] + tile >= length
    for a, b in zip(origins, origins[1:], strict=False):
        assert a + tile - b >= overlap  # neighbours overlap by at least the longest object
    cores = [tile_core(o, tile, length, origins) for o in origins]
    assert cores[0][0] == 0 and cores[-1][1] == length
    for (_s0, e0), (s1, _e1) in zip(cores, cores[1:], strict=False):
        assert e0 == s1  # no gap, no double ownership
    for o, (s, e) in zip(origins, cores, strict=True):
        # a core lies at least overlap/2 inside its tile (except at the image edge): objects centred there are whole
        assert s >= o and e <= o + tile
        if s > 0:
            assert s - o >= overlap / 2
        if e < length:
            assert o + tile - e >= overlap / 2


def test_resample_scale_and_resample_bring_an_image_to_the_working_gsd() -> None:
    from app.detection.geometry import resample, resample_scale

    assert resample_scale(0.8, 0.4) == 2.0 and resample_scale(0.3, 0.4) == pytest.approx(0.75)
    assert resample_scale(None, 0.4) == 1.0 and resample_scale(0.5, None) == 1.0
    assert resample_scale(0.405, 0.4) == 1.0  # within 2%: used as it is
    img = np.zeros((10, 21, 3), np.uint8)
    img[:, 10:] = 200
    up = resample(img, 2.0)
    assert up.shape == (20, 42, 3) and up.dtype == np.uint8
    down = resample(img, 0.5)
    assert down.shape == (5, 10, 3)  # 10.5 rounds to even
    assert 0 < down[0, 4, 0] < 200  # area averaging mixes the two halves at the edge (input columns 8.4-10.5)
    assert resample(img, 1.0) is img


def _rotated_box(cx: float, cy: float, length: float, width: float, angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    u = np.array([math.cos(a), math.sin(a)]) * length / 2
    v = np.array([-math.sin(a), math.cos(a)]) * width / 2
    c = np.array([cx, cy])
    return np.array([c - u - v, c + u - v, c + u + v, c - u + v])


def test_box_axes_reads_length_width_and_direction_whatever_the_corner_order() -> None:
    boxes = np.stack([_rotated_box(10, 20, 30, 5, 30), _rotated_box(0, 0, 30, 5, 30)[[1, 2, 3, 0]]])
    centre, axis, length, width = box_axes(boxes)
    assert np.allclose(centre, [[10, 20], [0, 0]])
    assert np.allclose(length, 30) and np.allclose(width, 5)
    assert np.allclose(np.abs(axis @ [math.cos(math.radians(30)), math.sin(math.radians(30))]), 1.0)
