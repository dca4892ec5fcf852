"""Use cases for imagery as vendors deliver it: analyse a scene (file or bytes), keep originals content-addressed,
GeoJSON of an observation's detections, an overlay picture, and rerunning a model over a facility's archive.

Shared by the API, the job worker and the CLI; nothing here knows about HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app import database as db
from app.core.errors import InvalidInputError, ModelUnavailableError, NotFoundError
from app.core.offline import CLASS_NAMES
from app.core.validation import iso
from app.detection.pipeline import Progress, RegionError, check_georef, detect_scene
from app.detection.raster import OpenedSource, SceneHints, open_scene
from app.detection.results import DetectionResult, rethreshold, split_counted
from app.detection.workload import MAX_ASPECT_RATIO, MAX_UPSAMPLE
from app.scoring.anomaly import count_uncertainty
from app.usecases.images import DEFAULT_COUNT_REL_ERROR, Analysis, DetectorProtocol, check_gsd
from app.usecases.observations import detection_row, rescore
from app.usecases.reviews import calibrated_thresholds

if TYPE_CHECKING:
    from app.core.settings import Settings

log = logging.getLogger(__name__)

#: Colours (RGB) of the classes in overlays.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {"railcar": (255, 140, 0), "container": (0, 200, 255)}
FOOTPRINT_COLOUR = (255, 255, 0)


class OutsideSceneError(InvalidInputError):
    """The facility footprint lies wholly outside the image."""


@dataclass(frozen=True)
class SceneInfo:
    """What is stored about an analysed image (no pixels: big scenes are never whole in memory)."""

    width: int
    height: int
    format: str
    sha256: str


# ------------------------------------------------------------------------------------------------ analyse


def analyse_source(
    detector: DetectorProtocol | None,
    source: Path | bytes | OpenedSource,
    gsd_m: float | None = None,
    footprint: dict[str, Any] | None = None,
    *,
    max_pixels: int = 100_000_000,
    max_scene_pixels: int = 2_500_000_000,
    stretch_8bit: bool = False,
    gdal_cache_mb: int = 256,
    margin_m: float = 50.0,
    sha256: str | None = None,
    progress: Progress | None = None,
    estimate_gsd: bool = False,
    facility_gsd_m: float | None = None,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    max_upsample: float = MAX_UPSAMPLE,
    hints: SceneHints | None = None,
) -> Analysis:
    """Open an image (bytes, file or a scene by reference) and detect over it window by window: the :class:`Analysis`.

    ``gsd_m`` overrides the geotransform's GSD; with neither, ``facility_gsd_m`` (:func:`facility_gsd`) is used,
    and without that ``estimate_gsd`` estimates one from a first pass.
    With a ``footprint`` and a georeferenced image only the window covering the footprint (plus ``margin_m``) is
    read and only detections centred inside it are counted (:class:`OutsideSceneError` when the footprint lies
    outside the image). ``hints``: band names and georeference from the scene's metadata. The image is checked
    before the model's presence, so bad input is reported as such on a service without a model. CPU-bound: call it
    from a worker thread.
    """
    check_gsd(gsd_m)
    t0 = time.perf_counter()
    with open_scene(
        source,
        sha256=sha256,
        max_pixels=max_pixels,
        max_scene_pixels=max_scene_pixels,
        stretch_8bit=stretch_8bit,
        gdal_cache_mb=gdal_cache_mb,
        hints=hints,
    ) as scene:
        decode_ms = (time.perf_counter() - t0) * 1000.0
        check_georef(scene)
        if detector is None:
            scene.prepare()  # validate the data before refusing for want of a model
            raise ModelUnavailableError("no detector is loaded in this service (WAGON_LOAD_MODEL is false)")
        try:
            out = detect_scene(
                detector,
                scene,
                gsd_m=gsd_m,
                footprint=footprint,
                margin_m=margin_m,
                progress=progress,
                estimate=estimate_gsd,
                facility_gsd_m=facility_gsd_m,
                max_aspect_ratio=max_aspect_ratio,
                max_upsample=max_upsample,
                max_resampled_pixels=max_scene_pixels,
            )
        except RegionError as exc:
            raise OutsideSceneError(str(exc)) from None
        geo = None
        if scene.georef is not None or out.gsd_source is not None:
            geo = {
                **(scene.georef.to_dict() if scene.georef else {}),
                "window": list(out.region.window),
                "gsd_source": out.gsd_source,
                "bands": scene.bands,
                "windows": out.windows,
            }
            if out.region.footprint_px is not None:
                geo["footprint_px"] = [[round(x, 2), round(y, 2)] for x, y in out.region.footprint_px.exterior.coords]
        info = SceneInfo(width=scene.width, height=scene.height, format=scene.format, sha256=scene.sha256)
    counted, candidates = split_counted(out.detections)
    result = DetectionResult(
        detections=counted,
        candidates=candidates,
        width=info.width,
        height=info.height,
        gsd_m=out.gsd_m,
        timing_ms=out.detect_ms,
    )
    return Analysis(
        image=info,
        result=result,
        model_name=detector.name,
        model_version=detector.version,
        class_names=tuple(detector.class_names),
        gsd_m=out.gsd_m,
        decode_ms=decode_ms,
        detect_ms=out.detect_ms,
        geo=geo,
        coverage=out.coverage,
    )


def analyse_image(
    detector: DetectorProtocol | None, data: bytes, gsd_m: float | None = None, max_pixels: int = 100_000_000
) -> Analysis:
    """Decode image bytes and run the detector (CPU-bound: call it from a worker thread, not an event loop).

    The image is validated before the model's presence is checked, so bad input is reported as such even on a
    service running without a model (which then raises :class:`ModelUnavailableError`).
    """
    return analyse_source(detector, data, gsd_m, max_pixels=max_pixels)


def analyse_with_settings(
    detector: DetectorProtocol | None,
    source: Path | bytes | OpenedSource,
    settings: Settings,
    gsd_m: float | None = None,
    footprint: dict[str, Any] | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
    facility_gsd_m: float | None = None,
    hints: SceneHints | None = None,
) -> Analysis:
    """:func:`analyse_source` with the limits and options of ``settings``."""
    return analyse_source(
        detector,
        source,
        gsd_m,
        footprint,
        max_pixels=settings.max_pixels,
        max_scene_pixels=settings.max_scene_pixels,
        stretch_8bit=settings.stretch_8bit,
        gdal_cache_mb=settings.gdal_cache_mb,
        margin_m=settings.footprint_margin_m,
        sha256=sha256,
        progress=progress,
        estimate_gsd=settings.estimate_gsd,
        facility_gsd_m=facility_gsd_m,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_upsample=settings.max_upsample,
        hints=hints,
    )


#: How many of a facility's newest uploads with a given GSD (request or geotransform) decide its GSD.
FACILITY_GSD_UPLOADS = 5
#: Their GSDs must all lie within this share of their median for the facility to have one GSD.
FACILITY_GSD_TOLERANCE = 0.05
#: Where a stored observation's GSD came from when it was given rather than estimated or borrowed.
GIVEN_GSD_SOURCES = ("request", "geotransform")


def facility_gsd(store: db.Store, facility_id: str) -> float | None:
    """The GSD (m/px) that the facility's recent uploads were given, for an upload that gives none.

    The median GSD of the facility's newest :data:`FACILITY_GSD_UPLOADS` uploads whose GSD came with them (the
    request's ``gsd_m`` or a geotransform), when every one lies within :data:`FACILITY_GSD_TOLERANCE` of it: one
    vendor's product at one facility keeps its scale. ``None`` when there is no such upload or they disagree (then
    the GSD is estimated, as for a new facility); estimated or borrowed GSDs never count."""
    with store.session() as session:
        rows = db.recent_image_gsds(session, facility_id, limit=4 * FACILITY_GSD_UPLOADS)
    given = [gsd for gsd, geo in rows if geo is None or geo.get("gsd_source") in GIVEN_GSD_SOURCES]
    given = given[:FACILITY_GSD_UPLOADS]
    if not given:
        return None
    median = float(np.median(given))
    if any(abs(g - median) > FACILITY_GSD_TOLERANCE * median for g in given):
        return None
    return median


def facility_footprint(store: db.Store, facility_id: str) -> dict[str, Any] | None:
    """The facility's footprint (``None`` if it has none); :class:`NotFoundError` if unknown."""
    with store.session() as session:
        row = db.get_facility(session, facility_id)
        if row is None:
            raise NotFoundError(f"facility {facility_id!r} not found")
        return row.footprint


