"""From an opened scene to detections in map coordinates: region, windows, detection, footprint, coverage.

The corridor of DESIGN.md, after decoding: pick the region to read (the whole scene, or the part covering the
facility footprint plus a margin), cut it into overlapping windows, read and detect window by window (the detector
tiles each window itself), keep each detection from the window whose core holds its centre, drop detections
centred on nodata or outside the footprint, and map the survivors to WGS84.

Nothing here imports FastAPI or the store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from app.core.errors import InvalidInputError
from app.core.validation import check_gsd
from app.detection.geometry import greedy_rotated_nms, resample_scale, tile_core, tile_origins
from app.detection.gsd_estimate import estimate_gsd
from app.detection.imaging import EmptyImageError
from app.detection.raster import NO_VALID_PIXELS, Georef, Scene, Window
from app.detection.results import Detection, DetectionResult, quad
from app.detection.workload import MAX_ASPECT_RATIO, MAX_UPSAMPLE, check_aspect, check_scale

#: Side of a detection window at the model's working resolution, in pixels (about 5 x 5 model tiles).
WINDOW_WORK_PX = 3072
#: Longest side of the grid on which footprint coverage is measured.
COVERAGE_GRID_PX = 2048
#: Share of the footprint that must be nodata (inside the scene) before it is reported as cut by nodata.
NODATA_CUT_MIN = 0.001

Progress = Callable[[int, int], None]


class RegionError(ValueError):
    """The image does not cover the facility footprint at all."""


class WindowDetector(Protocol):
    """What is needed from :class:`app.detection.detector.Detector`."""

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        """Detect in an RGB uint8 array."""
        ...


# ---------------------------------------------------------------------------------------------- georeference


def check_georef(scene: Scene) -> None:
    """Refuse (:class:`InvalidInputError`) a scene whose georeferencing cannot be true: corners that are not finite
    WGS84 longitudes and latitudes, or a geotransform whose GSD is outside the range every GSD must be in
    (:func:`app.core.validation.check_gsd`). A scene without georeferencing passes."""
    georef = scene.georef
    if georef is None:
        return
    with np.errstate(all="ignore"):
        gsd = scene.native_gsd_m
    if gsd is not None and math.isfinite(gsd):
        check_gsd(gsd, "the GSD of the image's geotransform")
    corners = np.array([[0, 0], [scene.width, 0], [scene.width, scene.height], [0, scene.height]], np.float64)
    try:
        with np.errstate(all="ignore"):
            lonlat = georef.pixel_to_crs(corners) if georef.geographic else georef.pixel_to_lonlat(corners)
    except Exception:
        # any failure of the projection library is a geotransform it cannot place on the Earth
        lonlat = np.full((4, 2), np.nan)
    lon, lat = lonlat[:, 0], lonlat[:, 1]
    if not (np.isfinite(lonlat).all() and (np.abs(lon) <= 180).all() and (np.abs(lat) <= 90).all()):
        raise InvalidInputError(
            "the image's georeferencing places it outside the Earth (its corners are not WGS84 longitudes from "
            "-180 to 180 and latitudes from -90 to 90); fix the geotransform"
        )


# ---------------------------------------------------------------------------------------------- footprint


def validate_footprint(geojson: Any) -> dict[str, Any]:
    """Check a GeoJSON Polygon in WGS84 (lon, lat); return it normalised (closed rings, floats).

    Raises ``ValueError`` with a message fit for the user.
    """
    import shapely
    from shapely.geometry import shape

    if not isinstance(geojson, dict) or geojson.get("type") != "Polygon":
        raise ValueError('footprint must be a GeoJSON Polygon: {"type": "Polygon", "coordinates": [[[lon, lat], ...]]}')
    rings = geojson.get("coordinates")
    if not isinstance(rings, list) or not rings:
        raise ValueError("footprint coordinates must be a list of linear rings")
    out_rings = []
    for ring in rings:
        if not isinstance(ring, list) or len(ring) < 3:
            raise ValueError("each footprint ring needs at least 3 positions")
        pts = []
        for p in ring:
            if (
                not isinstance(p, (list, tuple))
                or len(p) < 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p[:2])
            ):
                raise ValueError("footprint positions must be [longitude, latitude] numbers")
            lon, lat = float(p[0]), float(p[1])
            if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
                raise ValueError(f"footprint position {p} is not a WGS84 longitude/latitude")
            pts.append([lon, lat])
        if pts[0] != pts[-1]:
            pts.append(pts[0])
        if len(pts) < 4:
            raise ValueError("each footprint ring needs at least 3 distinct positions")
        out_rings.append(pts)
    poly = shape({"type": "Polygon", "coordinates": out_rings})
    if poly.is_empty or poly.area <= 0:
        raise ValueError("footprint has no area")
    if not poly.is_valid:
        raise ValueError(f"footprint is not a valid polygon: {shapely.is_valid_reason(poly)}")
    return {"type": "Polygon", "coordinates": out_rings}


def footprint_in_pixels(footprint: dict[str, Any], georef: Georef) -> Any:
    """The footprint as a shapely polygon in the scene's pixel coordinates (edges densified before projecting)."""
    from shapely.geometry import Polygon

    rings = []
    for ring in footprint["coordinates"]:
        dense = _densify(np.asarray(ring, np.float64), steps=16)
        rings.append(georef.lonlat_to_pixel(dense))
    poly = Polygon(rings[0], rings[1:])
    return poly if poly.is_valid else poly.buffer(0)


