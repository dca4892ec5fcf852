"""Tiny georeferenced test scenes made in the tests: synthetic wagon chips written as GeoTIFFs at known places.

``make_geotiff`` writes an RGB array (optionally padded with nodata, converted to 16-bit or to 4-band BGRN) with a
UTM or WGS84 geotransform; ``label_lonlat`` maps the chip's label centres to longitude/latitude through the same
transform, so a test can compare the GeoJSON against where the wagons really are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.detection.raster import metres_per_degree

#: Scene origin: near Tumangang (UTM zone 52N).
UTM_CRS = "EPSG:32652"
UTM_ORIGIN = (620_000.0, 4_700_000.0)
WGS84_ORIGIN = (130.45, 42.43)


@dataclass(frozen=True)
class GeoScene:
    """A written scene: its path, transform and how pixels of the source chip map to it."""

    path: Path
    crs: str
    transform: tuple[float, float, float, float, float, float]
    offset: tuple[int, int]  # where the chip's (0, 0) lies in the scene, pixels
    gsd_m: float

    def pixel_to_lonlat(self, pts: np.ndarray) -> np.ndarray:
        """Scene pixel coordinates (N, 2) to lon/lat (N, 2)."""
        from app.detection.raster import Georef

        g = Georef(self.crs, self.transform, geographic=self.crs == "EPSG:4326")
        return g.pixel_to_lonlat(pts)


def make_geotiff(
    path: Path,
    rgb: np.ndarray,
    gsd_m: float,
    *,
    crs: str = "utm",
    bits: int = 8,
    bands: str = "RGB",
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    nodata_right: int = 0,
    tiled: bool = False,
    photometric_rgb: bool = True,
    describe: bool = False,
) -> GeoScene:
    """Write ``rgb`` as a GeoTIFF.

    ``pad`` (left, top, right, bottom) surrounds the chip with plain ground; ``nodata_right`` blanks that many
    columns at the right edge as nodata (0). ``bits`` 8 or 16 (16: value * 16 + 300, i.e. 12-bit-like data);
    ``bands`` ``"RGB"`` or ``"BGRN"`` (4 bands, NIR made up). ``crs`` ``"utm"`` or ``"wgs84"``.
    """
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import Affine

    left, top, right, bottom = pad
    h, w = rgb.shape[:2]
    canvas = np.full((h + top + bottom, w + left + right, 3), 118, np.uint8)
    canvas[top : top + h, left : left + w] = rgb
    valid = np.ones(canvas.shape[:2], bool)
    if nodata_right:
        valid[:, -nodata_right:] = False
    if crs == "utm":
        crs_name = UTM_CRS
        transform = Affine(gsd_m, 0.0, UTM_ORIGIN[0], 0.0, -gsd_m, UTM_ORIGIN[1])
    else:
        crs_name = "EPSG:4326"
        m_lon, m_lat = metres_per_degree(WGS84_ORIGIN[1])
        transform = Affine(gsd_m / m_lon, 0.0, WGS84_ORIGIN[0], 0.0, -gsd_m / m_lat, WGS84_ORIGIN[1])
    data = np.moveaxis(canvas, 2, 0).astype(np.uint16 if bits == 16 else np.uint8)
    if bits == 16:
        data = data * 16 + 300
    if bands == "BGRN":
        nir = (data[1].astype(np.uint32) * 3 // 4).astype(data.dtype)
        data = np.stack([data[2], data[1], data[0], nir])
    for band in data:
        band[~valid] = 0
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=canvas.shape[1],
        height=canvas.shape[0],
        count=len(data),
        dtype=str(data.dtype),
        crs=crs_name,
        transform=transform,
        nodata=0,
    )
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    if len(data) == 3 and photometric_rgb:
        profile["photometric"] = "RGB"
    elif len(data) == 4:
        profile["photometric"] = "MINISBLACK"  # as vendors write BGRN: no colour interpretation in the file
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if bands == "BGRN" and describe:
            dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    return GeoScene(
        path=path,
        crs=crs_name,
        transform=tuple(transform)[:6],
        offset=(left, top),
        gsd_m=gsd_m,
    )


def geotiff_bytes(
    transform: tuple[float, float, float, float, float, float] = (0.5, 0.0, *UTM_ORIGIN[:1], 0.0, -0.5, UTM_ORIGIN[1]),
    crs: str = UTM_CRS,
    data: np.ndarray | None = None,
    nodata: float | None = None,
) -> bytes:
    """A small GeoTIFF in memory: ``data`` (bands x rows x cols; default 3 x 32 x 32 noise) with the GDAL-order
    ``transform`` (a, b, c, d, e, f) in ``crs`` and an optional ``nodata`` value."""
    from rasterio.io import MemoryFile
    from rasterio.transform import Affine

    if data is None:
        data = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    a, b, c, d, e, f = transform
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=str(data.dtype),
        crs=crs,
        transform=Affine(a, b, c, d, e, f),
        nodata=nodata,
    )
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
        return bytes(mem.read())


def label_centres(chip: Any, class_id: int = 0) -> np.ndarray:
    """Centres (N, 2) of a synthetic chip's labels of one class, chip pixels."""
    return np.array([o.corners.mean(axis=0) for o in chip.objects if o.class_id == class_id]).reshape(-1, 2)


def ground_distance_m(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in metres between lon/lat points (N, 2) and (N, 2) (local equirectangular: fine at metre scale)."""
    m_lon, m_lat = metres_per_degree(float(np.mean(a[:, 1])))
    return np.hypot((a[:, 0] - b[:, 0]) * m_lon, (a[:, 1] - b[:, 1]) * m_lat)


class BlobDetector:
    """A stand-in for the model that finds bright blobs (> 200 in every band) as oriented ``railcar`` boxes.

    Exact and fast, so tests of georeferencing, windows, footprints and jobs need no model. Pixel indices are
    turned into continuous coordinates (pixel ``i`` spans ``[i, i + 1)``), as the real detector's boxes are.
    """

    name = "blob-detector"
    class_names = ("railcar", "container")

    def __init__(self, version: str = "test-1") -> None:
        self.version = version
        self.calls = 0

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> Any:
        import cv2

        from app.detection.results import Detection, DetectionResult

        self.calls += 1
        bright = (image.min(axis=2) > 200).astype(np.uint8)
        n, labels = cv2.connectedComponents(bright, connectivity=8)
        dets = []
        for k in range(1, n):
            ys, xs = np.nonzero(labels == k)
            if len(xs) < 6:
                continue
            pts = np.stack([xs, ys], axis=1).astype(np.float32) + 0.5
            rect = cv2.minAreaRect(pts)
            quad = cv2.boxPoints(rect)
            dets.append(Detection("railcar", 0.9, tuple((float(x), float(y)) for x, y in quad)))
        return DetectionResult(detections=dets, width=image.shape[1], height=image.shape[0], gsd_m=gsd_m, timing_ms=0.0)


def blob_scene(
    width: int = 400,
    height: int = 300,
    centres: tuple[tuple[float, float], ...] = ((100.0, 80.0),),
    half: tuple[int, int] = (10, 3),
) -> np.ndarray:
    """Dark RGB ground with white axis-aligned "wagons" centred exactly at the given continuous pixel points."""
    img = np.full((height, width, 3), 60, np.uint8)
    for cx, cy in centres:
        x0, y0 = int(round(cx - half[0])), int(round(cy - half[1]))
        img[y0 : y0 + 2 * half[1], x0 : x0 + 2 * half[0]] = 255
    return img
