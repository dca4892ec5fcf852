"""Tests of training.calibration's measures and fit on hand-made data (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.detection.calibration import sigmoid
from training.calibration import (
    Records,
    analyse,
    brier,
    ece,
    fit_calibration,
    nll,
    plot_reliability,
    qualifies,
    reliability,
    write_sidecar,
)
from training.evaluate import ClassTally


def test_reliability_bins_count_mean_confidence_and_accuracy() -> None:
    conf = np.array([0.05, 0.15, 0.15, 0.95, 1.0, 0.999])
    right = np.array([0, 1, 0, 1, 1, 0])
    rows = reliability(conf, right)
    assert len(rows) == 10 and rows[0]["lo"] == 0.0 and rows[-1]["hi"] == 1.0
    assert rows[0] == {"lo": 0.0, "hi": 0.1, "count": 1, "mean_conf": 0.05, "accuracy": 0.0}
    assert rows[1]["count"] == 2 and rows[1]["mean_conf"] == 0.15 and rows[1]["accuracy"] == 0.5
    assert rows[2]["count"] == 0 and rows[2]["mean_conf"] is None and rows[2]["accuracy"] is None
    assert rows[9]["count"] == 3  # 1.0 falls in the last, closed bin
    assert sum(int(r["count"] or 0) for r in rows) == len(conf)


def test_ece_by_hand() -> None:
    # bin [0.1, 0.2): conf 0.15, 0.15, accuracy 0.5 -> gap 0.35, weight 2/4; bin [0.9, 1]: conf 0.9, accuracy 1 ->
    # gap 0.1 (0.9 falls in the bin above 0.8), weight 1/4; bin [0.8, 0.9): conf 0.85, accuracy 0 -> gap 0.85
    conf = np.array([0.15, 0.15, 0.9, 0.85])
    right = np.array([1, 0, 1, 0])
    assert ece(conf, right) == pytest.approx(0.5 * 0.35 + 0.25 * 0.1 + 0.25 * 0.85)
    assert ece(np.array([0.75, 0.75, 0.75, 0.75]), np.array([1, 1, 1, 0])) == pytest.approx(0.0)
    assert ece(np.array([]), np.array([])) is None


def test_nll_and_brier_by_hand_and_safe_at_zero_and_one() -> None:
    assert nll(np.array([0.8, 0.8]), np.array([1, 0])) == pytest.approx(-(np.log(0.8) + np.log(0.2)) / 2)
    assert brier(np.array([0.8, 0.8]), np.array([1, 0])) == pytest.approx((0.04 + 0.64) / 2)
    assert np.isfinite(nll(np.array([0.0, 1.0]), np.array([1, 0])) or np.nan)  # clipped, not infinite


def _synthetic_logits(n: int, temperature: float, bias: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Reported confidences sigmoid(z) whose outcomes are drawn at sigmoid((z - bias) / temperature)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(1.0, 2.0, n)
    right = rng.random(n) < sigmoid((z - bias) / temperature)
    return sigmoid(z), right.astype(float)


@pytest.mark.parametrize(("temperature", "bias"), [(2.0, 0.0), (0.5, 0.0), (1.5, 0.8)])
def test_the_fit_recovers_a_known_temperature_and_bias(temperature: float, bias: float) -> None:
    conf, right = _synthetic_logits(40_000, temperature, bias)
    fit = fit_calibration(conf, right)
    assert fit.temperature == pytest.approx(temperature, rel=0.05)
    assert fit.bias == pytest.approx(bias, abs=0.08)
    if bias == 0.0:
        only = fit_calibration(conf, right, bias=False)
        assert only.temperature == pytest.approx(temperature, rel=0.05) and only.bias == 0.0
    after = sigmoid((np.log(conf) - np.log1p(-conf) - fit.bias) / fit.temperature)
    assert (ece(after, right) or 1.0) < 0.02 < (ece(conf, right) or 0.0)


def test_the_fit_refuses_data_without_both_outcomes() -> None:
    with pytest.raises(ValueError):
        fit_calibration(np.array([0.6, 0.7]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError):
        fit_calibration(np.array([]), np.array([]))


def _records(conf: np.ndarray, right: np.ndarray, op: float, name: str = "railcar") -> Records:
    rec = Records()
    tally = ClassTally(scores=list(conf), hits=[bool(h) for h in right])
    rec.add(name, "img", tally, op)
    return rec


def test_records_keep_the_reported_boxes_apart() -> None:
    rec = _records(np.array([0.2, 0.5, 0.9]), np.array([0, 1, 1]), op=0.35)
    conf, right = rec.select("railcar")
    assert conf.tolist() == [0.5, 0.9] and right.tolist() == [1.0, 1.0]
    assert len(rec.select("railcar", reported_only=False)[0]) == 3
    assert len(rec.select("container")[0]) == 0


def test_analyse_fits_on_tuning_only_and_the_rule_and_sidecar_follow(tmp_path: Path) -> None:
    """An under-confident model (outcomes at T 0.5) on the tuning and held-out sets, and one whose real images are
    over-confident: the fit sharpens, helps held-out synthetic, hurts the real set, so the class does not qualify."""
    tune = _records(*_synthetic_logits(20_000, 0.5, 0.0, seed=2), op=0.0)
    held = _records(*_synthetic_logits(20_000, 0.5, 0.0, seed=3), op=0.0)
    real = _records(*_synthetic_logits(5_000, 2.0, 0.0, seed=4), op=0.0)
    for rec in (tune, held, real):  # the other class: well calibrated everywhere
        rec.cls += ["container"] * 2000
        conf, right = _synthetic_logits(2000, 1.0, 0.0, seed=5)
        rec.conf += conf.tolist()
        rec.correct += right.astype(bool).tolist()
        rec.reported += [True] * 2000
        rec.image += ["img"] * 2000
    result = analyse({"tuning": tune, "heldout_synthetic": held, "real_eval": real})
    assert result["fits"]["railcar"]["temperature_bias"]["temperature"] == pytest.approx(0.5, rel=0.1)
    rail = result["sets"]["heldout_synthetic"]["railcar"]
    assert rail["after"]["ece"] < rail["before"]["ece"]
    assert (
        result["sets"]["real_eval"]["railcar"]["after"]["ece"] > result["sets"]["real_eval"]["railcar"]["before"]["ece"]
    )
    assert not qualifies(rail, result["sets"]["real_eval"]["railcar"])
    assert result["fits"]["container"]["temperature_bias"]["temperature"] == pytest.approx(1.0, abs=0.15)

    weights = tmp_path / "m.pt"
    weights.with_suffix(".json").write_text(json.dumps({"name": "m"}))
    assert write_sidecar(weights, {**result, "qualifies": {"railcar": False, "container": False}}) == {}
    assert "confidence_calibration" not in json.loads(weights.with_suffix(".json").read_text())
    written = write_sidecar(weights, {**result, "qualifies": {"railcar": False, "container": True}})
    assert set(written) == {"container"}
    assert json.loads(weights.with_suffix(".json").read_text())["confidence_calibration"] == written
    write_sidecar(weights, {**result, "qualifies": {"railcar": False, "container": False}})  # a stale key goes
    assert json.loads(weights.with_suffix(".json").read_text()) == {"name": "m"}

    png = tmp_path / "r.png"
    plot_reliability(result, png, [("heldout_synthetic", "held-out"), ("real_eval", "real")])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
