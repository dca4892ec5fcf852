"""Measure, and fit a correction for, the calibration of the confidences the detector reports.

A reported confidence of 0.8 should be right about 80 % of the time. The shipped detector runs in its default
configuration (the sidecar's TTA mode, thresholds and train context) through the evaluator's low-threshold twin
(:func:`training.evaluate.low_conf_detector`, floor 0.1, raw confidences); every box is matched to the labels by the
evaluator's precision rule (:func:`training.evaluate.match_image`: synthetic chips rotated IoU >= 0.5; real images
the loose rule, uncertain labels as ignore regions, only the classes an image labels exhaustively), giving
(class, confidence, correct) records.

**Which boxes.** The service reports only the boxes at or above the operating thresholds (after the train
context), and the correction is applied only to those, so the primary figures and the fit use exactly these
*reported* boxes. The boxes from the floor of 0.1 up are kept too, for a secondary ECE figure (``floor``).

Per class: a reliability table (10 equal-width bins: count, mean confidence, accuracy), the expected calibration
error (ECE: the count-weighted mean of ``|accuracy - mean confidence|`` over the bins), NLL and Brier score. A
temperature and bias on the logit scale (:mod:`app.detection.calibration`) are fitted by minimising the NLL on
synthetic tuning chips only (seeds 5,000,000+, where the thresholds were tuned; never the held-out seeds 9,000,000+,
never a real image), and the ECE before and after is reported on the held-out chips and on the real images. The
temperature-only fit is reported beside it; the shipped candidate is the temperature-and-bias fit.

A class's correction qualifies for the sidecar when it lowers that class's ECE on the real
images and does not make held-out synthetic clearly worse (ECE up by more than ``SYNTHETIC_SLACK``); ``--write``
puts the qualifying classes into the sidecar's ``confidence_calibration`` (and removes the key when none
qualifies).

    python -m training.calibration --tune 60 --synthetic 200 --threads 2 --json calibration.json \\
        --plot models/calibration.png --write
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.offline import CLASS_NAMES
from app.detection.calibration import ClassCalibration, calibrate, logit, sigmoid
from app.detection.detector import Detector, load_detector
from training.evaluate import (
    HELD_OUT_SEED,
    LOW_CONF,
    REAL_EXHAUSTIVE,
    ROOT,
    TUNE_SEED,
    ClassTally,
    Truth,
    label_corners,
    label_gsd,
    low_conf_detector,
    match_image,
    of_class,
)

#: Equal-width confidence bins of the reliability tables and the ECE.
N_BINS = 10
#: Held-out synthetic ECE may rise by at most this much for a correction to qualify ("not clearly worse").
SYNTHETIC_SLACK = 0.01
#: Bootstrap resamples of the ECE intervals.
N_BOOT = 1000


@dataclass
class Records:
    """One row per detection matched against exhaustive labels: class, raw confidence, whether it is right,
    whether the service reports it (at or above the operating threshold), and the image it comes from."""

    cls: list[str] = field(default_factory=list)
    conf: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    reported: list[bool] = field(default_factory=list)
    image: list[str] = field(default_factory=list)

    def add(self, name: str, image: str, tally: ClassTally, op_conf: float) -> None:
        """Append one image's matches of one class (a tally filled by :func:`training.evaluate.match_image`)."""
        for s, h in zip(tally.scores, tally.hits, strict=True):
            self.cls.append(name)
            self.conf.append(float(s))
            self.correct.append(bool(h))
            self.reported.append(bool(s >= op_conf))
            self.image.append(image)

    def select(self, name: str, reported_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Confidences and correctness (float 0/1) of one class's boxes (only the reported ones by default)."""
        sel = np.asarray(self.cls) == name
        if reported_only:
            sel &= np.asarray(self.reported, bool)
        return np.asarray(self.conf, float)[sel], np.asarray(self.correct, float)[sel]


# ------------------------------------------------------------------------------------------- collecting


def collect_synthetic(detector: Detector, n: int, first_seed: int) -> Records:
    """Records of ``n`` synthetic chips from ``first_seed``, each at its true GSD (the evaluator's IoU rule)."""
    from training.synth import generate_chip

    low = low_conf_detector(detector)
    rec = Records()
    for i in range(n):
        chip = generate_chip(first_seed + i)
        dets = low.detect(chip.image, chip.gsd_m).detections
        for k, name in enumerate(CLASS_NAMES):
            tally = ClassTally()
            truth = Truth([o.corners for o in chip.objects if o.class_id == k])
            match_image(of_class(dets, name), truth, detector.class_conf[name], loose=False, tally=tally)
            rec.add(name, str(first_seed + i), tally, detector.class_conf[name])
    return rec


def collect_real(detector: Detector, real_dir: Path) -> Records:
    """Records of every labelled image in ``real_dir`` at its GSD: the evaluator's loose rule, uncertain labels as
    ignore regions, only the classes the image labels exhaustively (``REAL_EXHAUSTIVE``)."""
    from PIL import Image

    low = low_conf_detector(detector)
    rec = Records()
    for js in sorted(real_dir.glob("*.json")):
        meta = json.loads(js.read_text())
        image = np.asarray(Image.open(js.with_suffix(".png")).convert("RGB"))
        dets = low.detect(image, label_gsd(meta["gsd_m_per_px"])).detections
        for name in CLASS_NAMES:
            if not REAL_EXHAUSTIVE.get(js.stem, {}).get(name, True):  # a lower bound, or not labelled
                continue
            truth = Truth(
                [label_corners(o) for o in meta["objects"] if o["class"] == name],
                [label_corners(o) for o in meta.get("uncertain", []) if o["class"] == name],
            )
            tally = ClassTally()
            match_image(
                of_class(dets, name), truth, detector.class_conf[name], loose=(name == "container"), tally=tally
            )
            rec.add(name, js.stem, tally, detector.class_conf[name])
    return rec


# ------------------------------------------------------------------------------------------- measuring


def reliability(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, float | int | None]]:
    """Per equal-width bin of [0, 1] (the last one closed): its edges, count, mean confidence and accuracy
    (None for an empty bin)."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    rows: list[dict[str, float | int | None]] = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        rows.append(
            {
                "lo": round(b / n_bins, 4),
                "hi": round((b + 1) / n_bins, 4),
                "count": n,
                "mean_conf": round(float(conf[sel].mean()), 4) if n else None,
                "accuracy": round(float(correct[sel].mean()), 4) if n else None,
            }
        )
    return rows


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float | None:
    """Expected calibration error: ``sum_b n_b / N * |accuracy_b - mean confidence_b|`` over equal-width bins
    (None without boxes)."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    if len(conf) == 0:
        return None
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    gap = np.abs(np.bincount(idx, correct, n_bins) - np.bincount(idx, conf, n_bins))  # n_b * |acc_b - conf_b|
    return float(gap.sum() / n.sum())


