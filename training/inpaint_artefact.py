"""How much the Swiss real-eval image's preparation costs the detector, measured on synthetic chips.

The Swiss yard image in ``../shared/real-eval`` had its label outlines burned in as yellow strokes, removed by
inpainting (OpenCV Telea, radius 3): a soft smear along exactly the labelled wagons' edges, which no vendor image
has. This tool renders fresh synthetic yard chips at that image's ground sample distance, inpaints the same kind of
stroke along each railcar label, and evaluates the detector on the chips with and without it (also downsampled x0.5,
as the 0.5 m version was). It measures the artefact; never train on it.

    python -m training.inpaint_artefact --chips 30 --strokes 0 2 3 5 7

Chips come from seeds 7,200,000 on (neither trained on nor the held-out set). ``--roof-ratio`` draws the camouflaged
wagons' roofs at that share of the ground's brightness (the real lower train: 0.72-0.81) and camouflages 60% of the
wagons instead of yard_camo's 40%.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from app.detection.detector import Detector, load_detector
from app.detection.geometry import rotated_iou
from training.evaluate import ROOT, ClassTally, Truth, low_conf_detector, match_image, of_class
from training.failure_analysis import beside_a_label
from training.synth import YARD_CAMO_CONFIG, SynthChip, generate_chip

#: The Swiss real-eval image's ground sample distance at full resolution (m/px).
SWISS_GSD_M = 0.255
FIRST_SEED = 7_200_000


def inpaint_outlines(image: np.ndarray, boxes: list[np.ndarray], stroke_px: int, radius: int = 3) -> np.ndarray:
    """``image`` with a ``stroke_px`` wide outline along each box (4 corners, pixels) inpainted away (Telea), as
    burned-in label outlines were removed from the Swiss figure. ``stroke_px`` 0 returns a copy."""
    if stroke_px <= 0 or not boxes:
        return image.copy()
    mask = np.zeros(image.shape[:2], np.uint8)
    for corners in boxes:
        pts = np.round(np.asarray(corners, np.float64).reshape(-1, 2) * 8).astype(np.int32)  # 3 fractional bits
        cv2.polylines(mask, [pts], True, 255, thickness=stroke_px, shift=3)
    return cv2.inpaint(np.ascontiguousarray(image), mask, radius, cv2.INPAINT_TELEA)


def railcar_figures(detector: Detector, chips: list[SynthChip], stroke_px: int, half: bool) -> dict[str, float]:
    """Railcar mAP50, precision, recall and count error on ``chips`` with their railcar outlines inpainted (and
    downsampled x0.5 when ``half``); and the false alarms — detections at the operating threshold that overlap no
    label at rotated IoU >= 0.5 — with how many of them lie beside a label (:func:`beside_a_label`)."""
    low = low_conf_detector(detector)
    conf = detector.class_conf["railcar"]
    tally = ClassTally()
    false_alarms = beside = 0
    for chip in chips:
        truths = [np.asarray(o.corners, np.float64).reshape(4, 2) for o in chip.objects if o.class_id == 0]
        image, gsd = inpaint_outlines(chip.image, truths, stroke_px), chip.gsd_m
        if half:
            image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
            truths, gsd = [t / 2 for t in truths], gsd * 2
        dets = of_class(low.detect(image, gsd).detections, "railcar")
        match_image(dets, Truth(truths), conf, loose=False, tally=tally)
        for d in dets:
            box = np.asarray(d.obb, np.float64)
            if d.confidence >= conf and max((rotated_iou(box, t) for t in truths), default=0.0) < 0.5:
                false_alarms += 1
                beside += beside_a_label(box, truths)
    s = tally.summary()
    return {
        "map50": float(s["map50"] or 0.0),
        "precision": float(s["precision"] or 0.0),
        "recall": float(s["recall"] or 0.0),
        "count_err_over_true": float(s["count_err_over_true"] or 0.0),
        "false_alarms": false_alarms,
        "false_alarms_beside_a_label": beside,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: one line per stroke width and scale."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "models" / "wagon-obb.pt")
    ap.add_argument("--chips", type=int, default=30)
    ap.add_argument("--strokes", type=int, nargs="+", default=[0, 2, 3, 5, 7], help="outline widths (px at 0.255 m)")
    ap.add_argument(
        "--roof-ratio",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="camouflaged roofs' brightness as a share of the ground's, with 60%% of wagons "
        "camouflaged (default: yard_camo's 0.85-1.12 on 40%%)",
    )
    a = ap.parse_args(argv)
    cfg = replace(YARD_CAMO_CONFIG, gsd_range=(SWISS_GSD_M, SWISS_GSD_M), gsd_focus_probability=0.0)
    if a.roof_ratio:
        cfg = replace(cfg, ground_roof_ratio=(a.roof_ratio[0], a.roof_ratio[1]), ground_roof_probability=0.6)
    chips = [generate_chip(FIRST_SEED + i, cfg) for i in range(a.chips)]
    detector = load_detector(a.weights)
    for stroke in a.strokes:
        for half in (False, True):
            f = railcar_figures(detector, chips, stroke, half)
            print(
                f"stroke {stroke} px, {'0.51' if half else '0.255'} m/px: railcar mAP50 {f['map50']:.3f}, "
                f"precision {f['precision']:.3f}, recall {f['recall']:.3f}, count error/true "
                f"{f['count_err_over_true']:.3f}, false alarms {f['false_alarms']} "
                f"({f['false_alarms_beside_a_label']} beside a label)",
                flush=True,
            )


if __name__ == "__main__":
    main()
