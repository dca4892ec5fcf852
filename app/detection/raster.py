"""Read imagery as it arrives: GeoTIFF/COG, JPEG 2000 and NITF through rasterio (GDAL), JPEG/PNG through Pillow.

A :class:`Scene` is opened once and then read window by window, never whole (for the GDAL formats): each read
gives an ``H x W x 3`` RGB ``uint8`` array and a boolean mask of valid pixels (nodata and alpha are invalid).

- **Band order** comes from the colour interpretation (``red``/``green``/``blue``), then from band descriptions,
  then from the band count: one band is panchromatic (replicated to grey RGB), three bands are RGB, four or more
  are assumed blue-green-red-NIR (the common vendor order), eight are WorldView order (R=5, G=3, B=2).
- **Display range**: data deeper than 8 bits (11-, 12-, 16-bit, float) is mapped per band by a percentile stretch
  (``STRETCH_PERCENTILES`` of the valid pixels of the region read, estimated from a decimated read). 8-bit data
  is already display range and is used as is unless ``stretch_8bit`` is set.
- **Scale**: the ground sample distance comes from the geotransform: in metres for a projected CRS (using its
  linear unit), and for a geographic CRS converted to metres at the scene centre on the WGS84 ellipsoid.
- **Map coordinates**: :class:`Georef` maps pixel coordinates (origin at the top-left corner of the top-left
  pixel, as the detector's) to the scene CRS and to WGS84 longitude/latitude.

This module never imports FastAPI; errors are :mod:`app.detection.imaging` exceptions fit to show to the user.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from app.detection.imaging import (
    CorruptImageError,
    DecodedImage,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
)

log = logging.getLogger(__name__)

#: Lower and upper percentile of each band mapped to 0 and 255.
STRETCH_PERCENTILES: tuple[float, float] = (0.5, 99.5)
#: Longest side of the decimated read used to estimate the stretch and to check the data.
SAMPLE_MAX_PX = 1024
#: Formats read through rasterio, by the short name stored with observations.
RASTER_FORMATS: tuple[str, ...] = ("TIFF", "JP2", "NITF")
#: Short names of the GDAL drivers.
_DRIVER_FORMAT = {"GTiff": "TIFF", "COG": "TIFF", "JP2OpenJPEG": "JP2", "JPEG2000": "JP2", "NITF": "NITF"}
#: What a client is told of an image the raster library cannot open or read (its own message, naming files and
#: functions, goes to the log with the request id).
DAMAGED = "its structure is damaged, truncated or of a kind not supported"
#: Why an image with nothing valid to count is refused (it is no observation of zero).
NO_VALID_PIXELS = (
    "the image has no valid pixels over the area counted (all nodata, transparent or NaN): it shows nothing, so "
    "it cannot count as zero railcars and containers"
)
#: WGS84 ellipsoid.
_WGS84_A = 6378137.0
_WGS84_E2 = 0.00669437999014

Window = tuple[int, int, int, int]  # col_off, row_off, width, height (pixels of the full scene)


def sniff_format(head: bytes) -> str | None:
    """The format told from the first bytes: ``JPEG``, ``PNG``, ``TIFF``, ``JP2``, ``NITF`` or ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JP2"
    if head.startswith((b"NITF", b"NSIF")):
        return "NITF"
    return None


# ------------------------------------------------------------------------------------------------- georef


def metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """Metres per degree of longitude and of latitude at a latitude, on the WGS84 ellipsoid."""
    phi = math.radians(lat_deg)
    w = math.sqrt(1.0 - _WGS84_E2 * math.sin(phi) ** 2)
    prime_vertical = _WGS84_A / w
    meridional = _WGS84_A * (1.0 - _WGS84_E2) / w**3
    return prime_vertical * math.cos(phi) * math.pi / 180.0, meridional * math.pi / 180.0