def nll(conf: np.ndarray, correct: np.ndarray) -> float | None:
    """Mean negative log-likelihood of the outcomes under the confidences (clipped away from 0 and 1)."""
    if len(conf) == 0:
        return None
    z, y = logit(conf), np.asarray(correct, float)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))  # -[y log p + (1 - y) log(1 - p)]


def brier(conf: np.ndarray, correct: np.ndarray) -> float | None:
    """Mean squared difference between confidence and outcome."""
    if len(conf) == 0:
        return None
    return float(np.mean((np.asarray(conf, float) - np.asarray(correct, float)) ** 2))


def ece_interval(
    conf: np.ndarray, correct: np.ndarray, after: np.ndarray, seed: int = 0, n_boot: int = N_BOOT
) -> dict[str, list[float]] | None:
    """Bootstrap 95 % intervals (boxes resampled as if independent) of the ECE before, after, and of the paired
    change after - before."""
    if len(conf) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        i = rng.integers(0, len(conf), len(conf))
        b, a = ece(conf[i], correct[i]), ece(after[i], correct[i])
        assert b is not None and a is not None
        draws.append((b, a, a - b))
    q = np.quantile(np.asarray(draws), [0.025, 0.975], axis=0)
    return {
        k: [round(float(q[0, j]), 4), round(float(q[1, j]), 4)] for j, k in enumerate(("before", "after", "change"))
    }


# ------------------------------------------------------------------------------------------- fitting


def fit_calibration(conf: np.ndarray, correct: np.ndarray, bias: bool = True, max_iter: int = 100) -> ClassCalibration:
    """The temperature (and bias) minimising the NLL of ``correct`` under ``sigmoid((logit(conf) - b) / T)``.

    The NLL is convex in ``a = 1/T`` and ``c = -b/T`` (a logistic regression on the logit), so Newton's method
    with step halving finds the minimum. Raises ValueError when there is nothing to fit (no boxes, or all right or
    all wrong) or the fit is not increasing in the confidence (``a <= 0``).
    """
    z, y = logit(conf), np.asarray(correct, float)
    if len(z) == 0 or y.min() == y.max():
        raise ValueError("a calibration fit needs both right and wrong boxes")
    x = np.stack([z, np.ones_like(z)], axis=1) if bias else z[:, None]
    w = np.zeros(x.shape[1])
    w[0] = 1.0  # start at the identity

    def loss(v: np.ndarray) -> float:
        t = x @ v
        return float(np.mean(np.logaddexp(0.0, t) - y * t))

    current = loss(w)
    for _ in range(max_iter):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) / len(y)
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(y) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            trial = w - scale * step
            new = loss(trial)
            if new <= current:
                break
            scale *= 0.5
        else:
            break
        w, improvement = trial, current - new
        current = new
        if improvement < 1e-12 or np.max(np.abs(scale * step)) < 1e-10:
            break
    a = float(w[0])
    if not a > 0:
        raise ValueError(f"fitted slope {a} is not positive: no increasing calibration fits these boxes")
    return ClassCalibration(temperature=1.0 / a, bias=-float(w[1]) / a if bias else 0.0)


