"""Tests of app.detection.detector with the real shipped model: counts on a generated chip, tile seams, GSD
resampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.detection.geometry import rotated_iou
from training.synth import RAILCAR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def yard(busy_yard: Any) -> Any:
    return busy_yard


def _matched(dets: list[Any], truth: list[np.ndarray], iou: float = 0.5) -> int:
    used: set[int] = set()
    for d in dets:
        q = np.asarray(d.obb)
        for j, t in enumerate(truth):
            if j not in used and rotated_iou(q, t) >= iou:
                used.add(j)
                break
    return len(used)


def test_counts_railcars_on_a_generated_yard(detector: Any, yard: Any) -> None:
    truth = [o.corners for o in yard.objects if o.class_id == RAILCAR]
    result = detector.detect(yard.image, gsd_m=yard.gsd_m)
    railcars = [d for d in result.detections if d.class_name == "railcar"]
    # stated tolerance: within 25% of the true count, and at least 75% of the wagons found at rotated IoU >= 0.5
    assert abs(len(railcars) - len(truth)) <= 0.25 * len(truth)
    assert _matched(railcars, truth) >= 0.75 * len(truth)
    assert result.width == yard.image.shape[1] and result.height == yard.image.shape[0]


def test_boxes_map_back_to_original_pixels_when_resampling(detector: Any, yard: Any) -> None:
    native = detector.detect(yard.image).detections
    resampled = detector.detect(yard.image, gsd_m=yard.gsd_m).detections  # resampled to the working GSD and back
    h, w = yard.image.shape[:2]
    for d in resampled:
        cx, cy = d.center
        assert -5 <= cx <= w + 5 and -5 <= cy <= h + 5
    # most boxes found both ways coincide in original pixels
    assert _matched(resampled, [np.asarray(d.obb) for d in native]) >= 0.6 * min(len(native), len(resampled))


def test_tile_seams_neither_lose_nor_double(detector: Any, yard: Any) -> None:
    """The chip placed so that tile seams cut through it gives the same detections as the chip alone."""
    alone = detector.detect(yard.image).detections
    canvas = np.full((1100, 1100, 3), 0, np.uint8)
    canvas[:] = yard.image.mean(axis=(0, 1)).astype(np.uint8)
    ox, oy = 300, 260  # tiles of 640 with overlap: seams run through the chip
    canvas[oy : oy + 640, ox : ox + 640] = yard.image
    tiled = detector.detect(canvas).detections
    inside = [d for d in tiled if ox <= d.center[0] < ox + 640 and oy <= d.center[1] < oy + 640]
    for cls in ("railcar", "container"):
        a = [d for d in alone if d.class_name == cls]
        b = [d for d in inside if d.class_name == cls]
        if cls == "railcar":  # ~100 of them; the chip's few containers sit near the threshold, where the context
            # around the chip (none alone, padding when embedded) flips some either way, seams or not
            assert abs(len(a) - len(b)) <= max(2, 0.1 * len(a)), cls
        # no duplicates: no two detections of a class overlap by more than the NMS threshold
        boxes = [np.asarray(d.obb) for d in b]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert rotated_iou(boxes[i], boxes[j]) <= 0.5
    shifted = [np.asarray(d.obb) - np.array([ox, oy]) for d in inside if d.class_name == "railcar"]
    found = _matched([d for d in alone if d.class_name == "railcar"], shifted)
    assert found >= 0.85 * len([d for d in alone if d.class_name == "railcar"])


def test_rejects_non_rgb_arrays(detector: Any) -> None:
    with pytest.raises(ValueError):
        detector.detect(np.zeros((32, 32), np.uint8))


def test_model_info_from_a_sidecar_holding_only_thresholds(tmp_path: Path) -> None:
    """`evaluate --tune` on a fresh checkpoint writes only thresholds: name and version fall back, conf is read."""
    import hashlib
    import json

    from app.detection.detector import read_model_info

    weights = tmp_path / "best.pt"
    weights.write_bytes(b"not really weights")
    weights.with_suffix(".json").write_text(json.dumps({"conf": {"railcar": 0.35, "container": 0.4}}))
    info = read_model_info(weights)
    assert (info.name, info.version) == ("best", hashlib.sha256(b"not really weights").hexdigest()[:12])
    assert info.conf == {"railcar": 0.35, "container": 0.4} and info.working_gsd_m == 0.4


def _mirrored(dets: list[Any], width: int) -> list[np.ndarray]:
    return [np.stack([width - np.asarray(d.obb)[:, 0], np.asarray(d.obb)[:, 1]], 1) for d in dets]


def test_test_time_augmentation_is_mirror_symmetric_and_finds_the_wagons(yard: Any) -> None:
    """With TTA the views of an image and of its mirror image are the same four pictures, so the detections of the
    mirror image are the mirrored detections (up to float noise), and the wagons are still found."""
    from app.detection.detector import load_detector
    from tests.support import MODEL_PATH

    tta = load_detector(MODEL_PATH, tta=True)
    image = yard.image
    assert image.shape[0] == image.shape[1] == tta.info.imgsz  # one exact tile: no padding to break the symmetry
    plain = tta.detect(image).detections
    mirror = tta.detect(np.ascontiguousarray(image[:, ::-1])).detections
    for cls in ("railcar", "container"):
        a = [d for d in plain if d.class_name == cls]
        b = [d for d in mirror if d.class_name == cls]
        assert abs(len(a) - len(b)) <= 1, cls
        assert _matched(b, _mirrored(a, image.shape[1]), iou=0.9) >= len(a) - 1, cls
    truth = [o.corners for o in yard.objects if o.class_id == RAILCAR]
    railcars = [d for d in plain if d.class_name == "railcar"]
    assert abs(len(railcars) - len(truth)) <= 0.25 * len(truth)
    assert _matched(railcars, truth) >= 0.75 * len(truth)


def test_tta_mode_picks_its_own_thresholds_and_marks_an_override(tmp_path: Path) -> None:
    """A sidecar keeps thresholds per mode; running the model in the mode its sidecar does not choose uses that
    mode's thresholds and says so in the version it records."""
    import json
    import shutil

    from app.detection.detector import Detector
    from tests.support import MODEL_PATH

    weights = tmp_path / "m.pt"
    shutil.copy(MODEL_PATH, weights)
    on, off = {"railcar": 0.5, "container": 0.45}, {"railcar": 0.35, "container": 0.3}
    weights.with_suffix(".json").write_text(
        json.dumps(
            {"name": "m", "version": "9", "imgsz": 640, "tta": True, "conf": on, "conf_by_tta": {"on": on, "off": off}}
        )
    )
    as_shipped, forced_off = Detector(weights), Detector(weights, tta=False)
    assert as_shipped.tta and as_shipped.class_conf == on and as_shipped.version == "9"
    assert not forced_off.tta and forced_off.class_conf == off and forced_off.version == "9+tta-off"
    assert Detector(weights, tta=False, conf=0.6).class_conf == {"railcar": 0.6, "container": 0.6}


