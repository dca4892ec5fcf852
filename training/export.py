"""Export the shipped weights to ONNX next to them and record the file's checksum in ``models/metrics.json``.

    wagon-detector export                       # models/wagon-obb.pt -> models/wagon-obb.onnx

The export has a fixed 640 x 640 input and a batch of one: the detector always feeds exact tiles, so a fixed
shape costs nothing and runs faster than a dynamic one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from app.offline import configure_offline

ROOT = Path(__file__).resolve().parent.parent


def export_onnx(weights: Path, imgsz: int = 640) -> Path:
    """Write ``<weights>.onnx`` (simplified, fixed shape) and return its path."""
    configure_offline()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / weights.name  # Ultralytics writes the export beside its input
        shutil.copyfile(weights, copy)
        produced = Path(YOLO(str(copy), task="obb").export(format="onnx", imgsz=imgsz, dynamic=False,
                                                             simplify=True, batch=1))
        target = weights.with_suffix(".onnx")
        shutil.copyfile(produced, target)
    return target


def record_export(metrics_file: Path, path: Path, weights: Path) -> None:
    """Note the export's checksum (and the weights it came from) in the metrics file."""
    data = json.loads(metrics_file.read_text()) if metrics_file.exists() else {"current": None, "history": []}
    data.setdefault("exports", {})[path.name] = {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "from_weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "format": "onnx", "input": "1x3x640x640 float32, RGB 0-1",
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


if __name__ == "__main__":
    main()