def figures(conf: np.ndarray, correct: np.ndarray, cal: ClassCalibration | None = None) -> dict[str, Any]:
    """ECE, NLL, Brier, accuracy, mean confidence and the reliability table of the boxes (corrected by ``cal``)."""
    p = conf if cal is None else calibrate(conf, cal.temperature, cal.bias)
    return {
        "boxes": int(len(p)),
        "accuracy": round(float(np.mean(correct)), 4) if len(p) else None,
        "mean_conf": round(float(np.mean(p)), 4) if len(p) else None,
        "ece": _r(ece(p, correct)),
        "nll": _r(nll(p, correct)),
        "brier": _r(brier(p, correct)),
        "reliability": reliability(p, correct),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def qualifies(heldout: dict[str, Any], real: dict[str, Any], slack: float = SYNTHETIC_SLACK) -> bool:
    """The shipping rule for one class: real-eval ECE lower after the correction, held-out synthetic not clearly
    worse (ECE up by at most ``slack``)."""
    rb, ra = real["before"]["ece"], real["after"]["ece"]
    hb, ha = heldout["before"]["ece"], heldout["after"]["ece"]
    if None in (rb, ra, hb, ha):
        return False
    return bool(ra < rb and ha <= hb + slack)


def analyse(sets: dict[str, Records], fit_on: str = "tuning") -> dict[str, Any]:
    """Fit per class on ``sets[fit_on]``'s reported boxes; figures before and after on every set, per class."""
    out: dict[str, Any] = {"fits": {}, "sets": {name: {} for name in sets}}
    for cls in CLASS_NAMES:
        conf, correct = sets[fit_on].select(cls)
        fits: dict[str, ClassCalibration | None] = {}
        for key, with_bias in (("temperature_bias", True), ("temperature", False)):
            try:
                fits[key] = fit_calibration(conf, correct, bias=with_bias)
            except ValueError:
                fits[key] = None
        out["fits"][cls] = {
            key: None if f is None else {"temperature": round(f.temperature, 4), "bias": round(f.bias, 4)}
            for key, f in fits.items()
        }
        chosen = _rounded(fits["temperature_bias"])
        t_only = _rounded(fits["temperature"])
        for name, rec in sets.items():
            c, y = rec.select(cls)
            row: dict[str, Any] = {"before": figures(c, y)}
            if chosen is not None:
                row["after"] = figures(c, y, chosen)
                row["ece_interval"] = ece_interval(c, y, calibrate(c, chosen.temperature, chosen.bias))
            if t_only is not None:
                row["after_temperature_only_ece"] = _r(ece(calibrate(c, t_only.temperature, t_only.bias), y))
            fc, fy = rec.select(cls, reported_only=False)
            row["floor"] = {
                "boxes": int(len(fc)),
                "ece_before": _r(ece(fc, fy)),
                "ece_after": None if chosen is None else _r(ece(calibrate(fc, chosen.temperature, chosen.bias), fy)),
            }
            out["sets"][name][cls] = row
    return out


def _rounded(c: ClassCalibration | None) -> ClassCalibration | None:
    """The correction as it would be written into the sidecar (4 decimals), so the figures are the shipped ones."""
    return None if c is None else ClassCalibration(round(c.temperature, 4), round(c.bias, 4))


# ------------------------------------------------------------------------------------------- drawing


def plot_reliability(result: dict[str, Any], path: Path, sets: Sequence[tuple[str, str]]) -> None:
    """A reliability diagram: one panel per (set, class), accuracy against mean confidence per bin before and
    after the fitted correction (marker area by box count), the diagonal, and the ECEs; a class whose correction
    does not qualify (``result["qualifies"]``) is marked "not shipped"."""
    from app.core.offline import configure_offline

    configure_offline()  # MPLCONFIGDIR in the project's cache, no font download
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sets), len(CLASS_NAMES), figsize=(3.2 * len(CLASS_NAMES), 3.0 * len(sets)))
    axes = np.atleast_2d(axes)
    for r, (key, title) in enumerate(sets):
        for c, cls in enumerate(CLASS_NAMES):
            ax = axes[r, c]
            row = result["sets"][key][cls]
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
            for which, colour, label in (("before", "tab:blue", "raw"), ("after", "tab:orange", "fitted T, b")):
                if which not in row:
                    continue
                bins = [b for b in row[which]["reliability"] if b["count"]]
                x = [b["mean_conf"] for b in bins]
                y = [b["accuracy"] for b in bins]
                n = np.asarray([b["count"] for b in bins], float)
                ax.plot(x, y, color=colour, lw=1.0)
                ax.scatter(x, y, s=8 + 120 * n / max(n.max(), 1), color=colour, alpha=0.8, lw=0)
                ax.plot([], [], color=colour, marker="o", label=f"{label}: ECE {row[which]['ece']:.3f}")
            shipped = "" if result.get("qualifies", {}).get(cls) else "; fit not shipped"
            ax.set_title(f"{title}: {cls} ({row['before']['boxes']} boxes{shipped})", fontsize=8)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7, loc="lower right", frameon=False)
            if r == len(sets) - 1:
                ax.set_xlabel("confidence (bin mean)", fontsize=7)
            if c == 0:
                ax.set_ylabel("share right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- CLI


def write_sidecar(weights: Path, result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Put the qualifying classes' temperature-and-bias fits into the sidecar's ``confidence_calibration`` (the key
    removed when no class qualifies); return what was written."""
    chosen = {cls: result["fits"][cls]["temperature_bias"] for cls, ok in result["qualifies"].items() if ok}
    sidecar = weights.with_suffix(".json")
    info = json.loads(sidecar.read_text())
    if chosen:
        info["confidence_calibration"] = chosen
    elif info.pop("confidence_calibration", None) is None:
        return chosen  # nothing to write
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    return chosen


def main(argv: list[str] | None = None) -> None:
    """CLI: collect, fit, measure; print (and optionally write) the figures as JSON."""
    ap = argparse.ArgumentParser(prog="python -m training.calibration", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "models" / "wagon-obb.pt")
    ap.add_argument("--tune", type=int, default=60, help="synthetic tuning chips (seeds 5,000,000+) to fit on")
    ap.add_argument("--synthetic", type=int, default=200, help="held-out synthetic chips (seeds 9,000,000+)")
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "real-eval")
    ap.add_argument("--runtime", default="auto", help="as the service (default auto: OpenVINO when exported)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--plot", type=Path, default=None, help="write the reliability diagram (PNG) here")
    ap.add_argument("--write", action="store_true", help="put the qualifying classes' correction into the sidecar")
    a = ap.parse_args(argv)
    if "holdout" in a.real.resolve().parts:
        raise SystemExit("the held-out real images are never read")
    det = load_detector(a.weights, threads=a.threads, runtime=a.runtime)
    if low_conf_detector(det).calibration:  # the records must be the network's raw (context-rescored) scores
        raise RuntimeError("the low-threshold twin reports calibrated confidences")
    sets = {
        "tuning": collect_synthetic(det, a.tune, TUNE_SEED),
        "heldout_synthetic": collect_synthetic(det, a.synthetic, HELD_OUT_SEED),
    }
    if a.real.is_dir():
        sets["real_eval"] = collect_real(det, a.real)
    result = analyse(sets)
    result["qualifies"] = (
        {
            cls: qualifies(result["sets"]["heldout_synthetic"][cls], result["sets"]["real_eval"][cls])
            for cls in CLASS_NAMES
        }
        if "real_eval" in sets and all("after" in result["sets"]["real_eval"][c] for c in CLASS_NAMES)
        else dict.fromkeys(CLASS_NAMES, False)
    )
    result["setup"] = {
        "model": {"name": det.name, "version": det.version, "tta": det.tta, "runtime": det.runtime},
        "operating_conf": det.class_conf,
        "train_context": {"factor": det.info.lone_railcar_factor, "floor": det.info.lone_railcar_floor},
        "floor": LOW_CONF,
        "boxes": "reported boxes (raw confidence >= the operating threshold after the train context); 'floor': "
        f"all boxes >= {LOW_CONF}",
        "fit": f"per class temperature and bias by minimum NLL on the tuning set's reported boxes "
        f"(seeds {TUNE_SEED}-{TUNE_SEED + a.tune - 1})",
        "tuning_seeds": [TUNE_SEED, TUNE_SEED + a.tune - 1],
        "heldout_seeds": [HELD_OUT_SEED, HELD_OUT_SEED + a.synthetic - 1],
        "real_images": sorted(set(sets["real_eval"].image)) if "real_eval" in sets else [],
        "bins": N_BINS,
        "synthetic_slack": SYNTHETIC_SLACK,
        "ece_interval": f"bootstrap 95% over boxes ({N_BOOT} resamples, boxes treated as independent)",
    }
    if a.write:
        result["written"] = write_sidecar(a.weights, result)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    if a.plot:
        panels = [("heldout_synthetic", "held-out synthetic")] + (
            [("real_eval", "real-eval")] if "real_eval" in sets else []
        )
        plot_reliability(result, a.plot, panels)


if __name__ == "__main__":
    main()
