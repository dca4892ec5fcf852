"""Time to answer degenerate uploads (thin strips, a coarse GSD on a small chip): medians of several runs.

    .venv/bin/python -m bench.degenerate_bench

Runs the service's analysis (:func:`app.usecases.scenes.analyse_source`) with a detector that only counts its calls
(working GSD 0.4 m/px, as the shipped sidecar), so the figure is the time to the refusal, with no network.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.detection.results import DetectionResult
from app.usecases import scenes

BAD = Path(__file__).resolve().parent.parent / "tests" / "data" / "bad_inputs"


class _Info:
    working_gsd_m = 0.4
    tile_overlap_px = 128
    iou = 0.5


class CountingDetector:
    """Detects nothing; counts the windows it is given."""

    name, version, class_names, info = "counting", "0", ("railcar", "container"), _Info()

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        self.calls += 1
        return DetectionResult(detections=[], width=image.shape[1], height=image.shape[0], gsd_m=gsd_m, timing_ms={})


def _time(data: bytes, gsd_m: float | None, runs: int = 5) -> tuple[float, str, int]:
    times, outcome, calls = [], "", 0
    for _ in range(runs):
        det = CountingDetector()
        t0 = time.perf_counter()
        try:
            scenes.analyse_source(det, data, gsd_m)
            outcome = "analysed"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:70]}"
        times.append(time.perf_counter() - t0)
        calls = det.calls
    return statistics.median(times), outcome, calls


def main() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((320, 320, 3), 90, np.uint8)).save(buf, format="PNG")
    cases: list[tuple[str, bytes, Any]] = [
        (name, (BAD / name).read_bytes(), None)
        for name in ("strip_1x100000.png", "strip_100000x1.png", "strip_2x48000.jpg")
    ]
    cases.append(("320 px chip, gsd_m=5", buf.getvalue(), 5.0))
    cases.append(("320 px chip, gsd_m=0.52", buf.getvalue(), 0.52))
    for name, data, gsd in cases:
        t, outcome, calls = _time(data, gsd)
        print(f"{name:28s} {t * 1000:9.2f} ms  detector windows {calls:4d}  {outcome}")


if __name__ == "__main__":
    main()
