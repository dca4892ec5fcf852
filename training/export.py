"""Export the shipped weights to ONNX and OpenVINO next to them and record the checksums in ``models/metrics.json``.

    wagon-detector export     # models/wagon-obb.pt -> models/wagon-obb.onnx, models/wagon-obb_openvino_model/

The ONNX export has a fixed 640 x 640 input and a batch of one: the detector always feeds exact tiles, so a fixed
shape costs nothing and runs faster than a dynamic one. The OpenVINO IR is converted from that ONNX file offline
(``openvino.convert_model``), weights kept in float32; Ultralytics' metadata travels in its ``framework`` rt_info.
Converted in a fresh process the IR is byte for byte reproducible (OpenVINO names unnamed nodes from a
per-process counter).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from app.core.offline import configure_offline

ROOT = Path(__file__).resolve().parent.parent


def export_onnx(weights: Path, imgsz: int = 640) -> Path:
    """Write ``<weights>.onnx`` (simplified, fixed shape) and return its path."""
    configure_offline()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / weights.name  # Ultralytics writes the export beside its input
        shutil.copyfile(weights, copy)
        produced = Path(
            YOLO(str(copy), task="obb").export(format="onnx", imgsz=imgsz, dynamic=False, simplify=True, batch=1)
        )
        target = weights.with_suffix(".onnx")
        shutil.copyfile(produced, target)
    return target


def openvino_dir(weights: Path) -> Path:
    """Where the OpenVINO IR of ``weights`` lives: ``<stem>_openvino_model/<stem>.xml`` (+ ``.bin``)."""
    return weights.parent / f"{weights.stem}_openvino_model"


def export_openvino(onnx_path: Path, weights: Path) -> list[Path]:
    """Convert the ONNX export to OpenVINO IR (float32 weights) in :func:`openvino_dir`; return the .xml and .bin."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))  # the ONNX metadata (class names, ...) lands in rt_info "framework"
    out = openvino_dir(weights)
    out.mkdir(exist_ok=True)
    xml = out / f"{weights.stem}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


def record_export(metrics_file: Path, path: Path, weights: Path, fmt: str = "onnx") -> None:
    """Note the export's checksum (and the weights it came from) in the metrics file, keyed by its path under
    the weights' directory."""
    data = json.loads(metrics_file.read_text()) if metrics_file.exists() else {"current": None, "history": []}
    data.setdefault("exports", {})[path.relative_to(weights.parent).as_posix()] = {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "from_weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "format": fmt,
        "input": "1x3x640x640 float32, RGB 0-1",
    }
    metrics_file.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (``wagon-detector export``)."""
    ap = argparse.ArgumentParser(prog="wagon-detector export", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "models" / "wagon-obb.pt")
    ap.add_argument("--metrics", type=Path, default=ROOT / "models" / "metrics.json")
    a = ap.parse_args(argv)
    out = export_onnx(a.weights)
    record_export(a.metrics, out, a.weights)
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB)")
    for path in export_openvino(out, a.weights):
        record_export(a.metrics, path, a.weights, fmt="openvino")
        print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
