"""Plain values for detections, shared by the detector, the store, the API and the evaluator."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import cast

Point = tuple[float, float]
#: The four corners of an oriented box.
Quad = tuple[Point, Point, Point, Point]


def quad(corners: Iterable[Iterable[float]]) -> Quad:
    """Four ``(x, y)`` corners (rows of an array, pairs from JSON) as the plain float pairs a :class:`Detection`
    holds; the caller passes exactly four."""
    return cast(Quad, tuple((float(x), float(y)) for x, y in corners))


@dataclass(frozen=True)
class Detection:
    """One oriented detection in image pixel coordinates (origin top-left, y down)."""

    class_name: str
    confidence: float
    obb: Quad
    #: The same four corners as WGS84 ``(lon, lat)`` when the image is georeferenced.
    obb_lonlat: Quad | None = None
    #: The score operating thresholds compare (the network's, after the train context; ``confidence`` may be
    #: calibrated from it). None: the same as ``confidence``.
    score: float | None = None
    #: Whether it is counted (at or above its class's operating threshold); False: a candidate kept below it.
    counted: bool = True

    @property
    def threshold_score(self) -> float:
        """The score operating thresholds apply to."""
        return self.confidence if self.score is None else self.score

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Axis-aligned box ``(x1, y1, x2, y2)`` enclosing the oriented box."""
        xs = [p[0] for p in self.obb]
        ys = [p[1] for p in self.obb]
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def center(self) -> Point:
        """Centre of the oriented box."""
        return (sum(p[0] for p in self.obb) / 4.0, sum(p[1] for p in self.obb) / 4.0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form used by the API and the CLI (``obb_lonlat`` only for georeferenced images)."""
        out: dict[str, object] = {
            "class": self.class_name,
            "confidence": round(self.confidence, 4),
            "obb": [[round(x, 2), round(y, 2)] for x, y in self.obb],
            "bbox": [round(v, 2) for v in self.bbox],
            "score": round(self.threshold_score, 4),
        }
        if self.obb_lonlat is not None:
            out["obb_lonlat"] = [[round(x, 9), round(y, 9)] for x, y in self.obb_lonlat]
        return out


@dataclass(frozen=True)
class DetectionResult:
    """Everything one detector pass over an image yields."""

    detections: list[Detection]
    width: int
    height: int
    gsd_m: float | None
    timing_ms: float
    #: Detections kept below their class's operating threshold, down to the detector's candidate floor: what a
    #: lower threshold would count, without running the model again.
    candidates: list[Detection] = field(default_factory=list)

    def counts(self, class_names: tuple[str, ...]) -> dict[str, int]:
        """Number of detections per class, every class present (zero when none)."""
        out = {name: 0 for name in class_names}
        for d in self.detections:
            out[d.class_name] = out.get(d.class_name, 0) + 1
        return out


def split_counted(detections: Iterable[Detection]) -> tuple[list[Detection], list[Detection]]:
    """``(counted, candidates)`` by each detection's ``counted`` flag."""
    counted: list[Detection] = []
    candidates: list[Detection] = []
    for d in detections:
        (counted if d.counted else candidates).append(d)
    return counted, candidates


def apply_thresholds(detections: Iterable[Detection], thresholds: Mapping[str, float]) -> list[Detection]:
    """The detections with ``counted`` set by ``thresholds`` (class -> threshold on the score scale); a class
    without one keeps its flag. Never re-runs the model: only what was kept (down to the floor) can be counted."""
    out = []
    for d in detections:
        t = thresholds.get(d.class_name)
        counted = d.counted if t is None else d.threshold_score >= t
        out.append(d if counted == d.counted else replace(d, counted=counted))
    return out


def rethreshold(result: DetectionResult, thresholds: Mapping[str, float]) -> DetectionResult:
    """``result`` with its detections and candidates re-split at ``thresholds`` (see :func:`apply_thresholds`)."""
    counted, candidates = split_counted(apply_thresholds([*result.detections, *result.candidates], thresholds))
    counted.sort(key=lambda d: -d.confidence)
    candidates.sort(key=lambda d: -d.confidence)
    return replace(result, detections=counted, candidates=candidates)