# ------------------------------------------------------------------------------------------------ archive


def archive_path(archive_dir: Path, sha256: str) -> Path:
    """Where the original with this digest is kept: ``<dir>/<sha[:2]>/<sha>``."""
    return Path(archive_dir) / sha256[:2] / sha256


class ArchiveWriter:
    """Streams an upload into the archive while hashing it; :meth:`commit` moves it to its content address."""

    def __init__(self, archive_dir: Path) -> None:
        self.dir = Path(archive_dir)
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.dir / "tmp", prefix="upload-")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append a chunk."""
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self) -> tuple[str, Path]:
        """Close and move into place (an identical original already there is kept); return (sha256, path)."""
        self._file.close()
        sha = self._hash.hexdigest()
        final = archive_path(self.dir, sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            self._tmp.unlink(missing_ok=True)
        else:
            os.replace(self._tmp, final)
        return sha, final

    def discard(self) -> None:
        """Close and delete the partial file."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def archive_bytes(archive_dir: Path, data: bytes) -> tuple[str, Path]:
    """Keep ``data`` in the archive; return (sha256, path)."""
    w = ArchiveWriter(archive_dir)
    try:
        w.write(data)
    except BaseException:
        w.discard()
        raise
    return w.commit()


# ------------------------------------------------------------------------------------------------ GeoJSON


