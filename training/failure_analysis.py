"""Draw the detector's boxes on a labelled real image with hits, false alarms and misses marked.

Green: detection matching a label (railcars rotated IoU >= 0.5; containers loosely). Red: false alarm. Yellow:
missed label. Grey: uncertain label (ignore region). Thin lines: railcars; the same colours for containers.
The printed tally also counts the false alarms that lie alongside a label, offset across it by about its width
(a box on the shadow band beside a wagon: 0.5-1.6 widths), and of those the ones a whole width over (0.8-1.2).

    python -m training.failure_analysis ../shared/real-eval/swiss_yard_left_0p5m --out models/failures_swiss_0p5m.png

Mind the image's licence before committing a drawing of it (the real-eval README lists them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from app.detection.detector import load_detector
from app.detection.geometry import box_axes
from training.evaluate import ROOT, label_corners, label_gsd, match_quality

GREEN, RED, YELLOW, GREY = (0, 200, 0), (0, 0, 255), (0, 230, 255), (160, 160, 160)  # BGR


def _axes(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Centre, unit long axis, length and width of a rotated box given by its 4 corners."""
    centre, axis, length, width = box_axes(corners)
    return centre[0], axis[0], float(length[0]), float(width[0])


def across_offsets(det: np.ndarray, truths: list[np.ndarray], max_angle_deg: float = 15.0) -> list[float]:
    """How far a box is offset across each label it runs alongside (nearly parallel, centres at most half the
    label's length apart along it), in that label's widths: 0 on it, 1 on the band one width over."""
    d_centre, d_axis, _, _ = _axes(det)
    out = []
    for t in truths:
        centre, axis, length, width = _axes(t)
        if abs(float(np.dot(d_axis, axis))) < np.cos(np.radians(max_angle_deg)):
            continue
        off = d_centre - centre
        if abs(float(np.dot(off, axis))) <= 0.5 * length:
            out.append(abs(float(off[0] * axis[1] - off[1] * axis[0])) / max(width, 1e-9))
    return out


def beside_a_label(det: np.ndarray, truths: list[np.ndarray], max_angle_deg: float = 15.0) -> bool:
    """Whether a false alarm lies alongside a labelled object: nearly parallel, overlapping it along its length by at
    least half, and offset across it by 0.5-1.6 of its width — where a box on the shadow band beside a wagon lands."""
    return any(0.5 <= o <= 1.6 for o in across_offsets(det, truths, max_angle_deg))


def one_width_over(det: np.ndarray, truths: list[np.ndarray]) -> bool:
    """Whether a false alarm sits one label width (0.8-1.2 widths) across a label it runs alongside: the box moved
    wholly onto the band beside the wagon, not merely shifted towards it."""
    return any(0.8 <= o <= 1.2 for o in across_offsets(det, truths))


def draw_failures(stem: Path, weights: Path, out: Path, scale: int = 2) -> dict[str, dict[str, int]]:
    """Render the overlay for ``<stem>.png`` + ``<stem>.json``; return hits, false alarms (and how many of them lie
    beside a label) and misses per class."""
    meta = json.loads(stem.with_suffix(".json").read_text())
    rgb = np.asarray(Image.open(stem.with_suffix(".png")).convert("RGB"))
    detector = load_detector(weights)
    dets = detector.detect(rgb, label_gsd(meta["gsd_m_per_px"])).detections
    canvas = cv2.resize(rgb[..., ::-1], None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    tally: dict[str, dict[str, int]] = {}

    def poly(corners: np.ndarray, colour: tuple[int, int, int]) -> None:
        pts = np.round(np.asarray(corners) * scale).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], True, colour, 1, cv2.LINE_AA)

    for name in detector.class_names:
        truth = [label_corners(o) for o in meta["objects"] if o["class"] == name]
        ignore = [label_corners(o) for o in meta.get("uncertain", []) if o["class"] == name]
        loose = name == "container"
        thr = 0.3 if loose else 0.5
        used = [False] * len(truth)
        hits = false_alarms = beside = one_over = 0
        for ig in ignore:
            poly(ig, GREY)
        for d in (d for d in dets if d.class_name == name):
            q = np.asarray(d.obb)
            scores = [(match_quality(q, t, loose), j) for j, t in enumerate(truth) if not used[j]]
            best, j = max(scores, default=(0.0, -1))
            if best >= thr:
                used[j] = True
                hits += 1
                poly(q, GREEN)
            elif any(match_quality(q, ig, True) >= 0.3 for ig in ignore):
                continue
            else:
                false_alarms += 1
                beside += beside_a_label(q, truth)
                one_over += one_width_over(q, truth)
                poly(q, RED)
        for t, u in zip(truth, used, strict=True):
            if not u:
                poly(t, YELLOW)
        tally[name] = {
            "hits": hits,
            "false_alarms": false_alarms,
            "false_alarms_beside_a_label": beside,
            "false_alarms_one_width_over": one_over,
            "misses": used.count(False),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), canvas)
    return tally


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stem", type=Path, help="path of a real-eval image without extension")
    ap.add_argument("--weights", type=Path, default=ROOT / "models" / "wagon-obb.pt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scale", type=int, default=2)
    a = ap.parse_args(argv)
    print(json.dumps(draw_failures(a.stem, a.weights, a.out, a.scale)))


if __name__ == "__main__":
    main()
