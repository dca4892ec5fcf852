"""Tests of training.gsd_calibration: the estimator's constants measured on chips of known GSD."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import training.synth
from app.detection.results import Detection, DetectionResult
from training.gsd_calibration import calibrate


def _box(long_px: float, short_px: float) -> tuple[tuple[float, float], ...]:
    return ((0.0, 0.0), (long_px, 0.0), (long_px, short_px), (0.0, short_px))


class _SizedDetector:
    """Finds, on the current chip, containers 2.6 m wide and railcars 15 m long at the chip's GSD."""

    def __init__(self) -> None:
        self.gsd = 0.5

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        assert gsd_m is None  # calibration measures the first pass, at the image's own scale
        dets = [Detection("container", 0.9, _box(6.06 / self.gsd, 2.6 / self.gsd)) for _ in range(4)]
        dets += [Detection("railcar", 0.9, _box(15.0 / self.gsd, 3.0 / self.gsd)) for _ in range(3)]
        return DetectionResult(dets, 64, 64, None, 0.0)


def test_median_sizes_in_metres_and_the_estimates_error(monkeypatch: pytest.MonkeyPatch) -> None:
    det = _SizedDetector()
    gsds = iter([0.3, 0.5, 0.8])

    def chip(seed: int) -> SimpleNamespace:
        det.gsd = next(gsds)
        return SimpleNamespace(image=np.zeros((64, 64, 3), np.uint8), gsd_m=det.gsd)

    monkeypatch.setattr(training.synth, "generate_chip", chip)
    out = calibrate(det, 3)
    assert out["container_width_m"] == pytest.approx(2.6) and out["railcar_length_m"] == pytest.approx(15.0)
    assert out["containers"] == 12 and out["railcars"] == 9 and out["estimated"] == 3
    # the estimator's constants (2.47 m, 16.7 m) against these sizes: containers vote 5% fine, railcars 11% coarse
    assert out["median_error"] == pytest.approx(2.47 / 2.6 - 1, abs=1e-3)
