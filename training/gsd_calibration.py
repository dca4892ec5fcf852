"""Calibrate and check app.detection.gsd_estimate on synthetic tuning chips (never the held-out or real images).

Runs the shipped detector on ``--chips`` chips at their own scale (as the estimator's first pass does), prints the
median detected container width and railcar length in metres at each chip's true GSD (the estimator's constants),
and how far the estimate lands from the true GSD per chip.

    python -m training.gsd_calibration --chips 60
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.detection.gsd_estimate import box_sides, estimate_gsd

if TYPE_CHECKING:
    from app.detection.pipeline import WindowDetector

TUNE_SEED = 5_000_000


def calibrate(detector: WindowDetector, chips: int, first_seed: int = TUNE_SEED) -> dict[str, object]:
    """Median detected sizes (m) at the true GSD, and the estimator's relative errors, over ``chips`` chips."""
    from training.synth import generate_chip

    widths, lengths, errors = [], [], []
    for i in range(chips):
        chip = generate_chip(first_seed + i)
        dets = detector.detect(chip.image, None).detections
        for d in dets:
            long_px, short_px = box_sides(d)
            if d.class_name == "container":
                widths.append(short_px * chip.gsd_m)
            else:
                lengths.append(long_px * chip.gsd_m)
        est = estimate_gsd(dets)
        if est is not None:
            errors.append(est.gsd_m / chip.gsd_m - 1.0)
    err = np.abs(errors)
    return {
        "chips": chips,
        "container_width_m": round(float(np.median(widths)), 3) if widths else None,
        "railcar_length_m": round(float(np.median(lengths)), 3) if lengths else None,
        "containers": len(widths),
        "railcars": len(lengths),
        "estimated": len(errors),
        "median_error": round(float(np.median(errors)), 4) if errors else None,
        "median_abs_error": round(float(np.median(err)), 4) if errors else None,
        "p90_abs_error": round(float(np.quantile(err, 0.9)), 4) if errors else None,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: print the calibration as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "wagon-obb.pt")
    ap.add_argument("--chips", type=int, default=60)
    a = ap.parse_args(argv)
    from app.detection.detector import Detector

    print(json.dumps(calibrate(Detector(a.weights), a.chips), indent=1))


if __name__ == "__main__":
    main()
