"""Windows, footprints and coverage, with an exact stand-in detector (bright blobs) instead of the model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from app.detection import pipeline
from app.detection.imaging import EmptyImageError
from app.detection.pipeline import RegionError, detect_scene, plan_windows, validate_footprint
from app.detection.raster import open_scene
from tests.support.geodata import BlobDetector, blob_scene, ground_distance_m, make_geotiff

CENTRES = ((100.0, 80.0), (250.0, 200.0), (330.0, 60.0))


def _footprint(gs: object, x0: float, y0: float, x1: float, y1: float) -> dict:
    ring = gs.pixel_to_lonlat(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]))
    return {"type": "Polygon", "coordinates": [ring.tolist()]}


def test_windows_cover_region_and_cores_partition_it() -> None:
    plans = plan_windows((10, 20, 1000, 700), 300, 64)
    assert len(plans) > 4
    xs = np.arange(10, 1010, 7) + 0.5
    ys = np.arange(20, 720, 7) + 0.5
    for x in xs:
        for y in ys:
            owners = [p for p in plans if p.core[0] <= x < p.core[1] and p.core[2] <= y < p.core[3]]
            assert len(owners) == 1
            c, r, w, h = owners[0].window
            assert c <= x < c + w and r <= y < r + h


@pytest.mark.parametrize(
    "kw", [dict(crs="utm"), dict(crs="wgs84"), dict(crs="utm", bits=16), dict(crs="wgs84", bits=16, bands="BGRN")]
)
def test_blobs_land_at_their_map_positions(tmp_path: Path, kw: dict) -> None:
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5, **kw)
    with open_scene(gs.path) as scene:
        out = detect_scene(BlobDetector(), scene)
    assert len(out.detections) == 3 and out.gsd_source == "geotransform"
    assert out.gsd_m == pytest.approx(0.5, rel=1e-3)
    truth = gs.pixel_to_lonlat(np.array(CENTRES))
    found = np.array([np.mean(d.obb_lonlat, axis=0) for d in out.detections])
    for t in truth:
        err = ground_distance_m(np.repeat(t[None], len(found), 0), found).min()
        assert err < 0.5 * 0.5  # well inside one pixel


def test_request_gsd_overrides_geotransform(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5)
    with open_scene(gs.path) as scene:
        out = detect_scene(BlobDetector(), scene, gsd_m=0.3)
    assert out.gsd_m == 0.3 and out.gsd_source == "request"


def test_small_windows_find_each_blob_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    centres = tuple((float(x), float(y)) for x in range(40, 400, 45) for y in range(30, 300, 40))
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=centres), 0.5)
    monkeypatch.setattr(pipeline, "WINDOW_WORK_PX", 100)
    det = BlobDetector()
    with open_scene(gs.path) as scene:
        out = detect_scene(det, scene, gsd_m=0.4)  # no working GSD on the stand-in: windows of 100 px
    assert det.calls > 4
    assert len(out.detections) == len(centres)


def test_nodata_blobs_are_dropped(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5, nodata_right=100)
    with open_scene(gs.path) as scene:
        out = detect_scene(BlobDetector(), scene)
    assert len(out.detections) == 2  # the blob at x=330 lies in the nodata strip


def test_footprint_counts_inside_reads_only_its_window_and_reports_coverage(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5)
    fp = validate_footprint(_footprint(gs, 50, 40, 200, 150))  # holds the first blob only
    with open_scene(gs.path) as scene:
        out = detect_scene(BlobDetector(), scene, footprint=fp, margin_m=10)
    assert len(out.detections) == 1
    c, r, w, h = out.region.window
    assert (c, r) == pytest.approx((30, 20), abs=1) and (w, h) == pytest.approx((190, 150), abs=2)
    assert out.coverage is not None
    assert out.coverage["share"] == pytest.approx(1.0, abs=0.01)
    assert not out.coverage["nodata_cut"] and not out.coverage["edge_cut"]


def test_footprint_half_nodata_and_off_the_edge(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5, nodata_right=100)
    fp = _footprint(gs, 250, 0, 350, 100)  # half of it in the nodata strip (x >= 300)
    with open_scene(gs.path) as scene:
        out = detect_scene(BlobDetector(), scene, footprint=fp)
    assert out.coverage["share"] == pytest.approx(0.5, abs=0.02)
    assert out.coverage["nodata_cut"] and not out.coverage["edge_cut"]
    fp = _footprint(gs, 300, 100, 500, 200)  # half beyond the right edge (x >= 400), the rest nodata
    with open_scene(gs.path) as scene, pytest.raises(EmptyImageError, match="no valid pixels"):
        detect_scene(BlobDetector(), scene, footprint=fp)  # nothing seen of the footprint: no observation of zero
    fp = _footprint(gs, 250, 100, 450, 200)  # a quarter valid, half nodata, a quarter beyond the edge
    with open_scene(gs.path) as scene:
        out = detect_scene(BlobDetector(), scene, footprint=fp)
    assert out.coverage["share"] == pytest.approx(0.25, abs=0.02)
    assert out.coverage["edge_cut"] and out.coverage["in_scene_share"] == pytest.approx(0.75, abs=0.02)


def test_footprint_outside_the_scene(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5)
    with open_scene(gs.path) as scene, pytest.raises(RegionError):
        detect_scene(BlobDetector(), scene, footprint=_footprint(gs, 1000, 1000, 1100, 1100))


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"type": "Point", "coordinates": [1, 2]},
        {"type": "Polygon", "coordinates": []},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [1, 1], [0, 0]]]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},  # bow tie
    ],
)
def test_invalid_footprints(bad: object) -> None:
    with pytest.raises(ValueError):
        validate_footprint(bad)


def test_footprint_ring_is_closed() -> None:
    fp = validate_footprint({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]})
    assert fp["coordinates"][0][0] == fp["coordinates"][0][-1]


def test_a_plain_image_gets_an_estimated_gsd_from_its_objects(tmp_path: Path) -> None:
    from io import BytesIO

    from PIL import Image

    from app.detection.gsd_estimate import RAILCAR_LENGTH_M, box_sides

    centres = tuple((float(x), float(y)) for x in range(40, 400, 60) for y in (60.0, 160.0))
    buf = BytesIO()
    Image.fromarray(blob_scene(centres=centres)).save(buf, format="PNG")
    det = BlobDetector()
    det.info = SimpleNamespace(working_gsd_m=0.4)  # so the estimate calls for resampling
    with open_scene(buf.getvalue()) as scene:
        out = detect_scene(det, scene, estimate=True)
    assert out.gsd_source == "estimated" and det.calls == 2  # the first pass, then the counted one
    long_px = np.median([box_sides(d)[0] for d in BlobDetector().detect(blob_scene(centres=centres)).detections])
    assert out.gsd_m == pytest.approx(RAILCAR_LENGTH_M / long_px, rel=1e-3)
    assert len(out.detections) == len(centres)
    with open_scene(buf.getvalue()) as scene:
        plain = detect_scene(BlobDetector(), scene)
    assert plain.gsd_m is None and plain.gsd_source is None


def test_a_known_gsd_is_never_estimated(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5)
    det = BlobDetector()
    with open_scene(gs.path) as scene:
        out = detect_scene(det, scene, estimate=True)
    assert out.gsd_source == "geotransform" and det.calls == 1


def test_the_service_setting_switches_the_estimate() -> None:
    from io import BytesIO

    from PIL import Image

    from app.core.settings import Settings
    from app.usecases.scenes import analyse_with_settings

    centres = tuple((float(x), float(y)) for x in range(40, 400, 60) for y in (60.0, 160.0))
    buf = BytesIO()
    Image.fromarray(blob_scene(centres=centres)).save(buf, format="PNG")
    on = analyse_with_settings(BlobDetector(), buf.getvalue(), Settings())
    assert on.geo is not None and on.geo["gsd_source"] == "estimated" and on.gsd_m is not None
    off = analyse_with_settings(BlobDetector(), buf.getvalue(), Settings(estimate_gsd=False))
    assert off.gsd_m is None and off.geo is None
    given = analyse_with_settings(BlobDetector(), buf.getvalue(), Settings(), gsd_m=0.5)
    assert given.gsd_m == 0.5 and given.geo is not None and given.geo["gsd_source"] == "request"
    # the facility's GSD saves the estimating pass (one network pass instead of two) and loses to the request's
    det = BlobDetector()
    borrowed = analyse_with_settings(det, buf.getvalue(), Settings(), facility_gsd_m=0.45)
    assert borrowed.gsd_m == 0.45 and borrowed.geo is not None and borrowed.geo["gsd_source"] == "facility"
    assert det.calls == 1
    assert (
        analyse_with_settings(BlobDetector(), buf.getvalue(), Settings(), gsd_m=0.5, facility_gsd_m=0.45).gsd_m == 0.5
    )


def test_a_first_pass_that_calls_for_no_resampling_is_the_counted_one() -> None:
    few = BlobDetector()  # three blobs: too few votes for an estimate
    with open_scene(_png(blob_scene(centres=CENTRES))) as scene:
        out = detect_scene(few, scene, estimate=True)
    assert out.gsd_m is None and out.gsd_source is None and few.calls == 1 and len(out.detections) == len(CENTRES)
    many = tuple((float(x), float(y)) for x in range(40, 400, 60) for y in (60.0, 160.0))
    near = BlobDetector()
    near.info = SimpleNamespace(working_gsd_m=0.88)  # what the blobs imply, within 2%
    with open_scene(_png(blob_scene(centres=many))) as scene:
        out = detect_scene(near, scene, estimate=True)
    assert out.gsd_source == "estimated" and near.calls == 1 and len(out.detections) == len(many)


def _png(image: np.ndarray) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
