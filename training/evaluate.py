"""Evaluate the detector on a held-out synthetic set and on the real labelled images in ``../shared/real-eval``.

Figures per class: OBB mAP50 (all-point interpolated AP at rotated IoU >= 0.5; containers on real images matched
loosely, rotated IoU >= 0.3 or centre inside, as the real-eval README asks), precision and recall at the model's
operating confidence, and the mean absolute count error per image. On real images ``uncertain`` objects are ignore
regions and the true count is a range (labels .. labels + uncertain): a count inside it has zero error.

    wagon-detector evaluate --synthetic 200 --real ../shared/real-eval --json models/eval.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from app.core.offline import CLASS_NAMES
from app.detection.detector import Detector, load_detector
from app.detection.gsd_estimate import GsdEstimate, detect_estimating_gsd
from app.detection.matching import match_quality
from app.detection.results import Detection

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT_SEED = 9_000_000  # synthetic test seeds; training uses 0.. and validation 5,000,000..
TUNE_SEED = 5_000_000  # validation seeds (never in the held-out figures) for threshold tuning
# detections kept for AP. Not lower: Ultralytics' NMS has a wall-clock limit and silently drops boxes on a busy CPU
# when a dense scene yields thousands of low-confidence candidates (AP is slightly underestimated by the cut-off)
LOW_CONF = 0.1
LOW_CONF_MAX_DET = 50_000  # per tile: never truncate, so the operating-point counts equal the service's


@dataclass
class Truth:
    """Labels of one image for one class."""

    boxes: list[np.ndarray]
    ignore: list[np.ndarray] = field(default_factory=list)
    exhaustive: bool = True  # False: a lower bound; precision and AP are not scored


@dataclass
class ClassTally:
    """Accumulates matches of one class across images."""

    scores: list[float] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)
    n_truth: int = 0
    tp_at_op: int = 0
    fp_at_op: int = 0
    count_abs_err: list[float] = field(default_factory=list)
    count_rel_err: list[float] = field(default_factory=list)
    count_true: list[int] = field(default_factory=list)

    def merge(self, other: ClassTally) -> None:
        """Add another tally's matches and counts to this one."""
        self.scores += other.scores
        self.hits += other.hits
        self.n_truth += other.n_truth
        self.tp_at_op += other.tp_at_op
        self.fp_at_op += other.fp_at_op
        self.count_abs_err += other.count_abs_err
        self.count_rel_err += other.count_rel_err
        self.count_true += other.count_true

    def ap50(self) -> float | None:
        if self.n_truth == 0:
            return None
        order = np.argsort(-np.asarray(self.scores))
        hits = np.asarray(self.hits, float)[order]
        tp = np.cumsum(hits)
        fp = np.cumsum(1 - hits)
        recall = tp / self.n_truth
        precision = tp / np.maximum(tp + fp, 1e-9)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[1.0], precision, [0.0]])
        mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
        idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))

    def summary(self) -> dict[str, float | int | None]:
        tp, fp = self.tp_at_op, self.fp_at_op
        ap = self.ap50()
        return {
            "map50": None if ap is None else round(ap, 4),
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / self.n_truth, 4) if self.n_truth else None,
            "count_mae": round(float(np.mean(self.count_abs_err)), 3) if self.count_abs_err else None,
            "count_mean_rel_err": round(float(np.mean(self.count_rel_err)), 4) if self.count_rel_err else None,
            "count_err_over_true": (
                round(float(np.sum(self.count_abs_err) / max(np.sum(self.count_true), 1)), 4)
                if self.count_abs_err
                else None
            ),
            "n_truth": self.n_truth,
        }


_LOW: dict[str, Detector] = {}


def low_conf_detector(detector: Detector) -> Detector:
    """The same weights and runtime at a very low threshold and no detection cap (for AP); loaded once."""
    key = f"{detector.weights.resolve()}|{detector.runtime}|{detector.openvino_precision}|{detector.tta}"
    if key not in _LOW:
        _LOW[key] = Detector(
            detector.weights,
            threads=detector.threads,
            conf=LOW_CONF,
            max_det=LOW_CONF_MAX_DET,
            runtime=detector.runtime,
            openvino_precision=detector.openvino_precision,
            tta=detector.tta,
        )
    return _LOW[key]


