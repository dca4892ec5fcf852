"""Bounds on the work of one image: thin strips and GSDs far coarser than the model's are refused, a large
scene at a fine GSD is not."""

from __future__ import annotations

import pytest

from app.detection.imaging import ImageShapeError, ImageTooLargeError
from app.detection.workload import check_aspect, check_scale


@pytest.mark.parametrize("width, height", [(1, 100_000), (100_000, 1), (2, 64_000), (51, 1)])
def test_thin_strips_are_refused(width: int, height: int) -> None:
    with pytest.raises(ImageShapeError, match=f"{width}x{height} px"):
        check_aspect(width, height)


@pytest.mark.parametrize("width, height", [(640, 640), (50, 1), (20_000, 400), (1, 1)])
def test_ordinary_shapes_pass(width: int, height: int) -> None:
    check_aspect(width, height)


def test_coarse_gsd_on_a_small_chip_is_refused() -> None:
    with pytest.raises(ImageShapeError, match=r"gsd_m at most 1\.6"):
        check_scale(320, 320, 5 / 0.4, 0.4)  # gsd_m=5 at a working 0.4 m/px: enlarged 12.5 times


def test_large_scene_at_a_fine_gsd_passes() -> None:
    check_scale(20_000, 20_000, 0.5 / 0.4, 0.4)  # 625 Mpx once resampled
    check_scale(320, 320, 1.6 / 0.4, 0.4)


def test_resampled_size_is_bounded() -> None:
    with pytest.raises(ImageTooLargeError, match="once resampled"):
        check_scale(40_000, 40_000, 1.5, 0.4)  # 3.6 Gpx after resampling