def _densify(ring: np.ndarray, steps: int) -> np.ndarray:
    out = []
    for a, b in zip(ring[:-1], ring[1:], strict=True):
        t = np.linspace(0.0, 1.0, steps, endpoint=False)[:, None]
        out.append(a + (b - a) * t)
    out.append(ring[-1:])
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------- region


@dataclass(frozen=True)
class Region:
    """The part of the scene to read, and the footprint (pixel coordinates) when one applies."""

    window: Window
    footprint_px: Any | None = None  # shapely Polygon

    @property
    def pixels(self) -> int:
        """Pixels in the window."""
        return self.window[2] * self.window[3]


def plan_region(scene: Scene, footprint: dict[str, Any] | None, margin_m: float) -> Region:
    """The whole scene, or (georeferenced scene and a footprint) the window covering footprint + margin.

    Raises :class:`RegionError` if the footprint lies wholly outside the scene.
    """
    full: Window = (0, 0, scene.width, scene.height)
    if footprint is None or scene.georef is None:
        return Region(full)
    poly = footprint_in_pixels(footprint, scene.georef)
    gsd = scene.native_gsd_m or 1.0
    margin_px = margin_m / gsd
    x0, y0, x1, y1 = poly.bounds
    c0 = max(0, math.floor(x0 - margin_px))
    r0 = max(0, math.floor(y0 - margin_px))
    c1 = min(scene.width, math.ceil(x1 + margin_px))
    r1 = min(scene.height, math.ceil(y1 + margin_px))
    if c1 <= c0 or r1 <= r0 or not poly.intersects(_box(0, 0, scene.width, scene.height)):
        raise RegionError("the image does not cover the facility footprint")
    return Region((c0, r0, c1 - c0, r1 - r0), poly)


def _box(x0: float, y0: float, x1: float, y1: float) -> Any:
    from shapely.geometry import box

    return box(x0, y0, x1, y1)


# ---------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowPlan:
    """One detection window and its core (the part that owns detections), in scene pixels."""

    window: Window
    core: tuple[float, float, float, float]  # x0, x1, y0, y1