@dataclass(frozen=True)
class Georef:
    """Where a scene's pixels are: CRS, affine geotransform (GDAL order a, b, c, d, e, f as in ``affine``)."""

    crs: str  # "EPSG:32652", or WKT when there is no EPSG code
    transform: tuple[float, float, float, float, float, float]
    geographic: bool
    units_m: float = 1.0  # metres per linear unit of a projected CRS

    @property
    def affine(self) -> Any:
        """The transform as an ``affine.Affine``."""
        from affine import Affine

        return Affine(*self.transform)

    def pixel_to_crs(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(N, 2)`` (x right, y down) to CRS coordinates ``(N, 2)``."""
        a, b, c, d, e, f = self.transform
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        return np.stack([a * pts[:, 0] + b * pts[:, 1] + c, d * pts[:, 0] + e * pts[:, 1] + f], axis=1)

    def crs_to_pixel(self, pts: np.ndarray) -> np.ndarray:
        """CRS coordinates ``(N, 2)`` to pixel coordinates ``(N, 2)``."""
        inv = ~self.affine
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        return np.stack(
            [inv.a * pts[:, 0] + inv.b * pts[:, 1] + inv.c, inv.d * pts[:, 0] + inv.e * pts[:, 1] + inv.f], axis=1
        )

    def pixel_to_lonlat(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(N, 2)`` to WGS84 ``(lon, lat)`` ``(N, 2)``."""
        xy = self.pixel_to_crs(pts)
        if len(xy) == 0:
            return xy
        return _transform(self.crs, "EPSG:4326", xy)

    def lonlat_to_pixel(self, pts: np.ndarray) -> np.ndarray:
        """WGS84 ``(lon, lat)`` ``(N, 2)`` to pixel coordinates ``(N, 2)``."""
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        if len(pts) == 0:
            return pts
        return self.crs_to_pixel(_transform("EPSG:4326", self.crs, pts))

    def gsd_m(self, width: int, height: int) -> float:
        """Ground sample distance in metres: the square root of the pixel's ground area (at the scene centre for a
        geographic CRS)."""
        a, b, _, d, e, _ = self.transform
        if not self.geographic:
            return math.sqrt(abs(a * e - b * d)) * self.units_m
        lon, lat = self.pixel_to_crs(np.array([[width / 2.0, height / 2.0]]))[0]
        m_lon, m_lat = metres_per_degree(float(lat))
        col_step = np.array([a * m_lon, d * m_lat])  # one pixel right, in metres east/north
        row_step = np.array([b * m_lon, e * m_lat])  # one pixel down
        return math.sqrt(abs(col_step[0] * row_step[1] - col_step[1] * row_step[0]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with the observation)."""
        return {
            "crs": self.crs,
            "transform": list(self.transform),
            "geographic": self.geographic,
            "units_m": self.units_m,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Georef:
        """Inverse of :meth:`to_dict`."""
        return cls(
            crs=data["crs"],
            transform=tuple(data["transform"]),
            geographic=bool(data["geographic"]),
            units_m=float(data.get("units_m", 1.0)),
        )


def _transform(src: str, dst: str, xy: np.ndarray) -> np.ndarray:
    from rasterio.crs import CRS
    from rasterio.warp import transform

    xs, ys = transform(CRS.from_user_input(src), CRS.from_user_input(dst), xy[:, 0].tolist(), xy[:, 1].tolist())
    return np.stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)], axis=1)


def make_georef(crs_text: str, transform: tuple[float, ...]) -> Georef:
    """A :class:`Georef` from a CRS (``EPSG:n``, WKT or PROJJSON text) and a GDAL-order transform (a, b, c, d, e, f),
    e.g. a STAC item's ``proj:code`` and ``proj:transform``; :class:`ValueError` for a CRS that cannot be read."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        crs = CRS.from_user_input(crs_text)
    except CRSError as exc:
        raise ValueError(f"unknown CRS {crs_text!r}") from exc
    georef = _georef_from(crs, Affine(*transform[:6]))
    if georef is None:
        raise ValueError("the transform is the identity: no georeference")
    return georef


def _georef_of(ds: Any) -> Georef | None:
    if ds.crs is None:
        return None
    return _georef_from(ds.crs, ds.transform)


def _georef_from(crs: Any, t: Any) -> Georef | None:
    if t.is_identity:
        return None
    epsg = crs.to_epsg()
    name = f"EPSG:{epsg}" if epsg else crs.to_wkt()
    units = 1.0
    if not crs.is_geographic:
        try:
            units = float(crs.linear_units_factor[1])
        except Exception:
            # unknown units: assume metres
            units = 1.0
    return Georef(crs=name, transform=(t.a, t.b, t.c, t.d, t.e, t.f), geographic=bool(crs.is_geographic), units_m=units)


# ------------------------------------------------------------------------------------------------- scenes


class Scene(Protocol):
    """An opened image, read window by window."""

    width: int
    height: int
    format: str
    sha256: str
    georef: Georef | None
    bands: str  # how the RGB bands were chosen, for the record

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb uint8 H x W x 3, valid bool H x W)`` of a window, optionally resampled to ``out_shape``."""
        ...

    def prepare(self, window: Window | None = None) -> None:
        """Check the data of the region (:class:`EmptyImageError` when no pixel is valid) and estimate its display
        stretch (call once before reading)."""
        ...

    @property
    def native_gsd_m(self) -> float | None:
        """Ground sample distance from the georeferencing, metres per pixel."""
        ...


@dataclass(frozen=True)
class SceneHints:
    """What a scene's metadata (a STAC item) says that the file may not: the bands' names in file order (common
    names such as ``red``, ``green``, ``blue``, ``nir``, ``pan``) and a georeference for a file without one."""

    band_names: tuple[str, ...] = ()
    georef: Georef | None = None


@dataclass(frozen=True)
class OpenedSource:
    """A file GDAL reads through a Python file opener (a scene fetched by URL): the name to open, the opener
    (rasterio's ``opener``), its first bytes and its identity (stored as the image digest)."""

    name: str
    opener: Callable[..., Any]
    head: bytes
    sha256: str


class ArrayScene:
    """A decoded JPEG/PNG (EXIF orientation applied): the whole image is in memory; every pixel is valid except
    fully transparent ones."""

    georef: Georef | None = None
    bands = "RGB"

    def __init__(self, image: DecodedImage) -> None:
        self.image = image
        self.width, self.height = image.width, image.height
        self.format = image.format
        self.sha256 = image.sha256

    @property
    def native_gsd_m(self) -> float | None:
        """Not georeferenced: no GSD."""
        return None

    def prepare(self, window: Window | None = None) -> None:
        """Check that the region has a valid pixel (:class:`EmptyImageError` if not: all transparent)."""
        c, r, w, h = window or (0, 0, self.width, self.height)
        if self.image.valid is not None and not self.image.valid[r : r + h, c : c + w].any():
            raise EmptyImageError(NO_VALID_PIXELS)

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A window, optionally resampled (area interpolation) to ``out_shape`` (rows, cols)."""
        c, r, w, h = window
        rgb = self.image.array[r : r + h, c : c + w]
        valid = None if self.image.valid is None else self.image.valid[r : r + h, c : c + w]
        if out_shape is not None and out_shape != rgb.shape[:2]:
            rgb = cv2.resize(rgb, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_AREA)
            if valid is not None:
                valid = cv2.resize(
                    valid.astype(np.uint8), (out_shape[1], out_shape[0]), interpolation=cv2.INTER_NEAREST
                ).astype(bool)
        return rgb, (np.ones(rgb.shape[:2], bool) if valid is None else valid)


class RasterScene:
    """A GDAL dataset read window by window, with band selection, stretch and validity mask."""

    def __init__(self, ds: Any, sha256: str, stretch_8bit: bool = False, hints: SceneHints | None = None) -> None:
        self.ds = ds
        self.width, self.height = int(ds.width), int(ds.height)
        self.format = _DRIVER_FORMAT.get(ds.driver, ds.driver[:8].upper())
        self.sha256 = sha256
        hints = hints or SceneHints()
        self.georef = _georef_of(ds) or hints.georef
        self.rgb_bands, self.bands = pick_rgb_bands(ds)
        named = bands_from_names(hints.band_names, int(ds.count))
        if named is not None and not self.bands.startswith("RGB from colour"):
            self.rgb_bands, self.bands = named
        self.dtype = np.dtype(ds.dtypes[self.rgb_bands[0] - 1])
        self.needs_stretch = self.dtype != np.uint8 or stretch_8bit
        self.stretch: list[tuple[float, float]] | None = None
        self._read_bands = sorted(set(self.rgb_bands))

    @property
    def native_gsd_m(self) -> float | None:
        """GSD from the geotransform, or ``None`` when not georeferenced."""
        return None if self.georef is None else self.georef.gsd_m(self.width, self.height)

    def prepare(self, window: Window | None = None) -> None:
        """Read the region decimated (at most ``SAMPLE_MAX_PX`` a side): this checks that the data decode and hold
        a valid pixel (:class:`EmptyImageError` if not) and, for data deeper than 8 bits, sets the per-band
        percentile stretch from its valid pixels."""
        window = window or (0, 0, self.width, self.height)
        c, r, w, h = window
        f = max(w, h) / SAMPLE_MAX_PX
        shape = (h, w) if f <= 1 else (max(1, round(h / f)), max(1, round(w / f)))
        data, valid = self._read_raw(window, shape)
        if not valid.any():
            raise EmptyImageError(NO_VALID_PIXELS)
        if not self.needs_stretch:
            return
        stretch = []
        for b in self.rgb_bands:
            band = data[self._read_bands.index(b)]
            values = band[valid & np.isfinite(band)] if band.dtype.kind == "f" else band[valid]
            if values.size == 0:
                stretch.append((0.0, 1.0))
                continue
            lo, hi = np.percentile(values, STRETCH_PERCENTILES)
            stretch.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
        self.stretch = stretch

    def _read_raw(self, window: Window, out_shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.enums import Resampling
        from rasterio.errors import NodataShadowWarning, RasterioError
        from rasterio.windows import Window as RioWindow

        c, r, w, h = window
        win = RioWindow(c, r, w, h)
        shape = None if out_shape is None else (len(self._read_bands), *out_shape)
        try:
            data = self.ds.read(self._read_bands, window=win, out_shape=shape, resampling=Resampling.nearest)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NodataShadowWarning)  # nodata wins over an alpha band: intended
                valid = self.ds.dataset_mask(window=win, out_shape=out_shape) > 0
        except (RasterioError, MemoryError, ValueError) as exc:
            log.warning("reading the %s image failed: %s", self.format, exc)  # GDAL's words, with file paths: the log
            raise CorruptImageError(f"the {self.format} image cannot be read: {DAMAGED}") from exc
        if data.dtype.kind == "f":  # NaN and infinite samples are no data, whatever the mask says
            valid &= np.isfinite(data).all(axis=0)
        return data, valid

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A window as RGB uint8 (invalid pixels black) and its validity mask."""
        data, valid = self._read_raw(window, out_shape)
        h, w = valid.shape
        rgb = np.empty((h, w, 3), np.uint8)
        for i, b in enumerate(self.rgb_bands):
            band = data[self._read_bands.index(b)]
            if self.stretch is None:
                rgb[..., i] = band if band.dtype == np.uint8 else np.clip(band, 0, 255).astype(np.uint8)
            else:
                lo, hi = self.stretch[i]
                scaled = (band.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
                np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
                rgb[..., i] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
            del band
        del data
        rgb[~valid] = 0
        return rgb, valid


def pick_rgb_bands(ds: Any) -> tuple[tuple[int, int, int], str]:
    """1-based band numbers to show as red, green, blue, and a note saying how they were chosen."""
    interp = [str(getattr(ci, "name", ci)).lower() for ci in ds.colorinterp]
    if all(name in interp for name in ("red", "green", "blue")):
        return (
            interp.index("red") + 1,
            interp.index("green") + 1,
            interp.index("blue") + 1,
        ), "RGB from colour interpretation"
    descriptions = [(d or "").strip().lower() for d in ds.descriptions]
    found = {}
    for key, aliases in (("red", ("red", "r")), ("green", ("green", "g")), ("blue", ("blue", "b"))):
        for i, d in enumerate(descriptions):
            if d in aliases:
                found[key] = i + 1
                break
    if len(found) == 3:
        return (found["red"], found["green"], found["blue"]), "RGB from band descriptions"
    data_bands = [i + 1 for i, name in enumerate(interp) if name != "alpha"]
    n = len(data_bands)
    if n >= 8:
        return (data_bands[4], data_bands[2], data_bands[1]), "WorldView 8-band order assumed (R=5, G=3, B=2)"
    if n >= 4:
        return (data_bands[2], data_bands[1], data_bands[0]), "BGRN order assumed (RGB = bands 3, 2, 1)"
    if n == 3:
        return (data_bands[0], data_bands[1], data_bands[2]), "RGB order assumed (bands 1, 2, 3)"
    if n >= 1:
        return (data_bands[0],) * 3, "panchromatic (band 1 replicated)"
    raise UnsupportedImageError("the image has no data bands")


def bands_from_names(names: tuple[str, ...], count: int) -> tuple[tuple[int, int, int], str] | None:
    """RGB band numbers from the bands' names in file order (a STAC item's ``eo:bands``/``bands``), or ``None``
    when they name no red, green and blue (nor one panchromatic band) within the file's ``count`` bands."""
    lowered = [n.strip().lower() for n in names[:count]]
    if all(c in lowered for c in ("red", "green", "blue")):
        rgb = (lowered.index("red") + 1, lowered.index("green") + 1, lowered.index("blue") + 1)
        return rgb, "RGB from the scene metadata's band names"
    for pan in ("pan", "panchromatic"):
        if pan in lowered:
            i = lowered.index(pan) + 1
            return (i, i, i), "panchromatic from the scene metadata's band names"
    return None


# --------------------------------------------------------------------------------------------------- open


def sha256_file(path: Path, chunk: int = 4 * 1024 * 1024) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def open_scene(
    source: Path | bytes | OpenedSource,
    *,
    sha256: str | None = None,
    max_pixels: int = 100_000_000,
    max_scene_pixels: int = 2_500_000_000,
    stretch_8bit: bool = False,
    gdal_cache_mb: int = 256,
    hints: SceneHints | None = None,
) -> Iterator[Scene]:
    """Open image bytes, a file or an :class:`OpenedSource` as a :class:`Scene` (format from the content).

    JPEG and PNG are decoded whole by Pillow (EXIF orientation honoured, ``max_pixels`` applies). TIFF, JPEG 2000
    and NITF are opened through rasterio and read window by window later (``max_scene_pixels`` applies); GDAL's
    block cache is bounded by ``gdal_cache_mb`` while the scene is open. An :class:`OpenedSource` must be one of
    the GDAL formats. ``hints`` supply band names and a georeference the file lacks.
    """
    if isinstance(source, OpenedSource):
        fmt = sniff_format(source.head)
        if fmt not in RASTER_FORMATS:
            raise UnsupportedImageError(
                "a scene read by reference must be a GeoTIFF/COG, JPEG 2000 or NITF file "
                f"(this one is {fmt or 'not an image'})"
            )
        with _open_raster(source, fmt, source.sha256, max_scene_pixels, stretch_8bit, gdal_cache_mb, hints) as scene:
            yield scene
        return
    src: bytes | Path  # the image's bytes, or the path of its file
    if isinstance(source, (bytes, bytearray, memoryview)):
        src = bytes(source)
        if not src:
            raise EmptyImageError("the uploaded file is empty")
        head = src[:16]
    else:
        src = Path(source)
        if src.stat().st_size == 0:
            raise EmptyImageError("the uploaded file is empty")
        with open(src, "rb") as f:
            head = f.read(16)
    fmt = sniff_format(head)
    if fmt not in RASTER_FORMATS:
        raw = src if isinstance(src, bytes) else src.read_bytes()
        yield ArrayScene(decode_image(raw, max_pixels=max_pixels, sha256=sha256))  # refuses what it cannot decode
        return
    digest = sha256 or (hashlib.sha256(src).hexdigest() if isinstance(src, bytes) else sha256_file(src))
    with _open_raster(src, fmt, digest, max_scene_pixels, stretch_8bit, gdal_cache_mb, hints) as scene:
        yield scene


@contextmanager
def _open_raster(
    src: bytes | Path | OpenedSource,
    fmt: str,
    digest: str,
    max_scene_pixels: int,
    stretch_8bit: bool,
    gdal_cache_mb: int,
    hints: SceneHints | None,
) -> Iterator[Scene]:
    """Open a GDAL format from bytes, a path or an opener (GDAL's own network access stays off)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    with ExitStack() as stack:
        stack.enter_context(
            rasterio.Env(
                GDAL_CACHEMAX=int(gdal_cache_mb) * 1024 * 1024,
                GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
                GTIFF_REPORT_COMPD_CS=False,
                CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".none",
            )
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                if isinstance(src, bytes):
                    ds = stack.enter_context(stack.enter_context(MemoryFile(src)).open())
                elif isinstance(src, OpenedSource):
                    ds = stack.enter_context(rasterio.open(src.name, opener=src.opener))
                else:
                    ds = stack.enter_context(rasterio.open(src))
        except RasterioError as exc:
            log.warning("opening the %s image failed: %s", fmt, exc)
            raise CorruptImageError(f"the {fmt} image cannot be read: {DAMAGED}") from exc
        if ds.width <= 0 or ds.height <= 0 or ds.count <= 0:
            raise CorruptImageError(f"the image has an invalid size {ds.width}x{ds.height}x{ds.count}")
        if ds.width * ds.height > max_scene_pixels:
            raise ImageTooLargeError(
                f"image is {ds.width}x{ds.height} = {ds.width * ds.height} pixels; the limit "
                f"is {max_scene_pixels} (WAGON_MAX_SCENE_PIXELS)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            yield RasterScene(ds, digest, stretch_8bit=stretch_8bit, hints=hints)
