"""Tests of training.train and training.evaluate: offline fine-tuning from the shipped weights, and the scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.detection.results import Detection
from tests.support import PROJECT_ROOT
from training.evaluate import ClassTally, Truth, match_image
from training.synth import SynthConfig, write_dataset

ROOT = PROJECT_ROOT


def _det(corners: np.ndarray, conf: float) -> Detection:
    return Detection("railcar", conf, tuple((float(x), float(y)) for x, y in corners))


def _box(cx: float) -> np.ndarray:
    return np.array([[cx - 10, 0], [cx + 10, 0], [cx + 10, 4], [cx - 10, 4]], float)


def test_matching_counts_ignores_and_ap() -> None:
    truth = Truth(boxes=[_box(0), _box(30), _box(60)], ignore=[_box(90)])
    dets = [_det(_box(0), 0.9), _det(_box(30.5), 0.8), _det(_box(90), 0.7), _det(_box(200), 0.6), _det(_box(60), 0.1)]
    tally = ClassTally()
    row = match_image(dets, truth, op_conf=0.5, loose=False, tally=tally)
    # at conf >= 0.5: 2 hits, 1 in an ignore region (counted, neither TP nor FP), 1 false alarm
    assert row["predicted"] == 4 and row["tp"] == 2
    assert (row["true"], row["true_max"], row["count_error"]) == (3, 4, 0)
    s = tally.summary()
    assert s["precision"] == pytest.approx(2 / 3, abs=1e-3) and s["recall"] == pytest.approx(2 / 3, abs=1e-3)
    # ranked hits: T, T, F, T -> AP = 1/3 + 1/3 + (1/3)(3/4)
    assert s["map50"] == pytest.approx(2 / 3 + 0.25, abs=1e-3)


def test_non_exhaustive_truth_scores_neither_precision_nor_recall() -> None:
    """A lower-bound truth (not every object labelled) is left out of precision, recall and AP alike: its hits
    would raise recall without its labels counting in the denominator."""
    tally = ClassTally()
    row = match_image([_det(_box(0), 0.9), _det(_box(100), 0.9)], Truth([_box(0)], exhaustive=False), 0.5, False, tally)
    assert tally.fp_at_op == 0 and tally.tp_at_op == 0 and tally.ap50() is None and tally.n_truth == 0
    assert row["tp"] == 1 and row["predicted"] == 2


@pytest.mark.slow
def test_fine_tunes_offline_from_shipped_weights(tmp_path: Path) -> None:
    """One epoch from models/wagon-obb.pt on four tiny chips; the session's network guard fails any download."""
    from training.train import train

    data = write_dataset(tmp_path / "ds", n_train=4, n_val=2, seed=123, workers=1, cfg=SynthConfig(size_px=160))
    best = train(
        data,
        ROOT / "models" / "wagon-obb.pt",
        epochs=1,
        imgsz=160,
        batch=2,
        device="cpu",
        project=tmp_path / "runs",
        name="t",
        workers=0,
        lr0=0.0003,
    )
    assert best.exists() and best.stat().st_size > 1_000_000
    args = (tmp_path / "runs" / "t" / "args.yaml").read_text()
    assert "optimizer: AdamW" in args and "lr0: 0.0003" in args and "warmup_bias_lr: 0.0" in args


def test_train_arguments_make_lr0_count_and_keep_fine_tuning_gentle(tmp_path: Path) -> None:
    """``optimizer=auto`` would ignore lr0; a fine-tune's bias warm-up must not start at Ultralytics' 0.1."""
    from training.train import train_arguments

    given = train_arguments(tmp_path / "d.yaml", 1, 320, 16, "cpu", tmp_path, "t", lr0=0.0005, fine_tune=True)
    assert given["lr0"] == 0.0005 and given["optimizer"] == "AdamW"
    assert given["warmup_bias_lr"] == 0.0 and given["warmup_epochs"] == 0.5
    plain = train_arguments(tmp_path / "d.yaml", 1, 320, 16, "cpu", tmp_path, "t")
    assert "lr0" not in plain and "optimizer" not in plain and "warmup_bias_lr" not in plain


def test_evaluation_scores_the_runtime_it_is_given() -> None:
    """The low-threshold twin used for AP runs on the same runtime (the benchmark compares runtimes' accuracy)."""
    from app.detection.detector import Detector
    from training.evaluate import LOW_CONF, low_conf_detector

    onnx = Detector(ROOT / "models" / "wagon-obb.pt", threads=1, runtime="onnx")
    low = low_conf_detector(onnx)
    assert (low.runtime, low.conf) == ("onnx", LOW_CONF)
    assert low_conf_detector(Detector(ROOT / "models" / "wagon-obb.pt", threads=1, runtime="torch")).runtime == "torch"


def test_synthetic_figures_name_the_renderer_that_drew_them(detector) -> None:
    """Figures on synthetic chips compare only within one renderer: the evaluation records which one drew them."""
    from training.evaluate import evaluate_synthetic
    from training.synth import RENDERER_VERSION

    result = evaluate_synthetic(detector, 1)
    assert result["renderer"] == RENDERER_VERSION == 2
    assert result["seeds"] == [9_000_000, 9_000_000]
    assert result["classes"]["railcar"]["n_truth"] + result["classes"]["container"]["n_truth"] > 0
