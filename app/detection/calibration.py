"""Confidence calibration: map the detector's reported confidences so that 0.8 is right about 80 % of the time.

Per class, a temperature ``T`` and a bias ``b`` on the logit scale: ``p' = sigmoid((logit(p) - b) / T)``. ``T > 1``
pulls confidences toward 0.5 (an over-confident model), ``T < 1`` pushes them away; ``b > 0`` lowers them all. The
map is strictly increasing, so it never reorders one class's boxes. It is fitted by ``python -m
training.calibration`` and read from the sidecar's ``confidence_calibration``
(``{"railcar": {"temperature": T, "bias": b}, ...}``); a class without an entry is left as it is.

The detector applies it last, to the confidences it reports, after the operating thresholds and the train context
have decided which boxes count: thresholds stay on the network's raw scale and counts never change.
Pure numpy; no model, no web imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Confidences are clipped to [EPS, 1 - EPS] before the logit, so that 0 and 1 map to finite values.
EPS: float = 1e-7


@dataclass(frozen=True)
class ClassCalibration:
    """One class's correction on the logit scale: ``p' = sigmoid((logit(p) - bias) / temperature)``."""

    temperature: float = 1.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, not {self.temperature!r}")
        if not math.isfinite(self.bias):
            raise ValueError(f"bias must be finite, not {self.bias!r}")

    @property
    def is_identity(self) -> bool:
        """Whether this correction leaves every confidence as it is."""
        return self.temperature == 1.0 and self.bias == 0.0


def logit(p: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """``log(p / (1 - p))``, with ``p`` clipped to [EPS, 1 - EPS] (finite at 0 and 1)."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def sigmoid(z: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow for large ``|z|``."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))


def calibrate(p: np.ndarray | Sequence[float] | float, temperature: float = 1.0, bias: float = 0.0) -> np.ndarray:
    """``sigmoid((logit(p) - bias) / temperature)`` as float64; the identity (values unchanged) at T 1, b 0."""
    c = ClassCalibration(float(temperature), float(bias))  # validates
    arr = np.asarray(p, dtype=np.float64)
    if c.is_identity:
        return arr.copy()
    return sigmoid((logit(arr) - c.bias) / c.temperature)


def parse_calibration(data: Mapping[str, Mapping[str, float]] | None) -> dict[str, ClassCalibration]:
    """The sidecar's ``confidence_calibration`` as one :class:`ClassCalibration` per class named in it (None or
    empty: no class, the identity). Missing ``temperature`` means 1, missing ``bias`` 0; unknown keys are errors."""
    out: dict[str, ClassCalibration] = {}
    for name, entry in (data or {}).items():
        unknown = set(entry) - {"temperature", "bias"}
        if unknown:
            raise ValueError(f"confidence_calibration[{name!r}]: unknown keys {sorted(unknown)}")
        out[name] = ClassCalibration(float(entry.get("temperature", 1.0)), float(entry.get("bias", 0.0)))
    return out


def calibrate_scores(
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    table: Mapping[str, ClassCalibration],
) -> np.ndarray:
    """Scores (N) with each box's class (N ids into ``class_names``) corrected by that class's entry in ``table``;
    classes without an entry keep their scores. Returns a new float64 array."""
    out = np.asarray(scores, dtype=np.float64).copy()
    ids = np.asarray(classes)
    for k, name in enumerate(class_names):
        c = table.get(name)
        if c is None or c.is_identity:
            continue
        sel = ids == k
        if sel.any():
            out[sel] = calibrate(out[sel], c.temperature, c.bias)
    return out