def plan_windows(region: Window, window_px: int, overlap_px: int) -> list[WindowPlan]:
    """Overlapping windows covering ``region``; neighbouring cores meet in the middle of each overlap."""
    c, r, w, h = region
    window_px = max(window_px, overlap_px * 2 + 1)
    xs, ys = tile_origins(w, window_px, overlap_px), tile_origins(h, window_px, overlap_px)
    plans = []
    for y0 in ys:
        cy0, cy1 = tile_core(y0, window_px, h, ys)
        for x0 in xs:
            cx0, cx1 = tile_core(x0, window_px, w, xs)
            win = (c + x0, r + y0, min(window_px, w - x0), min(window_px, h - y0))
            plans.append(WindowPlan(win, (c + cx0, c + cx1, r + cy0, r + cy1)))
    return plans


def detect_over_windows(
    detector: WindowDetector,
    reads: Iterable[tuple[WindowPlan, np.ndarray, np.ndarray]],
    gsd_m: float | None,
    iou: float = 0.5,
    progress: Progress | None = None,
    total: int = 0,
    seam_px: float = 256.0,
    region: Window | None = None,
    detected: dict[Window, DetectionResult] | None = None,
) -> list[Detection]:
    """Detect over an iterator of ``(plan, rgb, valid)`` windows; return detections in scene pixels.

    Each window goes through ``detector.detect`` (which tiles and resamples it), unless ``detected`` already holds
    its result at the same scale. A detection is kept from the
    window whose core holds its centre, and only when the pixel under its centre is valid; a rotated NMS over the
    detections within ``seam_px`` of an inner window seam removes what is left twice (only there, so that a big
    scene's tens of thousands of detections are not compared with each other).
    """
    corners: list[np.ndarray] = []
    scores: list[float] = []
    names: list[str] = []  # the class of each detection (the rotated NMS below numbers them)
    near_seam: list[bool] = []
    found: list[Detection] = []  # the detections (and candidates) themselves, in window pixels
    done = 0
    n_windows = 0
    for plan, rgb, valid in reads:
        n_windows += 1
        c0, r0 = plan.window[0], plan.window[1]
        if valid.any():
            result = (detected or {}).get(plan.window) or detector.detect(rgb, gsd_m=gsd_m)
            x0, x1, y0, y1 = plan.core
            for d in [*result.detections, *result.candidates]:
                cx, cy = d.center
                sx, sy = cx + c0, cy + r0
                if not (x0 <= sx < x1 and y0 <= sy < y1):
                    continue
                iy = min(max(int(cy), 0), valid.shape[0] - 1)
                ix = min(max(int(cx), 0), valid.shape[1] - 1)
                if not valid[iy, ix]:
                    continue
                corners.append(np.asarray(d.obb, np.float64) + np.array([c0, r0], np.float64))
                scores.append(d.threshold_score)
                names.append(d.class_name)
                found.append(d)
                near_seam.append(_near_inner_edge(sx, sy, plan.core, region, seam_px))
        done += 1
        if progress is not None:
            progress(done, max(total, done))
    if not scores:
        return []
    c = np.stack(corners)
    s = np.asarray(scores)
    label = {n: i for i, n in enumerate(sorted(set(names)))}
    k = np.array([label[n] for n in names])
    keep = list(range(len(s)))
    seam = np.flatnonzero(near_seam)
    if n_windows > 1 and len(seam) > 1:
        kept_at_seam = set(seam[greedy_rotated_nms(c[seam], s[seam], k[seam], iou)].tolist())
        keep = [i for i in keep if not near_seam[i] or i in kept_at_seam]
    out = [replace(found[i], obb=quad(c[i])) for i in keep]
    out.sort(key=lambda d: -d.confidence)
    return out


def _near_inner_edge(
    x: float, y: float, core: tuple[float, float, float, float], region: Window | None, seam_px: float
) -> bool:
    """Whether a point lies within ``seam_px`` of a core edge that is not the region's outer edge."""
    x0, x1, y0, y1 = core
    if region is None:
        return min(x - x0, x1 - x, y - y0, y1 - y) < seam_px
    c, r, w, h = region
    return (
        (x0 > c and x - x0 < seam_px)
        or (x1 < c + w and x1 - x < seam_px)
        or (y0 > r and y - y0 < seam_px)
        or (y1 < r + h and y1 - y < seam_px)
    )


def estimate_scene_gsd(
    detector: WindowDetector, scene: Scene, region: Window
) -> tuple[float | None, Window, DetectionResult | None]:
    """The GSD (m/px) that the sizes of the objects found in the region's central window imply, from a first pass
    at the image's own scale (:func:`app.detection.gsd_estimate.estimate_gsd`; None when too few objects vote), with
    that window and the first pass's result (None when the window holds no valid pixel)."""
    c, r, w, h = region
    side_w, side_h = min(w, WINDOW_WORK_PX), min(h, WINDOW_WORK_PX)
    window: Window = (c + (w - side_w) // 2, r + (h - side_h) // 2, side_w, side_h)
    rgb, valid = scene.read(window)
    if not valid.any():
        return None, window, None
    first = detector.detect(rgb, gsd_m=None)
    found = estimate_gsd(first.detections)
    return (found.gsd_m if found is not None else None), window, first


def read_windows(scene: Scene, plans: list[WindowPlan]) -> Iterator[tuple[WindowPlan, np.ndarray, np.ndarray]]:
    """Read each planned window from the scene, one at a time."""
    for plan in plans:
        rgb, valid = scene.read(plan.window)
        yield plan, rgb, valid
        del rgb, valid


# ---------------------------------------------------------------------------------------------- coverage


def measure_coverage(scene: Scene, region: Region) -> dict[str, Any] | None:
    """Which share of the footprint the image covers with valid data, on a grid of at most
    ``COVERAGE_GRID_PX`` a side; ``None`` when no footprint applies."""
    if region.footprint_px is None:
        return None
    from rasterio.features import rasterize
    from shapely import affinity

    c, r, w, h = region.window
    f = max(1.0, max(w, h) / COVERAGE_GRID_PX)
    gw, gh = max(1, round(w / f)), max(1, round(h / f))
    sx, sy = gw / w, gh / h
    poly = affinity.affine_transform(region.footprint_px, [sx, 0, 0, sy, -c * sx, -r * sy])
    inside = rasterize([(poly, 1)], out_shape=(gh, gw), fill=0, dtype="uint8", all_touched=False).astype(bool)
    _, valid = scene.read(region.window, out_shape=(gh, gw))
    fp_area = float(poly.area)  # grid pixels, including any part outside the scene
    if fp_area <= 0:
        return None
    in_scene = region.footprint_px.intersection(_box(0, 0, scene.width, scene.height)).area / region.footprint_px.area
    covered = float(np.count_nonzero(inside & valid))
    nodata = float(np.count_nonzero(inside & ~valid))
    share = min(1.0, covered / fp_area)
    return {
        "share": round(share, 4),
        "in_scene_share": round(min(1.0, in_scene), 4),
        "nodata_cut": nodata / fp_area > NODATA_CUT_MIN,
        "edge_cut": in_scene < 0.999,
    }


# ---------------------------------------------------------------------------------------------- all of it


@dataclass
class SceneDetections:
    """What one pass over a scene yields."""

    detections: list[Detection]
    lonlat: list[list[list[float]]] | None  # per detection, four [lon, lat] corners
    region: Region
    coverage: dict[str, Any] | None
    gsd_m: float | None
    gsd_source: str | None  # "request", "geotransform", "estimated" or None
    windows: int
    detect_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


def detect_scene(
    detector: Any,
    scene: Scene,
    gsd_m: float | None = None,
    footprint: dict[str, Any] | None = None,
    margin_m: float = 50.0,
    progress: Progress | None = None,
    estimate: bool = False,
    facility_gsd_m: float | None = None,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    max_upsample: float = MAX_UPSAMPLE,
    max_resampled_pixels: int = 2_500_000_000,
) -> SceneDetections:
    """Detect over a whole scene or its footprint region, window by window (CPU-bound).

    The GSD comes from the request (``gsd_m``), else the scene's geotransform, else the facility's earlier uploads
    (``facility_gsd_m``); with none of them and ``estimate``, from a first pass over the scene's central window
    (:func:`estimate_scene_gsd`). The work is bounded before any pixel is read (:mod:`app.detection.workload`):
    the image's aspect ratio, and the region's enlargement and size once resampled to the working GSD."""
    t0 = time.perf_counter()
    check_georef(scene)
    check_gsd(gsd_m)
    check_gsd(facility_gsd_m, "the GSD of the facility's recent uploads")
    check_aspect(scene.width, scene.height, max_aspect_ratio)
    if gsd_m is not None:
        gsd, source = gsd_m, "request"
    elif scene.native_gsd_m is not None:
        gsd, source = scene.native_gsd_m, "geotransform"
    elif facility_gsd_m is not None:
        gsd, source = facility_gsd_m, "facility"
    else:
        gsd, source = None, None
    region = plan_region(scene, footprint, margin_m)
    info = getattr(detector, "info", None)
    working = getattr(info, "working_gsd_m", None)
    region_w, region_h = region.window[2], region.window[3]
    if gsd and working:
        check_scale(region_w, region_h, gsd / working, working, max_upsample, max_resampled_pixels)
    scene.prepare(region.window)  # refuses a region without a valid pixel
    coverage = measure_coverage(scene, region)
    if coverage is not None and coverage["share"] == 0:
        raise EmptyImageError(f"{NO_VALID_PIXELS} (the facility footprint lies on nodata)")
    detected: dict[Window, DetectionResult] = {}  # windows already detected at the scale the counted pass uses
    if gsd is None and estimate:
        gsd, first_window, first = estimate_scene_gsd(detector, scene, region.window)
        source = "estimated" if gsd is not None else None
        check_gsd(gsd, "the estimated GSD")
        if first is not None and resample_scale(gsd, working) == 1.0:
            detected[first_window] = first  # no resampling called for: a single-window image is not detected twice
        if gsd and working:
            check_scale(region_w, region_h, gsd / working, working, max_upsample, max_resampled_pixels)
    tile_overlap = int(getattr(info, "tile_overlap_px", 128))
    scale = (gsd / working) if (gsd and working) else 1.0  # working px per source px
    window_px = max(256, round(WINDOW_WORK_PX / scale))
    overlap_px = max(32, math.ceil(tile_overlap / scale))
    plans = plan_windows(region.window, window_px, overlap_px)
    iou = float(getattr(info, "iou", 0.5))
    detections = detect_over_windows(
        detector,
        read_windows(scene, plans),
        gsd,
        iou=iou,
        progress=progress,
        total=len(plans),
        seam_px=float(overlap_px),
        region=region.window,
        detected=detected,
    )
    if region.footprint_px is not None:
        import shapely

        centres = np.array([d.center for d in detections]).reshape(-1, 2)
        inside = shapely.contains_xy(region.footprint_px, centres[:, 0], centres[:, 1]) if len(centres) else []
        detections = [d for d, ok in zip(detections, inside, strict=True) if ok]
    lonlat = None
    if scene.georef is not None:
        pts = np.array([d.obb for d in detections], np.float64).reshape(-1, 2)
        ll = scene.georef.pixel_to_lonlat(pts).reshape(-1, 4, 2) if len(pts) else np.zeros((0, 4, 2))
        lonlat = [[[round(float(x), 9), round(float(y), 9)] for x, y in q] for q in ll]
        detections = [replace(d, obb_lonlat=quad(q)) for d, q in zip(detections, lonlat, strict=True)]
    return SceneDetections(
        detections=detections,
        lonlat=lonlat,
        region=region,
        coverage=coverage,
        gsd_m=gsd,
        gsd_source=source,
        windows=len(plans),
        detect_ms=(time.perf_counter() - t0) * 1000.0,
    )
