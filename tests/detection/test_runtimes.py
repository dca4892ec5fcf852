"""The exports (ONNX, OpenVINO) against PyTorch, the runtime choice, the NMS, and the exports' recorded checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.detection.detector import export_path, resolve_runtime
from app.detection.runtimes import Parity, decode
from tests.support import MODEL_PATH

# Tolerance of "same detections": per image and class, equal counts; every box matched one-to-one by a box of the
# same class with rotated IoU >= 0.9 and confidence within 0.02 (bench/perf.py measures the same on 20 chips).
TOLERANCE = {"iou": 0.9, "conf_tol": 0.02}


def _runtime_detector(runtime: str) -> Any:
    if not export_path(MODEL_PATH, runtime).exists():
        pytest.skip(f"no {runtime} export next to the weights")
    from app.detection.detector import load_detector

    return load_detector(MODEL_PATH, runtime=runtime)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_export_gives_the_same_detections_as_pytorch(detector: Any, busy_yard: Any, runtime: str) -> None:
    other = _runtime_detector(runtime)
    assert other.runtime == runtime and detector.runtime == "torch"
    parity = Parity(**TOLERANCE)
    parity.add(
        detector.detect(busy_yard.image, busy_yard.gsd_m).detections,
        other.detect(busy_yard.image, busy_yard.gsd_m).detections,
        detector.class_names,
    )
    assert parity.reference >= 60
    assert parity.count_share == 1.0, parity.__dict__
    assert parity.match_share >= 0.99, parity.__dict__


def test_decode_keeps_what_ultralytics_nms_keeps() -> None:
    """The pairwise fast NMS equals Ultralytics' full-matrix one on crowded, overlapping, two-class boxes."""
    from app.core.offline import configure_offline

    configure_offline()  # before Ultralytics is imported: no online check
    import torch
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import xywhr2xyxyxyxy

    rng = np.random.default_rng(7)
    n = 3000
    centres = rng.uniform(0, 640, (40, 2))[rng.integers(0, 40, n)] + rng.normal(0, 4, (n, 2))  # clusters
    raw = (
        np.concatenate(
            [centres, rng.uniform(5, 40, (n, 2)), rng.uniform(0, 1, (n, 2)), rng.uniform(-0.8, 0.8, (n, 1))], axis=1
        )
        .T[None]
        .astype(np.float32)
    )
    for conf in (0.3, 0.05):
        ((corners, scores, classes),) = decode(raw, conf, 0.5, 2000, 2)
        ref = non_max_suppression(torch.from_numpy(raw), conf, 0.5, max_det=2000, nc=2, rotated=True, max_time_img=1e9)[
            0
        ]
        assert 50 < len(scores) < n
        np.testing.assert_array_equal(classes, ref[:, 5].numpy().astype(int))
        np.testing.assert_allclose(scores, ref[:, 4].numpy())
        np.testing.assert_allclose(corners, xywhr2xyxyxyxy(torch.cat([ref[:, :4], ref[:, -1:]], -1)).numpy(), atol=1e-3)


def test_auto_takes_the_fastest_export_present(tmp_path: Path) -> None:
    weights = tmp_path / "m.pt"
    weights.write_bytes(b"x")
    assert resolve_runtime(weights, "auto") == ("torch", weights)
    with pytest.raises(FileNotFoundError, match="onnx export not found"):
        resolve_runtime(weights, "onnx")
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert resolve_runtime(weights, "auto") == ("onnx", tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="openvino export not found"):
        resolve_runtime(weights, "openvino")
    xml = tmp_path / "m_openvino_model" / "m.xml"
    xml.parent.mkdir()
    xml.write_bytes(b"x")
    assert resolve_runtime(weights, "auto") == ("openvino", xml)
    assert resolve_runtime(weights, "onnx") == ("onnx", tmp_path / "m.onnx")
    assert resolve_runtime(weights, "torch") == ("torch", weights)
    with pytest.raises(ValueError):
        resolve_runtime(weights, "tensorrt")


def test_shipped_exports_match_their_recorded_checksums() -> None:
    models = MODEL_PATH.parent
    exports = json.loads((models / "metrics.json").read_text())["exports"]
    weights_sha = hashlib.sha256(MODEL_PATH.read_bytes()).hexdigest()
    for name in ("wagon-obb.onnx", "wagon-obb_openvino_model/wagon-obb.xml", "wagon-obb_openvino_model/wagon-obb.bin"):
        assert name in exports, name
        assert hashlib.sha256((models / name).read_bytes()).hexdigest() == exports[name]["sha256"], name
        assert exports[name]["from_weights_sha256"] == weights_sha, name


def test_parity_counts_mismatches() -> None:
    from app.detection.results import Detection

    box = ((0.0, 0.0), (10.0, 0.0), (10.0, 4.0), (0.0, 4.0))
    moved = tuple((x + 5, y) for x, y in box)
    a = [Detection("railcar", 0.9, box), Detection("railcar", 0.8, moved)]
    parity = Parity(**TOLERANCE)
    parity.add(a, [Detection("railcar", 0.95, box)], ("railcar", "container"))
    assert (parity.matched, parity.conf_ok, parity.max_count_diff) == (1, 0, 1)  # conf off by 0.05; one missing
    assert parity.match_share == 0 and parity.count_share == 0.5 and not parity.holds()


@pytest.mark.slow
def test_openvino_conversion_reproduces_the_shipped_ir(tmp_path: Path) -> None:
    """`wagon-detector export` converts the ONNX file offline; the result is byte for byte the committed IR.

    In a fresh process: OpenVINO numbers unnamed nodes from a per-process counter, so a second conversion in the
    same process names them differently (same network, same .bin)."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from training.export import export_openvino; "
        "export_openvino(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(MODEL_PATH.with_suffix(".onnx")), str(tmp_path / MODEL_PATH.name)],
        check=True,
        cwd=MODEL_PATH.parent.parent,
        timeout=300,
    )
    exports = json.loads((MODEL_PATH.parent / "metrics.json").read_text())["exports"]
    for key in ("wagon-obb_openvino_model/wagon-obb.xml", "wagon-obb_openvino_model/wagon-obb.bin"):
        assert hashlib.sha256((tmp_path / key).read_bytes()).hexdigest() == exports[key]["sha256"], key


def test_openvino_threads_are_not_pinned_to_cores() -> None:
    """Pinned, every process's OpenVINO threads start at core 0: two single-threaded server workers then shared one
    core and each ran at half speed (bench/perf.py throughput)."""
    path = export_path(MODEL_PATH, "openvino")
    if not path.exists():
        pytest.skip("no openvino export next to the weights")
    from app.detection.runtimes import OpenVinoEngine

    engine = OpenVinoEngine(path, threads=1)
    assert engine._compiled.get_property("ENABLE_CPU_PINNING") is False
    assert engine._compiled.get_property("INFERENCE_NUM_THREADS") == 1
