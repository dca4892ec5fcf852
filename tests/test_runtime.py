"""The ONNX export (models/wagon-obb.onnx) against PyTorch: same detections within a stated tolerance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.geometry import rotated_iou
from tests.conftest import MODEL_PATH

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_detector() -> Any:
    if not MODEL_PATH.with_suffix(".onnx").exists():
        pytest.skip("no ONNX export next to the weights")
    from app.detector import load_detector

    return load_detector(MODEL_PATH, runtime="onnx")


def test_onnx_matches_pytorch(detector: Any, onnx_detector: Any, busy_yard: Any) -> None:
    assert onnx_detector.runtime == "onnx" and detector.runtime == "torch"
    a = detector.detect(busy_yard.image, busy_yard.gsd_m)
    b = onnx_detector.detect(busy_yard.image, busy_yard.gsd_m)
    ca, cb = a.counts(detector.class_names), b.counts(detector.class_names)
    # tolerance: counts equal within 2 per class; 90% of boxes coincide (rotated IoU >= 0.9, same class). Most match
    # exactly; the rest are detections whose confidence sits at the threshold and flips between runtimes.
    assert all(abs(ca[c] - cb[c]) <= 2 for c in ca), (ca, cb)
    matched = 0
    for d in a.detections:
        q = np.asarray(d.obb)
        if any(e.class_name == d.class_name and rotated_iou(q, np.asarray(e.obb)) >= 0.9 for e in b.detections):
            matched += 1
    assert matched >= 0.90 * len(a.detections)


def test_auto_prefers_the_export_and_unknown_runtime_is_refused() -> None:
    from app.detector import resolve_runtime

    assert resolve_runtime(MODEL_PATH, "auto")[0] == ("onnx" if MODEL_PATH.with_suffix(".onnx").exists() else "torch")
    assert resolve_runtime(MODEL_PATH, "torch") == ("torch", MODEL_PATH)
    with pytest.raises(ValueError):
        resolve_runtime(MODEL_PATH, "tensorrt")