def test_the_train_context_decides_which_railcars_count(
    detector: Any, yard: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped sidecar turns the context on; the rescored confidences, not the network's, meet the threshold."""
    import app.detection.detector as module

    assert detector.info.lone_railcar_factor < 1.0
    assert detector.class_conf["railcar"] > detector.info.lone_railcar_floor  # neighbours count from the floor
    seen: list[float] = []

    def everything_lone(corners: Any, scores: Any, classes: Any, railcar: int, factor: float, floor: float) -> Any:
        seen.append(factor)
        out = np.asarray(scores, dtype=float).copy()
        out[np.asarray(classes) == railcar] *= factor * 0.5  # as if no railcar had a neighbour, and more
        return out

    before = detector.detect(yard.image, gsd_m=yard.gsd_m).counts(("railcar", "container"))
    monkeypatch.setattr(module, "rescore_lone_railcars", everything_lone)
    after = detector.detect(yard.image, gsd_m=yard.gsd_m)
    assert seen == [detector.info.lone_railcar_factor]
    assert after.counts(("railcar", "container"))["container"] == before["container"]
    assert all(d.confidence >= detector.class_conf[d.class_name] for d in after.detections)
    assert after.counts(("railcar", "container"))["railcar"] < before["railcar"]


def test_candidate_floor_keeps_the_counted_detections_exactly(detector: Any) -> None:
    """Candidates below the thresholds are extra: what is counted is what the detector counts without them."""
    from app.detection.detector import load_detector
    from tests.support import MODEL_PATH
    from tests.support.images import first_busy_yard

    chip = first_busy_yard(20)
    with_floor = load_detector(MODEL_PATH, threads=detector.threads, candidate_floor=0.1)
    plain = detector.detect(chip.image, chip.gsd_m)
    full = with_floor.detect(chip.image, chip.gsd_m)

    def key(ds: list) -> list:
        return sorted((d.class_name, round(d.confidence, 5), tuple(np.round(np.asarray(d.obb), 2).ravel())) for d in ds)

    assert key(full.detections) == key(plain.detections)
    assert full.candidates and all(
        0.1 <= d.threshold_score < with_floor.class_conf[d.class_name] and not d.counted for d in full.candidates
    )
    assert plain.candidates == []
