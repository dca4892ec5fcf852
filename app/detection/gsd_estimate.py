"""Estimate an image's ground sample distance (GSD) from the sizes of what the detector finds in it.

The detector works at a known scale (the sidecar's ``working_gsd_m``); an image without a GSD (no ``gsd_m`` in the
request, no geotransform) is otherwise run as it is, so at 0.65 m/px its containers are half the size the model
was trained on. Objects of known size fix the scale: a shipping container is 2.44 m wide whether 20 or 40 ft long,
and railcars are 14-23 m long. A first pass at the image's own scale votes, one vote per detection: container
``CONTAINER_WIDTH_M / short side``, railcar ``RAILCAR_LENGTH_M / long side``; the estimate is the median vote.
The two constants are the median detected sizes on synthetic tuning chips at their true GSD
(``python -m training.gsd_calibration``), so that the detector's own box habits cancel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from app.detection.geometry import resample_scale
from app.detection.results import Detection, DetectionResult

#: Median short side of detected containers, metres, at the true GSD (synthetic tuning chips; see module doc).
CONTAINER_WIDTH_M = 2.47
#: Median long side of detected railcars, metres, likewise.
RAILCAR_LENGTH_M = 16.7
#: Fewer votes than this give no estimate.
MIN_VOTES = 5
#: Estimates outside this range (m/px) are not trusted: the image then runs as it is.
PLAUSIBLE_GSD_M = (0.15, 1.5)


@dataclass(frozen=True)
class GsdEstimate:
    """An estimated GSD and how many detections voted for it."""

    gsd_m: float
    votes: int


def box_sides(detection: Detection) -> tuple[float, float]:
    """Long and short side of an oriented box, pixels."""
    q = np.asarray(detection.obb, np.float64)
    a, b = float(np.linalg.norm(q[1] - q[0])), float(np.linalg.norm(q[2] - q[1]))
    return max(a, b), min(a, b)


def estimate_gsd(detections: Sequence[Detection], min_votes: int = MIN_VOTES) -> GsdEstimate | None:
    """The GSD the detections' sizes imply (median vote), or None with too few votes or an implausible result."""
    votes = []
    for d in detections:
        long_px, short_px = box_sides(d)
        if d.class_name == "container" and short_px > 0:
            votes.append(CONTAINER_WIDTH_M / short_px)
        elif d.class_name == "railcar" and long_px > 0:
            votes.append(RAILCAR_LENGTH_M / long_px)
    if len(votes) < min_votes:
        return None
    gsd = float(np.median(votes))
    if not PLAUSIBLE_GSD_M[0] <= gsd <= PLAUSIBLE_GSD_M[1]:
        return None
    return GsdEstimate(round(gsd, 4), len(votes))


class _Detector(Protocol):
    info: Any

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult: ...


def detect_estimating_gsd(
    detector: _Detector, image: np.ndarray, second: _Detector | None = None
) -> tuple[DetectionResult, GsdEstimate | None]:
    """Detect in an image of unknown GSD: a first pass at its own scale estimates the GSD, and when that calls for
    resampling a second pass runs at the estimate. ``second`` (the evaluator's low-threshold twin) always makes
    the second pass, at the estimate or, without one, at the image's own scale. Returns the detections of the pass
    that counts and the estimate (None when there was none)."""
    first = detector.detect(image, None)
    estimate = estimate_gsd(first.detections)
    gsd = estimate.gsd_m if estimate is not None else None
    working = getattr(getattr(detector, "info", None), "working_gsd_m", None)
    if second is None and resample_scale(gsd, working) == 1.0:
        return first, estimate  # the first pass already ran at the scale the estimate calls for
    return (second or detector).detect(image, gsd), estimate