def match_image(dets: list[Detection], truth: Truth, op_conf: float, loose: bool, tally: ClassTally) -> dict:
    """Greedy match of one image's detections (one class) to its truth; update the tally; return per-image figures."""
    thr = 0.3 if loose else 0.5
    used = [False] * len(truth.boxes)
    n_pred_op = 0
    tp_op = 0
    for d in sorted(dets, key=lambda d: -d.confidence):
        q = np.asarray(d.obb)
        best, best_j = 0.0, -1
        for j, t in enumerate(truth.boxes):
            if not used[j]:
                m = match_quality(q, t, loose)
                if m > best:
                    best, best_j = m, j
        if best >= thr:
            used[best_j] = True
            hit = True
        else:
            if any(match_quality(q, ig, True) >= 0.3 for ig in truth.ignore):
                if d.confidence >= op_conf:
                    n_pred_op += 1  # counted as predicted (it is in the count range) but neither TP nor FP
                continue
            hit = False
        if d.confidence >= op_conf:
            n_pred_op += 1
            tp_op += hit
            if truth.exhaustive:  # a lower-bound truth scores neither precision nor recall
                tally.tp_at_op += hit
                tally.fp_at_op += not hit
        if truth.exhaustive:
            tally.scores.append(d.confidence)
            tally.hits.append(hit)
    if truth.exhaustive:
        tally.n_truth += len(truth.boxes)
    lo, hi = len(truth.boxes), len(truth.boxes) + len(truth.ignore)
    err = 0 if lo <= n_pred_op <= hi else min(abs(n_pred_op - lo), abs(n_pred_op - hi))
    if truth.exhaustive:
        tally.count_abs_err.append(err)
        tally.count_rel_err.append(err / max(lo, 1))
        tally.count_true.append(lo)
    return {
        "true": lo,
        "true_max": hi,
        "predicted": n_pred_op,
        "count_error": err,
        "tp": tp_op,
        "exhaustive": truth.exhaustive,
    }


def of_class(dets: list[Detection], name: str) -> list[Detection]:
    """The detections of one class."""
    return [d for d in dets if d.class_name == name]


def _detect(
    detector: Detector, low: Detector, image: np.ndarray, gsd: float | None, estimate_gsd: bool
) -> tuple[list[Detection], GsdEstimate | None]:
    """``low``'s detections at ``gsd``, or, with ``estimate_gsd``, at the GSD the service would estimate (returned
    too; None when not estimated or too few objects voted)."""
    if estimate_gsd:
        result, estimate = detect_estimating_gsd(detector, image, second=low)
        return result.detections, estimate
    return low.detect(image, gsd).detections, None


def evaluate_synthetic(
    detector: Detector, n: int, use_gsd: bool = True, first_seed: int = HELD_OUT_SEED, estimate_gsd: bool = False
) -> dict:
    """Figures on ``n`` synthetic chips from ``first_seed`` (default: the held-out seeds, never trained on);
    with ``estimate_gsd`` the chips' GSD is not given but estimated, as the service does (``use_gsd`` is then off)."""
    from training.synth import RENDERER_VERSION, generate_chip

    low = low_conf_detector(detector)
    tallies = {c: ClassTally() for c in CLASS_NAMES}
    for i in range(n):
        chip = generate_chip(first_seed + i)
        dets, _ = _detect(detector, low, chip.image, chip.gsd_m if use_gsd else None, estimate_gsd)
        for k, name in enumerate(CLASS_NAMES):
            truth = Truth([o.corners for o in chip.objects if o.class_id == k])
            match_image(of_class(dets, name), truth, detector.class_conf[name], loose=False, tally=tallies[name])
    return {
        "images": n,
        "seeds": [first_seed, first_seed + n - 1],
        "renderer": RENDERER_VERSION,
        "use_gsd": use_gsd and not estimate_gsd,
        "estimate_gsd": estimate_gsd,
        "operating_conf": detector.class_conf,
        "classes": {c: t.summary() for c, t in tallies.items()},
        "map50": _mean([t.ap50() for t in tallies.values()]),
    }


def tune_thresholds(detector: Detector, n: int, first_seed: int = TUNE_SEED) -> dict[str, float]:
    """Per-class confidence thresholds that minimise the mean absolute count error on synthetic validation chips."""
    from training.synth import generate_chip

    low = low_conf_detector(detector)
    grid = np.round(np.arange(0.15, 0.81, 0.05), 2)
    errors = {c: np.zeros(len(grid)) for c in CLASS_NAMES}
    for i in range(n):
        chip = generate_chip(first_seed + i)
        dets = low.detect(chip.image, chip.gsd_m).detections
        for k, name in enumerate(CLASS_NAMES):
            true = sum(o.class_id == k for o in chip.objects)
            conf = np.array([d.confidence for d in dets if d.class_name == name])
            errors[name] += np.abs((conf[None, :] >= grid[:, None]).sum(1) - true)
    return {c: float(grid[int(np.argmin(e))]) for c, e in errors.items()}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


# which classes each real image labels exhaustively (see ../shared/real-eval/README.md)
REAL_EXHAUSTIVE: dict[str, dict[str, bool | None]] = {
    "swiss_yard_left_0p25m": {"railcar": True, "container": True},
    "swiss_yard_left_0p5m": {"railcar": True, "container": True},
    "kari_port": {"railcar": False, "container": None},  # railcars a lower bound; containers not labelled
    "kari_containers_1": {"railcar": True, "container": True},
    "kari_containers_2": {"railcar": False, "container": True},
}


