"""Plain values for detections, shared by the detector, the store, the API and the evaluator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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

    def counts(self, class_names: tuple[str, ...]) -> dict[str, int]:
        """Number of detections per class, every class present (zero when none)."""
        out = {name: 0 for name in class_names}
        for d in self.detections:
            out[d.class_name] = out.get(d.class_name, 0) + 1
        return out
