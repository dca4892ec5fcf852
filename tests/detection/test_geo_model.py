"""With the real model: synthetic wagon chips written as GeoTIFFs (UTM and WGS84, 8- and 16-bit, 4-band BGRN with
nodata) come back in the GeoJSON where the wagons are.

Two references. The wagons' true places are the chip's labels mapped to lon/lat; the model's own centre error
against them (a few pixels on this chip) is the same whether the chip is read as a plain array or as a GeoTIFF.
Where the model sees the same pixels (8-bit), every GeoJSON wagon lies within one pixel of the plain-array
detection mapped through the geotransform; with a 16-bit stretch the pixels differ a little and the median does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.detection.pipeline import detect_scene
from app.detection.raster import open_scene
from tests.support.geodata import ground_distance_m, label_centres, make_geotiff
from tests.support.images import first_busy_yard

pytestmark = pytest.mark.slow

PAD = (40, 30, 0, 0)  # left, top, right, bottom


@pytest.fixture(scope="module")
def yard() -> Any:
    """A held-out synthetic chip with 20-60 railcars."""
    return first_busy_yard(20, 60)


@pytest.fixture(scope="module")
def plain(detector: Any, yard: Any) -> dict[str, np.ndarray]:
    """Railcar centres found on the padded chip read as a plain array, and the label centres (scene pixels)."""
    h, w = yard.image.shape[:2]
    canvas = np.full((h + PAD[1], w + PAD[0], 3), 118, np.uint8)
    canvas[PAD[1] :, PAD[0] :] = yard.image
    result = detector.detect(canvas, gsd_m=yard.gsd_m)
    found = np.array([d.center for d in result.detections if d.class_name == "railcar"]).reshape(-1, 2)
    return {"found": found, "labels": label_centres(yard) + np.array(PAD[:2], np.float64)}


def _nearest_px(points: np.ndarray, candidates: np.ndarray, gsd: float) -> np.ndarray:
    """For each lon/lat point, the ground distance to the nearest candidate, in pixels."""
    return np.array([ground_distance_m(np.repeat(p[None], len(candidates), 0), candidates).min() for p in points]) / gsd


def _plain_label_error(plain: dict[str, np.ndarray]) -> tuple[float, float]:
    d = np.linalg.norm(plain["labels"][:, None] - plain["found"][None], axis=2).min(axis=1)
    return float(np.median(d)), float((d < 8).mean())


def test_utm_8bit_geojson_within_a_pixel(
    make_client: Callable[..., Any], detector: Any, yard: Any, plain: dict[str, np.ndarray], tmp_path: Path
) -> None:
    gs = make_geotiff(tmp_path / "utm.tif", yard.image, yard.gsd_m, pad=PAD, crs="utm", tiled=True)
    client = make_client(detector=detector)
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    r = client.post(
        "/v1/facilities/yard/images",
        files={"file": ("utm.tif", gs.path.read_bytes())},
        data={"captured_at": "2023-10-15T02:30:00Z"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["image"]["gsd_source"] == "geotransform"
    assert body["image"]["gsd_m"] == pytest.approx(yard.gsd_m, rel=1e-6)
    fc = client.get(f"/v1/observations/{body['id']}/detections.geojson").json()
    cars = np.array(
        [
            np.array(f["geometry"]["coordinates"][0][:4]).mean(axis=0)
            for f in fc["features"]
            if f["properties"]["class"] == "railcar"
        ]
    )
    assert len(cars) == len(plain["found"])
    # same pixels, same detections: each GeoJSON wagon within one pixel of the plain detection mapped to lon/lat
    assert _nearest_px(cars, gs.pixel_to_lonlat(plain["found"]), yard.gsd_m).max() < 1.0
    # and as close to the labelled wagons as the model ever is on this chip
    to_labels = _nearest_px(gs.pixel_to_lonlat(plain["labels"]), cars, yard.gsd_m)
    median, recall = _plain_label_error(plain)
    assert np.median(to_labels) <= median + 1.0 and (to_labels < 8).mean() >= recall - 0.05


@pytest.mark.parametrize(
    "kw",
    [dict(crs="wgs84", bits=16), dict(crs="utm", bits=16, bands="BGRN", nodata_right=100)],
    ids=["wgs84-16bit", "utm-16bit-bgrn-nodata"],
)
def test_16bit_and_4band_scenes(
    detector: Any, yard: Any, plain: dict[str, np.ndarray], tmp_path: Path, kw: dict[str, Any]
) -> None:
    gs = make_geotiff(tmp_path / "s.tif", yard.image, yard.gsd_m, pad=PAD, **kw)
    with open_scene(gs.path) as scene:
        out = detect_scene(detector, scene)
    assert out.gsd_m == pytest.approx(yard.gsd_m, rel=1e-3)
    cars_px = np.array([d.center for d in out.detections if d.class_name == "railcar"])
    cars = np.array([np.mean(d.obb_lonlat, axis=0) for d in out.detections if d.class_name == "railcar"])
    width = yard.image.shape[1] + PAD[0]
    reference, labels = plain["found"], plain["labels"]
    if kw.get("nodata_right"):
        edge = width - kw["nodata_right"]
        assert (cars_px[:, 0] < edge).all()  # nothing found on nodata
        reference, labels = reference[reference[:, 0] < edge - 8], labels[labels[:, 0] < edge - 8]
    assert np.median(_nearest_px(gs.pixel_to_lonlat(reference), cars, yard.gsd_m)) < 1.0
    to_labels = _nearest_px(gs.pixel_to_lonlat(labels), cars, yard.gsd_m)
    median, recall = _plain_label_error(plain)
    assert np.median(to_labels) <= median + 1.0 and (to_labels < 8).mean() >= recall - 0.1