def label_corners(obj: dict) -> np.ndarray:
    """The four corners of a real-eval label: its polygon (a closed ring opened), else its rotated box."""
    poly = np.asarray(obj["polygon"], float)
    if len(poly) >= 5 and np.allclose(poly[0], poly[-1]):
        poly = poly[:-1]
    if len(poly) != 4:
        r = obj["rbox"]
        poly = cv2.boxPoints(((r["cx"], r["cy"]), (r["w"], r["h"]), r["angle_deg"])).astype(float)
    return poly


def label_gsd(value: float | str) -> float:
    """The GSD of a real-eval image: a number, or the first number in an estimate such as '~0.65 m/px'."""
    if isinstance(value, (int, float)):
        return float(value)
    import re

    found = re.search(r"\d+\.\d+", value)
    if not found:
        raise ValueError(f"no ground sample distance in {value!r}")
    return float(found.group())


def evaluate_real(detector: Detector, real_dir: Path, use_gsd: bool = True, estimate_gsd: bool = False) -> dict:
    """Figures on every labelled image of ``real_dir`` (each at its own ground sample distance, or, with
    ``estimate_gsd``, at the one the service estimates from a first pass)."""
    low = low_conf_detector(detector)
    tallies = {c: ClassTally() for c in CLASS_NAMES}
    per_image = {}
    for js in sorted(real_dir.glob("*.json")):
        meta = json.loads(js.read_text())
        image = np.asarray(Image.open(js.with_suffix(".png")).convert("RGB"))
        gsd = label_gsd(meta["gsd_m_per_px"]) if use_gsd else None
        dets, estimate = _detect(detector, low, image, gsd, estimate_gsd)
        rows = {}
        for name in CLASS_NAMES:
            exhaustive = REAL_EXHAUSTIVE.get(js.stem, {}).get(name, True)
            if exhaustive is None:
                continue
            truth = Truth(
                [label_corners(o) for o in meta["objects"] if o["class"] == name],
                [label_corners(o) for o in meta.get("uncertain", []) if o["class"] == name],
                exhaustive,
            )
            per_class = ClassTally()
            op = detector.class_conf[name]
            row = match_image(of_class(dets, name), truth, op, loose=(name == "container"), tally=per_class)
            tallies[name].merge(per_class)
            ap50 = per_class.ap50()
            row["map50"] = None if ap50 is None else round(ap50, 4)
            rows[name] = row
        per_image[js.stem] = {"gsd_m": label_gsd(meta["gsd_m_per_px"]), **rows}
        if estimate_gsd:
            per_image[js.stem]["estimated_gsd_m"] = estimate.gsd_m if estimate is not None else None
    return {
        "use_gsd": use_gsd and not estimate_gsd,
        "estimate_gsd": estimate_gsd,
        "operating_conf": detector.class_conf,
        "classes": {c: t.summary() for c, t in tallies.items()},
        "images": per_image,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (``wagon-detector evaluate``)."""
    ap = argparse.ArgumentParser(prog="wagon-detector evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "models" / "wagon-obb.pt")
    ap.add_argument("--synthetic", type=int, default=200, help="number of held-out synthetic chips (0: skip)")
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real-eval")
    ap.add_argument("--no-gsd", action="store_true", help="do not resample to the working GSD")
    ap.add_argument(
        "--estimate-gsd",
        action="store_true",
        help="give no GSD but estimate it from a first pass, as the service does for an image without one",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument(
        "--tune",
        type=int,
        default=0,
        metavar="N",
        help="first choose per-class thresholds on N synthetic validation chips and write them into "
        "the model's sidecar JSON",
    )
    ap.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time augmentation on or off (default: as the sidecar says); with --tune the choice "
        "is written into the sidecar with the thresholds tuned for it (also kept per mode in "
        "conf_by_tta, which a detector run in the other mode uses)",
    )
    a = ap.parse_args(argv)
    if a.tune:
        tuning = load_detector(a.weights, threads=a.threads, tta=a.tta)
        thresholds = tune_thresholds(tuning, a.tune)
        sidecar = a.weights.with_suffix(".json")
        info = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        tta = tuning.tta
        info["conf"] = thresholds
        info["tta"] = tta
        info.setdefault("conf_by_tta", {})["on" if tta else "off"] = thresholds
        sidecar.write_text(json.dumps(info, indent=2) + "\n")
        print(f"thresholds tuned on {a.tune} validation chips: {thresholds} -> {sidecar}")
    det = (
        Detector(a.weights, threads=a.threads, tta=a.tta)
        if a.tune
        else load_detector(a.weights, threads=a.threads, tta=a.tta)
    )
    out: dict[str, object] = {"model": {"name": det.name, "version": det.version, "tta": det.tta}}
    if a.synthetic:
        out["synthetic"] = evaluate_synthetic(det, a.synthetic, use_gsd=not a.no_gsd, estimate_gsd=a.estimate_gsd)
    if a.real and a.real.is_dir():
        out["real"] = evaluate_real(det, a.real, use_gsd=not a.no_gsd, estimate_gsd=a.estimate_gsd)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
