"""Reading imagery through rasterio: formats, band order, stretch, masks, geotransform GSD, map coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.detection.imaging import CorruptImageError, UnsupportedImageError
from app.detection.raster import Georef, metres_per_degree, open_scene, sniff_format
from tests.support.geodata import UTM_ORIGIN, blob_scene, make_geotiff
from tests.support.images import encode_image, gradient_rgb


def _write(path: Path, data: np.ndarray, **profile: object) -> Path:
    import rasterio

    base = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=str(data.dtype))
    base.update(profile)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
    return path


def test_sniff_format() -> None:
    assert sniff_format(b"II*\x00rest") == "TIFF"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"\x00\x00\x00\x0cjP  \r\n\x87\n") == "JP2"
    assert sniff_format(b"NITF02.10") == "NITF"
    assert sniff_format(b"hello") is None


def test_utm_geotiff_gsd_and_lonlat(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "a.tif", blob_scene(), 0.5, crs="utm")
    with open_scene(gs.path) as scene:
        assert scene.format == "TIFF" and scene.georef is not None
        assert scene.georef.crs == "EPSG:32652" and not scene.georef.geographic
        assert scene.native_gsd_m == pytest.approx(0.5)
        # the top-left corner is the origin; pixel -> lon/lat -> pixel round trip is exact
        ll = scene.georef.pixel_to_lonlat(np.array([[0.0, 0.0], [100.0, 80.0]]))
        assert 129 < ll[0, 0] < 132 and 42 < ll[0, 1] < 43
        back = scene.georef.lonlat_to_pixel(ll)
        np.testing.assert_allclose(back, [[0, 0], [100, 80]], atol=1e-6)
        assert scene.georef.pixel_to_crs(np.array([[0.0, 0.0]]))[0] == pytest.approx(UTM_ORIGIN)


def test_wgs84_gsd_converted_at_scene_centre(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "g.tif", blob_scene(), 0.5, crs="wgs84")
    with open_scene(gs.path) as scene:
        assert scene.georef is not None and scene.georef.geographic
        assert scene.native_gsd_m == pytest.approx(0.5, rel=1e-3)


def test_metres_per_degree_known_values() -> None:
    m_lon, m_lat = metres_per_degree(0.0)
    assert m_lon == pytest.approx(111_319.5, rel=1e-4) and m_lat == pytest.approx(110_574, rel=1e-4)
    m_lon60, _ = metres_per_degree(60.0)
    assert m_lon60 == pytest.approx(55_800, rel=2e-3)


def test_projected_feet_units_converted(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    data = np.zeros((1, 8, 8), np.uint8)
    path = _write(tmp_path / "ft.tif", data, crs="EPSG:2263", transform=from_origin(1_000_000, 200_000, 2.0, 2.0))
    with open_scene(path) as scene:  # New York State Plane, US survey feet
        assert scene.native_gsd_m == pytest.approx(2.0 * 0.3048006, rel=1e-5)


def test_band_order_from_colour_interpretation_bgrn(tmp_path: Path) -> None:
    rgb = gradient_rgb(32, 24)
    gs = make_geotiff(tmp_path / "b.tif", rgb, 0.5, bands="BGRN", describe=True)
    with open_scene(gs.path) as scene:
        assert scene.bands == "RGB from colour interpretation"
        assert scene.rgb_bands == (3, 2, 1)
        scene.prepare()
        out, valid = scene.read((0, 0, 32, 24))
        assert valid.all()
        np.testing.assert_array_equal(out, rgb)


def test_four_bands_without_interpretation_are_taken_as_bgrn(tmp_path: Path) -> None:
    rgb = gradient_rgb(32, 24)
    gs = make_geotiff(tmp_path / "b.tif", rgb, 0.5, bands="BGRN", describe=False)
    with open_scene(gs.path) as scene:
        assert "BGRN" in scene.bands
        scene.prepare()
        np.testing.assert_array_equal(scene.read((0, 0, 32, 24))[0], rgb)


def test_panchromatic_is_replicated(tmp_path: Path) -> None:
    data = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    with open_scene(_write(tmp_path / "p.tif", data)) as scene:
        assert scene.bands.startswith("panchromatic")
        scene.prepare()
        out, _ = scene.read((0, 0, 8, 8))
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        np.testing.assert_array_equal(out[..., 0], data[0])


@pytest.mark.parametrize("top", [2047, 4095, 65535])
def test_deep_data_percentile_stretch(tmp_path: Path, top: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, top + 1, size=(3, 64, 64)).astype(np.uint16)
    with open_scene(_write(tmp_path / "d.tif", data, photometric="RGB")) as scene:
        scene.prepare()
        out, _ = scene.read((0, 0, 64, 64))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    # monotonic per band: a brighter sample never maps darker
    order = np.argsort(data[0].ravel())
    assert (np.diff(out[..., 0].ravel()[order].astype(int)) >= 0).all()


def test_eight_bit_used_as_is_unless_asked(tmp_path: Path) -> None:
    data = np.full((3, 16, 16), 100, np.uint8)
    data[:, :8] = 120
    path = _write(tmp_path / "e.tif", data, photometric="RGB")
    with open_scene(path) as scene:
        scene.prepare()
        assert set(np.unique(scene.read((0, 0, 16, 16))[0])) == {100, 120}
    with open_scene(path, stretch_8bit=True) as scene:
        scene.prepare()
        assert set(np.unique(scene.read((0, 0, 16, 16))[0])) == {0, 255}


def test_nodata_is_masked_and_excluded_from_stretch(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "n.tif", blob_scene(100, 60), 0.5, bits=16, nodata_right=30)
    with open_scene(gs.path) as scene:
        scene.prepare()
        out, valid = scene.read((0, 0, 100, 60))
    assert not valid[:, 70:].any() and valid[:, :70].all()
    assert (out[:, 70:] == 0).all()


def test_alpha_band_is_masked(tmp_path: Path) -> None:
    from rasterio.enums import ColorInterp

    data = np.full((4, 10, 10), 200, np.uint8)
    data[3, :, :5] = 0  # transparent left half
    import rasterio

    path = tmp_path / "alpha.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=10, height=10, count=4, dtype="uint8", photometric="RGB", alpha="YES"
    ) as dst:
        dst.write(data)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    with open_scene(path) as scene:
        assert scene.bands == "RGB from colour interpretation"
        scene.prepare()
        _, valid = scene.read((0, 0, 10, 10))
    assert not valid[:, :5].any() and valid[:, 5:].all()


def test_cog_and_jpeg2000_are_read(tmp_path: Path) -> None:
    import rasterio

    rgb = gradient_rgb(64, 48)
    src = make_geotiff(tmp_path / "src.tif", rgb, 0.5)
    with rasterio.open(src.path) as ds:
        profile = ds.profile
        data = ds.read()
    for driver, name, fmt in (("COG", "c.tif", "TIFF"), ("JP2OpenJPEG", "j.jp2", "JP2")):
        prof = dict(profile, driver=driver)
        prof.pop("photometric", None)
        if driver == "JP2OpenJPEG":
            prof.update(QUALITY=100, REVERSIBLE="YES")
        with rasterio.open(tmp_path / name, "w", **prof) as dst:
            dst.write(data)
        with open_scene(tmp_path / name) as scene:
            assert scene.format == fmt and scene.native_gsd_m == pytest.approx(0.5)
            scene.prepare()
            np.testing.assert_array_equal(scene.read((0, 0, 64, 48))[0], rgb)


def test_jpeg_keeps_exif_orientation(tmp_path: Path) -> None:
    im = Image.fromarray(gradient_rgb(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode_image(im, "JPEG", exif=exif)
    with open_scene(data) as scene:
        assert (scene.width, scene.height) == (20, 40) and scene.georef is None and scene.native_gsd_m is None


def test_corrupt_and_unsupported(tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "ok.tif", blob_scene(), 0.5, tiled=True)
    data = gs.path.read_bytes()
    with pytest.raises(CorruptImageError):
        with open_scene(data[: len(data) // 2]) as scene:
            scene.prepare()
    with pytest.raises(UnsupportedImageError):
        with open_scene(b"GIF89a" + b"\x00" * 100):
            pass


def test_georef_dict_round_trip() -> None:
    g = Georef("EPSG:32652", (0.5, 0.0, 1.0, 0.0, -0.5, 2.0), geographic=False)
    assert Georef.from_dict(g.to_dict()) == g


def test_nitf_is_read(tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(0, 255, (3, 48, 64)).astype(np.uint8)
    path = tmp_path / "s.ntf"
    with rasterio.open(
        path,
        "w",
        driver="NITF",
        width=64,
        height=48,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=from_origin(130.45, 42.43, 1e-5, 1e-5),
        ICORDS="G",
        IREP="RGB",
    ) as dst:
        dst.write(data)
    with open_scene(path.read_bytes()) as scene:
        assert scene.format == "NITF" and scene.georef is not None and scene.georef.geographic
        assert scene.native_gsd_m is not None and 0.5 < scene.native_gsd_m < 1.5  # IGEOLO keeps arc-seconds only
        scene.prepare()
        np.testing.assert_array_equal(scene.read((0, 0, 64, 48))[0], np.moveaxis(data, 0, 2))