def observation_geojson(store: db.Store, observation_id: int) -> dict[str, Any]:
    """The observation's detections as a GeoJSON FeatureCollection (WGS84 lon/lat polygons, RFC 7946).

    :class:`NotFoundError` if the observation is unknown or its image was not georeferenced.
    """
    with store.session() as session:
        obs = db.get_observation(session, observation_id)
        if obs is None:
            raise NotFoundError(f"observation {observation_id} not found")
        if not obs.geo or "crs" not in obs.geo:
            raise NotFoundError(f"observation {observation_id} has no map coordinates (no georeferenced image)")
        when = iso(obs.captured_at)
        features = []
        for d in obs.detections:
            if not d.counted:
                continue
            if d.obb_lonlat is None:
                continue
            ring = [[float(x), float(y)] for x, y in d.obb_lonlat]
            if _signed_area(np.array(ring)) < 0:  # exterior rings counter-clockwise (RFC 7946)
                ring.reverse()
            ring.append(ring[0])
            features.append(
                {
                    "type": "Feature",
                    "id": d.id,
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {
                        "class": d.class_name,
                        "confidence": round(float(d.confidence), 4),
                        "captured_at": when,
                        "observation_id": obs.id,
                        "facility_id": obs.facility_id,
                        "model_version": obs.model_version,
                    },
                }
            )
        return {"type": "FeatureCollection", "name": f"observation-{obs.id}", "features": features}


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


# ------------------------------------------------------------------------------------------------ overlay


def render_overlay(store: db.Store, settings: Settings, observation_id: int, boxes: bool = True) -> bytes:
    """PNG of the observation's image (the region read, downscaled to ``overlay_max_px``) with its counted oriented
    boxes drawn per class, the footprint, and the counts in a legend (``boxes`` False: the image alone).
    :class:`NotFoundError` without a kept original."""
    import cv2

    with store.session() as session:
        obs = db.get_observation(session, observation_id)
        if obs is None:
            raise NotFoundError(f"observation {observation_id} not found")
        if obs.image_sha256 is None:
            raise NotFoundError(f"observation {observation_id} has no image")
        path = archive_path(settings.archive_dir, obs.image_sha256)
        if not path.exists():
            raise NotFoundError(f"the original image of observation {observation_id} is not in the archive")
        geo = obs.geo or {}
        drawn = [(d.class_name, np.asarray(d.obb, np.float64)) for d in obs.detections if d.counted]
        counts = {c.class_name: c.count for c in obs.counts}
    with open_scene(
        path,
        sha256=obs.image_sha256,
        max_pixels=settings.max_pixels,
        max_scene_pixels=settings.max_scene_pixels,
        stretch_8bit=settings.stretch_8bit,
        gdal_cache_mb=settings.gdal_cache_mb,
    ) as scene:
        window = tuple(geo.get("window") or (0, 0, scene.width, scene.height))
        c0, r0, w, h = (int(v) for v in window)
        f = max(1.0, max(w, h) / settings.overlay_max_px)
        shape = (max(1, round(h / f)), max(1, round(w / f)))
        scene.prepare((c0, r0, w, h))
        rgb, _ = scene.read((c0, r0, w, h), out_shape=shape)
    canvas = np.ascontiguousarray(rgb[..., ::-1])  # BGR for OpenCV
    sx, sy = shape[1] / w, shape[0] / h

    def to_px(pts: np.ndarray) -> np.ndarray:
        return np.rint((pts - np.array([c0, r0])) * np.array([sx, sy])).astype(np.int32)

    if not boxes:
        return _png(canvas)
    if geo.get("footprint_px"):
        cv2.polylines(canvas, [to_px(np.asarray(geo["footprint_px"]))], True, FOOTPRINT_COLOUR[::-1], 2, cv2.LINE_AA)
    for cls, quad in drawn:
        colour = CLASS_COLOURS.get(cls, (255, 0, 255))[::-1]
        cv2.polylines(canvas, [to_px(quad)], True, colour, 1 if f > 2 else 2, cv2.LINE_AA)
    lines = [(f"{cls}: {counts.get(cls, 0)}", CLASS_COLOURS.get(cls, (255, 0, 255))) for cls in CLASS_NAMES]
    scale = 0.5 if canvas.shape[1] < 800 else 0.8
    line_h = int(28 * scale) + 6
    box_w = int(max(len(t) for t, _ in lines) * 20 * scale) + 40
    cv2.rectangle(canvas, (4, 4), (4 + box_w, 8 + line_h * len(lines)), (0, 0, 0), -1)
    for i, (text, colour) in enumerate(lines):
        y = 4 + line_h * (i + 1)
        cv2.rectangle(canvas, (10, y - line_h + 8), (24, y - 4), colour[::-1], -1)
        cv2.putText(canvas, text, (30, y - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return _png(canvas)


def _png(bgr: np.ndarray) -> bytes:
    import cv2

    ok, png = cv2.imencode(".png", bgr)
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


# ------------------------------------------------------------------------------------------------ reprocess


@dataclass(frozen=True)
class Reprocessed:
    """One observation rerun (or skipped) by :func:`reprocess_facility`."""

    observation_id: int
    before: dict[str, int]
    after: dict[str, int] | None  # None: skipped
    note: str = ""


def reprocess_facility(
    store: db.Store,
    settings: Settings,
    detector: DetectorProtocol,
    facility_id: str,
    on_done: Callable[[Reprocessed], None] | None = None,
    progress: Progress | None = None,
) -> list[Reprocessed]:
    """Rerun ``detector`` over every image observation of a facility whose original is in the archive, using the
    facility's current footprint; replace counts, detections, coverage and model version; rescore the history."""
    with store.session() as session:
        fac = db.get_facility(session, facility_id)
        if fac is None:
            raise NotFoundError(f"facility {facility_id!r} not found")
        footprint = fac.footprint
        todo = [
            (o.id, o.image_sha256, _request_gsd(o), {c.class_name: c.count for c in o.counts})
            for o in db.list_observations(session, facility_id)
            if o.image_sha256 is not None
        ]
    done: list[Reprocessed] = []
    for obs_id, sha, gsd, before in todo:
        path = archive_path(settings.archive_dir, sha)
        if not path.exists():
            item = Reprocessed(obs_id, before, None, "original not in the archive")
        else:
            try:
                analysis = analyse_with_settings(
                    detector, path, settings, gsd_m=gsd, footprint=footprint, sha256=sha, progress=progress
                )
            except (InvalidInputError, ValueError) as exc:
                item = Reprocessed(obs_id, before, None, str(exc))
            else:
                replace_analysis(store, obs_id, analysis)
                item = Reprocessed(obs_id, before, dict(analysis.counts))
        done.append(item)
        if on_done is not None:
            on_done(item)
    return done


def _request_gsd(obs: db.Observation) -> float | None:
    """The GSD a request gave for this observation (to be given again), or ``None`` (taken from the image)."""
    if obs.geo:
        return obs.gsd_m if obs.geo.get("gsd_source") == "request" else None
    return obs.gsd_m


def replace_analysis(store: db.Store, observation_id: int, analysis: Analysis) -> None:
    """Replace an observation's counts, detections, model and coverage by a new analysis; rescore (one
    transaction)."""
    with store.transaction() as session:
        obs = db.get_observation(session, observation_id)
        if obs is None:
            raise NotFoundError(f"observation {observation_id} not found")
        db.lock_facility(session, obs.facility_id)  # before rescoring its history
        obs.model_name, obs.model_version = analysis.model_name, analysis.model_version
        obs.gsd_m, obs.geo, obs.coverage = analysis.gsd_m, analysis.geo, analysis.coverage
        obs.exposure = None if analysis.coverage is None else analysis.coverage.get("share")
        thresholds, spreads = calibrated_thresholds(session, obs.facility_id)
        result = rethreshold(analysis.result, thresholds) if thresholds else analysis.result
        new_counts = result.counts(analysis.class_names)
        confidences: dict[str, list[float]] = {}
        for d in result.detections:
            confidences.setdefault(d.class_name, []).append(float(d.confidence))
        by_class = {c.class_name: c for c in obs.counts}
        for cls, n in new_counts.items():
            sd = round(
                count_uncertainty(confidences.get(cls, []), int(n), spreads.get(cls, DEFAULT_COUNT_REL_ERROR)), 4
            )
            if cls in by_class:
                by_class[cls].count, by_class[cls].count_sd = int(n), sd
            else:
                obs.counts.append(db.ObservationCount(class_name=cls, count=int(n), count_sd=sd))
        obs.detections = [db.DetectionRow(**detection_row(d)) for d in [*result.detections, *result.candidates]]
        session.flush()
        rescore(session, obs.facility_id, since=obs.captured_at, classes=new_counts.keys())


__all__ = [
    "OutsideSceneError",
    "SceneInfo",
    "analyse_source",
    "analyse_with_settings",
    "archive_path",
    "ArchiveWriter",
    "archive_bytes",
    "observation_geojson",
    "render_overlay",
    "reprocess_facility",
    "replace_analysis",
    "facility_footprint",
    "facility_gsd",
]
