"""Where the detector misses synthetic containers: found share by context (on a flat wagon or in a lot, ground
sample distance, nearest neighbour's colour).

Runs on fresh synthetic seeds (default 7,000,000 on, never trained on and not the held-out evaluation seeds), so that
what it shows can steer the generator without tuning on the figures reported:

    python -m training.container_breakdown --weights models/wagon-obb.pt --chips 40
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np

from app.detection.geometry import rotated_iou
from training.synth import CONTAINER, RAILCAR, SynthChip, SynthConfig, generate_chip

FIRST_SEED = 7_000_000
GSD_BANDS_M = (0.2, 0.35, 0.5, 0.65, 0.9)


@dataclass
class ContainerContext:
    """What surrounds one labelled container in a chip."""

    corners: np.ndarray
    gsd_m: float
    on_wagon: bool  # its centre lies inside a labelled railcar (a container on a flat wagon)
    neighbour_colour_diff: float | None  # mean |RGB difference| to the nearest container within 1.2 lengths, if any


def container_contexts(chip: SynthChip) -> list[ContainerContext]:
    """The context of every labelled container of a chip."""
    image = chip.image.astype(np.float64)
    boxes = [o.corners for o in chip.objects if o.class_id == CONTAINER]
    wagons = [o.corners.astype(np.float32) for o in chip.objects if o.class_id == RAILCAR]
    centres = np.array([b.mean(0) for b in boxes]).reshape(-1, 2)

    def mean_colour(corners: np.ndarray) -> np.ndarray:
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
        return image[mask > 0].mean(0) if mask.any() else np.full(3, np.nan)

    colours = [mean_colour(b) for b in boxes]
    out = []
    for j, box in enumerate(boxes):
        centre = tuple(float(v) for v in centres[j])
        on_wagon = any(cv2.pointPolygonTest(w, centre, False) >= 0 for w in wagons)
        length = float(np.linalg.norm(np.roll(box, -1, 0) - box, axis=1).max())
        dist = np.linalg.norm(centres - centres[j], axis=1)
        dist[j] = np.inf
        diff = None
        if len(boxes) > 1 and dist.min() < 1.2 * length:
            diff = float(np.abs(colours[j] - colours[int(dist.argmin())]).mean())
        out.append(ContainerContext(box, chip.gsd_m, on_wagon, diff))
    return out


@dataclass
class Tally:
    """Found / total of one group."""

    found: int = 0
    total: int = 0

    def share(self) -> float | None:
        return round(self.found / self.total, 3) if self.total else None


def _groups(ctx: ContainerContext) -> list[str]:
    place = "on a flat wagon" if ctx.on_wagon else "in a lot or elsewhere"
    band = next(
        (f"GSD {lo}-{hi} m" for lo, hi in pairwise(GSD_BANDS_M) if lo <= ctx.gsd_m < hi),
        f"GSD {ctx.gsd_m:.2f} m",
    )
    if ctx.neighbour_colour_diff is None:
        neighbour = "no neighbour within 1.2 lengths"
    elif ctx.neighbour_colour_diff < 10:
        neighbour = "neighbour of the same colour (< 10)"
    else:
        neighbour = "neighbour of another colour (>= 10)"
    return ["all", place, band, neighbour]


def breakdown(
    chips: Iterable[SynthChip], detect: Callable[[SynthChip], list[np.ndarray]], iou: float = 0.5
) -> dict[str, Tally]:
    """Share of labelled containers found (a container detection at rotated IoU >= ``iou``, greedy one-to-one) per
    context group. ``detect`` returns a chip's container boxes at the operating threshold, best first."""
    tallies: dict[str, Tally] = {}
    for chip in chips:
        contexts = container_contexts(chip)
        used = [False] * len(contexts)
        for det in detect(chip):
            ious = [0.0 if used[j] else rotated_iou(det, c.corners) for j, c in enumerate(contexts)]
            if ious and max(ious) >= iou:
                used[int(np.argmax(ious))] = True
        for ctx, found in zip(contexts, used, strict=True):
            for g in _groups(ctx):
                t = tallies.setdefault(g, Tally())
                t.total += 1
                t.found += found
    return tallies


def main(argv: list[str] | None = None) -> None:
    """CLI: print the found share of synthetic containers by context."""
    from app.detection.detector import load_detector

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=Path("models/wagon-obb.pt"))
    ap.add_argument("--chips", type=int, default=40)
    ap.add_argument("--first-seed", type=int, default=FIRST_SEED)
    ap.add_argument("--json", type=Path, help="also write the table here")
    a = ap.parse_args(argv)
    detector = load_detector(a.weights)

    def detect(chip: SynthChip) -> list[np.ndarray]:
        dets = detector.detect(chip.image, chip.gsd_m).detections
        return [np.asarray(d.obb) for d in dets if d.class_name == "container"]

    chips = (generate_chip(a.first_seed + i, SynthConfig()) for i in range(a.chips))
    table = breakdown(chips, detect)
    print(f"containers found at the operating threshold, {a.chips} chips from seed {a.first_seed}:")
    for group, t in sorted(table.items(), key=lambda kv: (kv[0] != "all", kv[0])):
        print(f"  {group:40s} {t.found:5d} / {t.total:5d}  {t.share()}")
    if a.json:
        a.json.write_text(
            json.dumps(
                {g: {"found": t.found, "total": t.total, "share": t.share()} for g, t in table.items()}, indent=1
            )
        )


if __name__ == "__main__":
    main()
