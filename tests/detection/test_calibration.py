"""Tests of app.detection.calibration (the pure transform) and of the detector applying it to what it reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.detection.calibration import (
    ClassCalibration,
    calibrate,
    calibrate_scores,
    logit,
    parse_calibration,
    sigmoid,
)

P = np.linspace(0.0, 1.0, 101)


def test_identity_when_absent_or_neutral() -> None:
    assert np.array_equal(calibrate(P), P)  # bit for bit, 0 and 1 included
    assert np.array_equal(calibrate(P, 1.0, 0.0), P)
    assert parse_calibration(None) == {} and parse_calibration({}) == {}
    scores, classes = np.array([0.4, 0.9, 0.6]), np.array([0, 1, 0])
    assert np.array_equal(calibrate_scores(scores, classes, ("railcar", "container"), {}), scores)
    neutral = {"railcar": ClassCalibration(), "container": ClassCalibration(1.0, 0.0)}
    assert np.array_equal(calibrate_scores(scores, classes, ("railcar", "container"), neutral), scores)


def test_inside_the_open_interval_it_inverts_the_logit() -> None:
    q = P[1:-1]
    assert np.allclose(sigmoid(logit(q)), q, atol=1e-12)
    assert np.allclose(calibrate(q, 2.0, 0.5), 1.0 / (1.0 + np.exp(-(np.log(q / (1 - q)) - 0.5) / 2.0)))


@pytest.mark.parametrize(("temperature", "bias"), [(2.0, 0.0), (0.5, 0.0), (1.3, 0.7), (0.8, -1.2)])
def test_strictly_increasing_and_within_the_unit_interval(temperature: float, bias: float) -> None:
    out = calibrate(P, temperature, bias)
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    assert np.all(np.diff(out[1:-1]) > 0)  # strictly inside; the clipped ends keep the order too
    assert np.all(np.diff(out) >= 0)


def test_a_temperature_above_one_pulls_toward_a_half_and_below_one_pushes_away() -> None:
    q = np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    hot, cold = calibrate(q, 2.0), calibrate(q, 0.5)
    assert np.all(np.abs(hot - 0.5) < np.abs(q - 0.5))
    assert np.all(np.abs(cold - 0.5) > np.abs(q - 0.5))
    assert calibrate(0.5, 3.0)[()] == pytest.approx(0.5)  # the pivot without a bias
    assert np.all(calibrate(q, 1.0, 0.5) < q)  # a positive bias lowers every confidence


def test_safe_at_zero_and_one_and_for_extreme_parameters() -> None:
    for t, b in ((1e-3, 0.0), (1e3, 0.0), (0.5, 30.0), (2.0, -30.0)):
        out = calibrate(np.array([0.0, 1e-300, 1.0 - 1e-17, 1.0]), t, b)
        assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    assert 0.0 < calibrate(0.0, 2.0)[()] < 1e-3 and 1 - 1e-3 < calibrate(1.0, 2.0)[()] < 1.0


def test_invalid_parameters_are_refused() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ClassCalibration(temperature=bad)
    with pytest.raises(ValueError):
        ClassCalibration(bias=float("nan"))
    with pytest.raises(ValueError):
        parse_calibration({"railcar": {"temperature": 2.0, "slope": 1.0}})
    assert parse_calibration({"railcar": {"temperature": 2.0}}) == {"railcar": ClassCalibration(2.0, 0.0)}


def test_each_class_gets_its_own_correction() -> None:
    scores, classes = np.array([0.4, 0.9, 0.6, 0.7]), np.array([0, 1, 0, 1])
    out = calibrate_scores(scores, classes, ("railcar", "container"), {"container": ClassCalibration(2.0, 0.0)})
    assert out[0] == 0.4 and out[2] == 0.6  # railcar: no entry
    assert np.allclose(out[[1, 3]], calibrate(scores[[1, 3]], 2.0))
    assert scores.tolist() == [0.4, 0.9, 0.6, 0.7]  # the input is not modified


@pytest.mark.slow
def test_the_detector_reports_calibrated_confidences_but_the_same_counts(tmp_path: Path, busy_yard: Any) -> None:
    """The shipped weights and sidecar, with and without a calibration: identical boxes and counts (the raw scores
    meet the raw thresholds), confidences mapped per class; an explicit threshold or the other TTA mode: raw."""
    from app.detection.detector import Detector
    from tests.support import MODEL_PATH

    shipped = dict(json.loads(MODEL_PATH.with_suffix(".json").read_text()))
    shipped.pop("confidence_calibration", None)
    table = {"railcar": {"temperature": 2.0, "bias": 0.3}, "container": {"temperature": 0.5, "bias": -0.2}}
    detectors = {}
    for name, extra in (("raw", {}), ("calibrated", {"confidence_calibration": table})):
        weights = tmp_path / name / "m.pt"
        weights.parent.mkdir()
        shutil.copy(MODEL_PATH, weights)
        weights.with_suffix(".json").write_text(json.dumps({**shipped, **extra}))
        detectors[name] = Detector(weights, threads=2)
    raw = detectors["raw"].detect(busy_yard.image, gsd_m=busy_yard.gsd_m)
    cal = detectors["calibrated"].detect(busy_yard.image, gsd_m=busy_yard.gsd_m)
    names = ("railcar", "container")
    assert cal.counts(names) == raw.counts(names) and raw.counts(names)["railcar"] > 20
    for cls in names:
        r = sorted((d for d in raw.detections if d.class_name == cls), key=lambda d: -d.confidence)
        c = sorted((d for d in cal.detections if d.class_name == cls), key=lambda d: -d.confidence)
        assert [d.obb for d in c] == [d.obb for d in r]  # a monotone map keeps the boxes and their order
        expected = calibrate([d.confidence for d in r], table[cls]["temperature"], table[cls]["bias"])
        assert np.allclose([d.confidence for d in c], expected)
        assert not np.allclose([d.confidence for d in c], [d.confidence for d in r])
    weights = tmp_path / "calibrated" / "m.pt"
    assert detectors["calibrated"].calibration == parse_calibration(table)
    assert Detector(weights, threads=2, conf=0.1).calibration == {}  # the evaluator's raw low-threshold twin
    assert Detector(weights, threads=2, tta=not shipped.get("tta", False)).calibration == {}
