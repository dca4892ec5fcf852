"""Big georeferenced scenes for ``POST /v1/scenes``: a tiled, JPEG-compressed GeoTIFF with overviews (laid out as a
COG), textured ground and white "wagons" (for :class:`tests.support.geodata.BlobDetector`) at given pixels;
footprints of pixel boxes; windows cut out as small GeoTIFFs (what an upload of one footprint would send)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.support.geodata import UTM_CRS, UTM_ORIGIN, GeoScene

TILE = 512


def make_cog(
    path: Path,
    size: int = 12_000,
    gsd_m: float = 0.5,
    centres: tuple[tuple[float, float], ...] = (),
    half: tuple[int, int] = (10, 3),
    quality: int = 90,
) -> GeoScene:
    """Write a ``size`` x ``size`` RGB tiled GeoTIFF with internal overviews (UTM, ``gsd_m``; overviews after the
    full resolution, which range reading does not mind) with white wagons centred at ``centres`` (pixels)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(7)
    texture = rng.integers(60, 76, (3, TILE, TILE), dtype=np.uint8)
    transform = Affine(gsd_m, 0.0, UTM_ORIGIN[0], 0.0, -gsd_m, UTM_ORIGIN[1])
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs=UTM_CRS,
        transform=transform,
        tiled=True,
        blockxsize=TILE,
        blockysize=TILE,
        compress="jpeg",
        jpeg_quality=quality,
        photometric="YCBCR",
        interleave="pixel",
    )
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, TILE):
            for col in range(0, size, TILE):
                h, w = min(TILE, size - row), min(TILE, size - col)
                block = texture[:, :h, :w].copy()
                for cx, cy in centres:
                    x0, y0 = int(round(cx - half[0])) - col, int(round(cy - half[1])) - row
                    x1, y1 = x0 + 2 * half[0], y0 + 2 * half[1]
                    if x1 > 0 and y1 > 0 and x0 < w and y0 < h:
                        block[:, max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 255
                dst.write(block, window=Window(col, row, w, h))
        dst.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    return GeoScene(path=path, crs=UTM_CRS, transform=tuple(transform)[:6], offset=(0, 0), gsd_m=gsd_m)


def footprint(scene: GeoScene, box: tuple[float, float, float, float]) -> dict[str, Any]:
    """GeoJSON Polygon (lon/lat) of a pixel box ``(x0, y0, x1, y1)`` of the scene."""
    x0, y0, x1, y1 = box
    corners = scene.pixel_to_lonlat(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64))
    ring = [[float(x), float(y)] for x, y in corners]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def cut_window(src: Path, window: tuple[int, int, int, int], dst: Path) -> Path:
    """The window ``(col, row, width, height)`` of ``src`` as an uncompressed GeoTIFF of its own."""
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    with rasterio.open(src) as ds:
        win = Window(*window)
        data = ds.read(window=win)
        profile = dict(
            driver="GTiff",
            width=data.shape[2],
            height=data.shape[1],
            count=data.shape[0],
            dtype="uint8",
            crs=ds.crs,
            transform=window_transform(win, ds.transform),
            photometric="RGB",
        )
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst
