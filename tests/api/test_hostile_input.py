"""Hostile and broken input: the corpus in ``tests/data/bad_inputs`` (made by its ``make_corpus.py``), size limits
enforced while streaming, unknown fields, and the time-zone rule.

Decisions for the valid-but-awkward files (also in the README):

- CMYK JPEG: accepted, converted to RGB (cyan ink -> (0, 255, 255)).
- Palette PNG: accepted, palette -> RGB (exact colours).
- 16-bit grey PNG: accepted, scaled by its apparent bit depth (12-bit data: 4095 -> 255), replicated to RGB grey.
- RGBA PNG: accepted, colour premultiplied by alpha (transparent pixels are black, as GeoTIFF nodata is) and fully
  transparent pixels are invalid (no detection is kept whose centre lies there).
- EXIF-rotated JPEG: accepted, the EXIF orientation is applied before detection (and coordinates are of the
  oriented image).
- PNG + ZIP polyglot: accepted as the PNG it starts with (the format is decided by content; trailing bytes are
  ignored; originals are archived, never served back).
- HTML + PNG polyglot: refused 415 (its first bytes are HTML, not an image signature).
- A PNG named ``.tif`` (and sent as ``image/tiff``): accepted as PNG (content decides, not name or type).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from tests.support import ADMIN_KEY, DATA_DIR
from tests.support.fakes import RecordingFakeDetector

BAD = DATA_DIR / "bad_inputs"


def _facility(client: Any) -> None:
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201


def _upload(client: Any, name: str, data: bytes, content_type: str = "image/png", **form: str) -> Any:
    fields = {"captured_at": "2024-05-01T10:30:00Z", **form}
    return client.post("/v1/facilities/yard/images", data=fields, files={"file": (name, data, content_type)})


def _n_obs(client: Any) -> int:
    return client.get("/v1/facilities/yard").json()["observation_count"]


def _archived(archive: Path) -> list[Path]:
    return [p for p in archive.rglob("*") if p.is_file() and p.parent.name != "tmp"]


@pytest.fixture
def fake() -> RecordingFakeDetector:
    return RecordingFakeDetector()


@pytest.fixture
def api(make_client: Callable[..., Any], fake: RecordingFakeDetector) -> Any:
    client = make_client(detector=fake)
    _facility(client)
    return client


# ------------------------------------------------------------------------------------------- the corpus

REFUSED = [  # file, status, words the reason must contain
    ("zero_bytes.png", 422, ["empty"]),
    ("truncated.jpg", 422, ["truncated"]),
    ("truncated.png", 422, ["truncated"]),
    ("truncated.tif", 422, ["tiff", "cannot be read"]),
    ("wrong_magic.png", 415, ["not a recognised image", "jpeg, png or tiff"]),
    ("gif_named.jpg", 415, ["gif"]),
    ("header_100k.png", 413, ["pixels", "geotiff", "window"]),
    ("header_100k.tif", 413, ["100000x100000", "wagon_max_scene_pixels"]),
    ("polyglot_html_png.png", 415, ["not a recognised image"]),
    ("ztxt_bomb.png", 422, ["too large"]),
    ("strip_1x100000.png", 422, ["1x100000", "aspect ratio", "50:1"]),
    ("strip_100000x1.png", 422, ["100000x1", "aspect ratio"]),
    ("strip_2x48000.jpg", 422, ["2x48000", "aspect ratio"]),
]


def test_corpus_is_complete_and_small() -> None:
    names = {p.name for p in BAD.iterdir() if p.suffix != ".py"}
    assert names == {n for n, *_ in REFUSED} | set(ACCEPTED)
    assert all(p.stat().st_size < 16 * 1024 for p in BAD.iterdir() if p.suffix != ".py")


@pytest.mark.parametrize("name, status, words", REFUSED)
def test_bad_file_is_refused_with_reason(
    api: Any, fake: RecordingFakeDetector, settings: Any, name: str, status: int, words: list[str]
) -> None:
    r = _upload(api, name, (BAD / name).read_bytes())
    assert r.status_code == status, r.text
    detail = r.json()["detail"].lower()
    for w in words:
        assert w in detail, detail
    assert _n_obs(api) == 0 and fake.calls == 0
    assert _archived(settings.archive_dir) == []  # a refused file is not kept


def _halves(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    n = a.shape[axis] // 2
    first, second = np.split(a, [n], axis=axis)
    return first.reshape(-1, 3).mean(0), second.reshape(-1, 3).mean(0)


def _cmyk(a: np.ndarray) -> None:
    left, right = _halves(a, 1)
    assert np.allclose(left, (0, 255, 255), atol=3) and np.allclose(right, (255, 0, 255), atol=3)


def _palette(a: np.ndarray) -> None:
    assert a.shape == (8, 16, 3)
    assert (a[:, :8] == (255, 0, 0)).all() and (a[:, 8:] == (0, 255, 0)).all()


def _grey16(a: np.ndarray) -> None:
    assert a.shape == (8, 64, 3) and (a[..., 0] == a[..., 2]).all()
    assert a[0, 0, 0] == 0 and a[0, -1, 0] == 255 and 120 <= a[0, 32, 0] <= 135  # 12-bit range -> 0..255


def _rgba(a: np.ndarray) -> None:
    assert (a[:, :8] == 0).all() and (a[:, 8:] == (0, 255, 0)).all()  # hidden red never reaches the detector


def _exif(a: np.ndarray) -> None:
    assert a.shape == (64, 32, 3)  # stored 64 x 32, shown rotated: 32 wide, 64 high
    top, bottom = _halves(a, 0)
    assert np.allclose(top, (255, 0, 0), atol=8) and np.allclose(bottom, (0, 0, 255), atol=8)


def _noise16(a: np.ndarray) -> None:
    assert a.shape == (16, 16, 3) and a.std() > 40


ACCEPTED: dict[str, tuple[str, Callable[[np.ndarray], None]]] = {  # file -> (format stored, check of the pixels)
    "cmyk.jpg": ("JPEG", _cmyk),
    "palette.png": ("PNG", _palette),
    "grey16.png": ("PNG", _grey16),
    "rgba.png": ("PNG", _rgba),
    "exif_rotated.jpg": ("JPEG", _exif),
    "polyglot_png_zip.png": ("PNG", _noise16),
    "png_named.tif": ("PNG", _noise16),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_awkward_valid_file_is_accepted_and_converted(api: Any, fake: RecordingFakeDetector, name: str) -> None:
    fmt, check = ACCEPTED[name]
    declared = "image/tiff" if name.endswith(".tif") else "application/octet-stream"
    r = _upload(api, name, (BAD / name).read_bytes(), content_type=declared)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["image"]["format"] == fmt
    seen = fake.images[-1]
    assert (body["image"]["width"], body["image"]["height"]) == (seen.shape[1], seen.shape[0])
    check(seen)


def test_detection_on_transparent_pixels_is_dropped(make_client: Callable[..., Any]) -> None:
    from tests.support.images import encode_image

    rgba = np.full((32, 32, 4), 255, np.uint8)
    rgba[12:20, 12:20, 3] = 0  # a transparent hole in the middle
    client = make_client(detector=RecordingFakeDetector())  # always detects at the image centre
    _facility(client)
    r = _upload(client, "c.png", encode_image(rgba, "PNG"))
    assert r.status_code == 201 and r.json()["counts"]["railcar"] == 0
    rgba[..., 3] = 255  # the same image, opaque: the detection is kept
    r = _upload(client, "c.png", encode_image(rgba, "PNG"), captured_at="2024-05-02T10:30:00Z")
    assert r.status_code == 201 and r.json()["counts"]["railcar"] == 1


# ------------------------------------------------------------------------------------------- pixel limits


def test_png_over_max_pixels_points_to_geotiff(make_client: Callable[..., Any]) -> None:
    client = make_client(detector=RecordingFakeDetector(), max_pixels=1000)
    _facility(client)
    r = _upload(client, "p.png", (BAD / "png_named.tif").read_bytes())  # 16 x 16 = 256: under the limit
    assert r.status_code == 201
    big = (BAD / "grey16.png").read_bytes()  # 64 x 8 = 512
    client2 = make_client(detector=RecordingFakeDetector(), max_pixels=500)  # same database: the yard exists
    r = _upload(client2, "g.png", big)
    assert r.status_code == 413 and "GeoTIFF" in r.json()["detail"] and "512" in r.json()["detail"]


def test_tiff_over_max_pixels_is_read_window_by_window(make_client: Callable[..., Any]) -> None:
    from tests.support.images import encode_image, gradient_rgb

    fake = RecordingFakeDetector()
    client = make_client(detector=fake, max_pixels=100)  # JPEG/PNG limit; TIFF scenes are windowed instead
    _facility(client)
    r = _upload(client, "t.tif", encode_image(gradient_rgb(64, 48), "TIFF"), content_type="image/tiff")
    assert r.status_code == 201, r.text
    assert r.json()["image"]["format"] == "TIFF" and fake.calls == 1


# ------------------------------------------------------------------------------------------- body size


async def _asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: Any, path: str) -> tuple[int, int]:
    """Call the ASGI app directly; return (status, bytes of body the app pulled)."""
    pulled = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    return status, pulled


def test_declared_content_length_over_limit_is_refused_without_reading(make_client: Callable[..., Any]) -> None:
    client = make_client(max_upload_mb=0.01)
    _facility(client)

    def endless() -> Any:
        while True:
            yield b"x" * 65536

    headers = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"1000000000000")]
    status, pulled = anyio.run(_asgi, client.app, headers, endless(), "/v1/facilities/yard/images")
    assert status == 413 and pulled == 0


def test_chunked_multipart_over_limit_is_refused_while_streaming(make_client: Callable[..., Any]) -> None:
    client = make_client(max_upload_mb=0.01)  # whole-request limit: 0.01 MiB + 1 MiB of multipart allowance
    _facility(client)
    limit = client.app.state.runtime.settings.max_upload_bytes + 1024 * 1024
    head = (
        b'--b\r\nContent-Disposition: form-data; name="captured_at"\r\n\r\n2024-05-01T10:30:00Z\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n"
    )

    def body() -> Any:  # no Content-Length: an endless file part
        yield head
        while True:
            yield b"\x00" * 65536

    headers = [
        (b"content-type", b"multipart/form-data; boundary=b"),
        (b"transfer-encoding", b"chunked"),
        (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
    ]
    status, pulled = anyio.run(_asgi, client.app, headers, body(), "/v1/facilities/yard/images")
    assert status == 413  # not 400 ("error parsing the body"): the middleware answered
    assert limit < pulled <= limit + 65536 + len(head)  # stopped at the first chunk over the limit
    assert _n_obs(client) == 0


def test_chunked_upload_through_http_client_over_limit(make_client: Callable[..., Any]) -> None:
    client = make_client(max_upload_mb=0.01)
    _facility(client)
    r = client.post(
        "/v1/facilities/yard/images",
        data={"captured_at": "2024-05-01T10:30:00Z"},
        files={"file": ("x.png", b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024 * 1024), "image/png")},
    )
    assert r.status_code == 413 and "WAGON_MAX_UPLOAD_MB" in r.json()["detail"]


# ------------------------------------------------------------------------------------------- unknown fields


def test_unknown_form_field_is_named(api: Any) -> None:
    png = (BAD / "png_named.tif").read_bytes()
    r = _upload(api, "c.png", png, gsd="0.5")  # misspelt gsd_m: must not silently mean "no GSD"
    assert r.status_code == 422 and "gsd" in r.json()["detail"] and "unknown form field" in r.json()["detail"]
    assert _n_obs(api) == 0


def test_unknown_query_parameter_is_named(api: Any) -> None:
    png = (BAD / "png_named.tif").read_bytes()
    r = api.post(
        "/v1/facilities/yard/images?gsd_meters=0.5",
        data={"captured_at": "2024-05-01T10:30:00Z"},
        files={"file": ("c.png", png, "image/png")},
    )
    assert r.status_code == 422 and "gsd_meters" in r.json()["detail"]
    r = api.get("/v1/facilities/yard/observations", params={"since": "2024-01-01T00:00:00Z"})
    assert r.status_code == 422 and "since" in r.json()["detail"]  # this list takes start/end
    assert api.get("/v1/facilities/yard/observations", params={"start": "2024-01-01T00:00:00Z"}).status_code == 200
    assert _n_obs(api) == 0


@pytest.mark.parametrize(
    "method, path, body, field",
    [
        ("post", "/v1/facilities", {"id": "x", "name": "X", "kind": "rail", "colour": "red"}, "colour"),
        ("patch", "/v1/facilities/yard", {"name": "Y", "nmae": "typo"}, "nmae"),
        ("put", "/v1/facilities/yard/alerts", {"score": 3, "scroe": 2}, "scroe"),
        (
            "post",
            "/v1/facilities/yard/observations",
            {"observations": [{"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": 1}, "note": "x"}]},
            "note",
        ),
    ],
)
def test_unknown_json_field_is_named(api: Any, method: str, path: str, body: dict, field: str) -> None:
    r = getattr(api, method)(path, json=body)
    assert r.status_code == 422 and field in r.text


# ------------------------------------------------------------------------------------------- time zones


@pytest.mark.parametrize(
    "value, words",
    [
        ("2024-05-01T10:30:00", ["no timezone"]),
        ("2024-05-01", ["no timezone"]),
        ("0001-01-01T00:00:00+01:00", ["out of range"]),
        ("9999-12-31T23:59:59-01:00", ["out of range"]),
        ("2024-13-01T00:00:00Z", ["iso 8601"]),
    ],
)
def test_times_need_a_zone_and_must_exist_in_utc(api: Any, value: str, words: list[str]) -> None:
    png = (BAD / "png_named.tif").read_bytes()
    r = _upload(api, "c.png", png, captured_at=value)
    assert r.status_code == 422
    for w in words:
        assert w in r.json()["detail"].lower()
    r = api.get("/v1/facilities/yard/observations", params={"start": value})
    assert r.status_code == 422
    csv = f"captured_at,railcar\n{value},3\n"
    r = api.post("/v1/facilities/yard/observations", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 422 and "line 2" in r.json()["detail"]
    assert _n_obs(api) == 0


def _far_future() -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(days=2)).isoformat()


@pytest.mark.parametrize(
    "value, words",
    [
        ("0001-01-01T00:00:00Z", ["before 1960-01-01", "wagon_capture_earliest"]),
        ("1959-12-31T23:59:59Z", ["before 1960-01-01"]),
        ("9999-12-31T23:59:59Z", ["in the future", "wagon_capture_max_future_days"]),
        (_far_future(), ["in the future"]),
    ],
)
def test_capture_times_must_be_plausible(api: Any, fake: RecordingFakeDetector, value: str, words: list[str]) -> None:
    png = (BAD / "png_named.tif").read_bytes()
    r = _upload(api, "c.png", png, captured_at=value)
    assert r.status_code == 422, r.text
    for w in words:
        assert w in r.json()["detail"].lower()
    body = {"observations": [{"captured_at": value, "counts": {"railcar": 3}}]}
    r = api.post("/v1/facilities/yard/observations", json=body)
    assert r.status_code == 422 and "observations[0]" in r.json()["detail"] and words[0] in r.json()["detail"].lower()
    csv = f"captured_at,railcar\n{value},3\n"
    r = api.post("/v1/facilities/yard/observations", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 422 and "line 2" in r.json()["detail"] and words[0] in r.json()["detail"].lower()
    assert _n_obs(api) == 0 and fake.calls == 0
    assert api.get("/v1/facilities/yard/observations", params={"start": value}).status_code == 200  # queries: any


def test_capture_window_is_configurable(make_client: Callable[..., Any]) -> None:
    from datetime import UTC, datetime

    client = make_client(capture_earliest=datetime(1950, 1, 1, tzinfo=UTC), capture_max_future_days=3)
    _facility(client)
    for value in ("1955-06-01T00:00:00Z", _far_future()):
        body = {"observations": [{"captured_at": value, "counts": {"railcar": 3}}]}
        assert client.post("/v1/facilities/yard/observations", json=body).status_code == 201


# ------------------------------------------------------------------------------------------- found by the fuzzer


def test_huge_observation_id_is_422_not_500(api: Any) -> None:
    for path in ("/v1/observations/{}", "/v1/observations/{}/overlay.png", "/v1/observations/{}/detections.geojson"):
        r = api.get(path.format(2**70))
        assert r.status_code == 422 and "observation_id" in r.json()["detail"]
    assert api.get("/v1/observations/0").status_code == 422


@pytest.mark.parametrize(
    "method, path",
    [("post", "/v1/facilities"), ("patch", "/v1/facilities/yard"), ("put", "/v1/facilities/yard/alerts")],
)
def test_body_that_is_not_utf8_json_is_422(api: Any, method: str, path: str) -> None:
    r = getattr(api, method)(path, content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "cannot be parsed" in r.json()["detail"]


def test_422_shape_is_documented(api: Any) -> None:
    spec = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    out = spec["components"]["schemas"]["ValidationErrorOut"]
    assert out["properties"]["detail"]["type"] == "string" and "errors" in out["properties"]
    r = api.get("/v1/observations/abc")
    assert set(r.json()) == {"detail", "errors"} and r.json()["errors"][0]["loc"] == "observation_id"
    form = next(v for k, v in spec["components"]["schemas"].items() if k.startswith("Body_"))
    assert form["additionalProperties"] is False and set(form["properties"]) == {"file", "captured_at", "gsd_m"}


# ------------------------------------------------------------------------------------------- GSD


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "0.01", "11", "1e6"])
def test_request_gsd_must_be_finite_and_in_range(
    api: Any, fake: RecordingFakeDetector, settings: Any, value: str
) -> None:
    r = _upload(api, "c.png", (BAD / "png_named.tif").read_bytes(), gsd_m=value)
    assert r.status_code == 422, r.text
    assert "gsd_m" in r.json()["detail"] and "finite number between 0.05 and 10" in r.json()["detail"]
    assert _n_obs(api) == 0 and fake.calls == 0
    assert _archived(settings.archive_dir) == []


GEOREF_REFUSED = [  # GDAL-order transform, CRS, words the reason must contain
    ((1e6, 0, 620_000, 0, -1e6, 4_700_000), "EPSG:32652", ["geotransform", "1000000.0 m/px", "between 0.05 and 10"]),
    ((0.0, 0, 620_000, 0, 0.0, 4_700_000), "EPSG:32652", ["geotransform", "0.0 m/px"]),
    ((1e-5, 0, 10.0, 0, -1e-5, 89.99), "EPSG:4326", ["geotransform", "between 0.05 and 10"]),  # pole: 6 mm
    ((1e-5, 0, 500.0, 0, -1e-5, 200.0), "EPSG:4326", ["outside the earth", "longitudes"]),
    ((0.5, 0, 1e30, 0, -0.5, 1e30), "EPSG:32652", ["outside the earth"]),
]


@pytest.mark.parametrize("transform, crs, words", GEOREF_REFUSED)
def test_impossible_georeferencing_is_refused(
    api: Any, fake: RecordingFakeDetector, transform: tuple, crs: str, words: list[str]
) -> None:
    from tests.support.geodata import geotiff_bytes

    tif = geotiff_bytes(transform, crs)
    for form in ({}, {"gsd_m": "0.5"}):  # a request's GSD does not make a false geotransform true
        r = _upload(api, "g.tif", tif, content_type="image/tiff", **form)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"].lower()
        for w in words:
            assert w in detail, detail
    assert _n_obs(api) == 0 and fake.calls == 0


def test_plausible_georeferencing_is_accepted(api: Any) -> None:
    from tests.support.geodata import geotiff_bytes

    r = _upload(api, "g.tif", geotiff_bytes(), content_type="image/tiff")
    assert r.status_code == 201, r.text
    assert r.json()["image"]["gsd_m"] == 0.5 and r.json()["image"]["gsd_source"] == "geotransform"


# ------------------------------------------------------------------------------------------- blank images


def _blank_inputs() -> dict[str, bytes]:
    from tests.support.geodata import geotiff_bytes
    from tests.support.images import encode_image

    nan = np.full((3, 32, 32), np.nan, np.float32)
    return {
        "all nodata": geotiff_bytes(data=np.zeros((3, 32, 32), np.uint8), nodata=0),
        "all NaN": geotiff_bytes(data=nan),
        "all NaN, nodata set to another value": geotiff_bytes(data=nan, nodata=-9999),
        "fully transparent PNG": encode_image(np.zeros((32, 32, 4), np.uint8), "PNG"),
    }


@pytest.mark.parametrize("case", sorted(_blank_inputs()))
def test_image_without_valid_pixels_is_no_observation(api: Any, fake: RecordingFakeDetector, case: str) -> None:
    r = _upload(api, "blank.tif", _blank_inputs()[case], content_type="image/tiff")
    assert r.status_code == 422, r.text
    assert "no valid pixels" in r.json()["detail"]
    assert _n_obs(api) == 0 and fake.calls == 0


def test_partly_nan_raster_is_counted(api: Any) -> None:
    from tests.support.geodata import geotiff_bytes

    data = np.random.default_rng(1).uniform(0, 1000, (3, 32, 32)).astype(np.float32)
    data[:, :, :16] = np.nan
    r = _upload(api, "half.tif", geotiff_bytes(data=data), content_type="image/tiff")
    assert r.status_code == 201, r.text


def test_footprint_on_nodata_is_no_observation(api: Any, fake: RecordingFakeDetector) -> None:
    from tests.support.geodata import geotiff_bytes

    data = np.full((3, 400, 400), 120, np.uint8)
    data[:, 150:250, 150:250] = 0  # nodata exactly under the footprint, valid ground around it
    tif = geotiff_bytes(data=data, nodata=0)
    from app.detection.raster import Georef

    georef = Georef("EPSG:32652", (0.5, 0.0, 620_000.0, 0.0, -0.5, 4_700_000.0), geographic=False)
    ring = georef.pixel_to_lonlat(np.array([[160, 160], [240, 160], [240, 240], [160, 240], [160, 160]]))
    footprint = {"type": "Polygon", "coordinates": [ring.tolist()]}
    assert api.patch("/v1/facilities/yard", json={"footprint": footprint}).status_code == 200
    r = _upload(api, "hole.tif", tif, content_type="image/tiff")
    assert r.status_code == 422, r.text
    assert "no valid pixels" in r.json()["detail"] and "footprint" in r.json()["detail"]
    assert _n_obs(api) == 0 and fake.calls == 0


# ------------------------------------------------------------------------------------------- absurd counts


@pytest.mark.parametrize("cls, count, limit", [("railcar", 1_000_000, 5000), ("container", 20_001, 20000)])
def test_absurd_counts_are_refused_naming_the_row(api: Any, cls: str, count: int, limit: int) -> None:
    ok = {"captured_at": "2021-01-01T00:00:00Z", "counts": {cls: limit}}
    bad = {"captured_at": "2021-01-02T00:00:00Z", "counts": {cls: count}}
    r = api.post("/v1/facilities/yard/observations", json={"observations": [ok, bad]})
    assert r.status_code == 422 and f"observations[1]: count of {cls} must be between 0 and {limit}" in r.text
    csv = f"captured_at,{cls}\n2021-01-01T00:00:00Z,{limit}\n2021-01-02T00:00:00Z,{count}\n"
    r = api.post("/v1/facilities/yard/observations", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 422 and f"line 3: count of {cls} must be at most {limit}" in r.json()["detail"]
    assert _n_obs(api) == 0


def test_count_limits_are_configurable(make_client: Callable[..., Any]) -> None:
    client = make_client(max_railcars=20)
    _facility(client)
    body = {"observations": [{"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": 21}}]}
    assert client.post("/v1/facilities/yard/observations", json=body).status_code == 422
    body["observations"][0]["counts"]["railcar"] = 20
    assert client.post("/v1/facilities/yard/observations", json=body).status_code == 201


# ------------------------------------------------------------------------------------- bodies that broke the parser


def _post_raw(api: Any, path: str, body: bytes | str, content_type: str = "application/json") -> Any:
    return api.post(path, content=body, headers={"content-type": content_type})


IMPORTS = "/v1/facilities/yard/observations"

RAW_BODIES = [  # path, body, content type, words the reason must contain
    (IMPORTS, "captured_at,railcar\n2021-01-01T00:00:00Z," + "9" * 5000 + "\n", "text/csv", ["line 2", "at most"]),
    (
        IMPORTS,
        '{"observations": [{"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": ' + "9" * 4400 + "}}]}",
        "application/json",
        ["4400 digits"],
    ),
    (IMPORTS, "[" * 100_000, "application/json", ["nested too deeply"]),
    ("/v1/facilities", "[" * 100_000, "application/json", ["nested too deeply"]),
    (
        "/v1/facilities",
        '{"id": "x", "name": "X", "kind": "rail", "n": ' + "1" * 5000 + "}",
        "application/json",
        ["too many digits"],
    ),
]


@pytest.mark.parametrize("path, body, content_type, words", RAW_BODIES)
def test_bodies_the_parser_chokes_on_are_422(
    api: Any, path: str, body: str, content_type: str, words: list[str]
) -> None:
    r = _post_raw(api, path, body, content_type)
    assert r.status_code == 422, r.text
    for w in words:
        assert w in r.json()["detail"], r.json()["detail"]
    assert len(r.text) < 2000  # the 5,000 digits do not come back
    assert _n_obs(api) == 0 and api.get("/v1/facilities/x").status_code == 404


INVISIBLE = ["\\ud800", "\\u202e", "\\u2028", "\\u2029", "\\u00ad", "\\u200b", "\\t", "\\u0085"]


@pytest.mark.parametrize("escape", INVISIBLE)
def test_invisible_characters_are_refused_in_free_text(api: Any, escape: str) -> None:
    text = f'"a{escape}b"'  # a JSON string literal with the escape, as a client sends it
    bodies = [
        (
            "post",
            IMPORTS,
            '{"observations": [{"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": 1}, '
            f'"source": {text}}}]}}',
        ),
        ("post", "/v1/facilities", f'{{"id": "x", "name": {text}, "kind": "rail"}}'),
        ("patch", "/v1/facilities/yard", f'{{"name": {text}}}'),
        ("post", "/v1/keys", f'{{"role": "reader", "name": {text}}}'),
    ]
    for method, path, body in bodies:
        r = getattr(api, method)(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, r.text)
        assert "character" in r.json()["detail"] or "string" in r.json()["detail"].lower(), r.text
    csv = f"captured_at,railcar,source\n2021-01-01T00:00:00Z,1,a{json.loads(text)}b\n"
    r = _post_raw(api, IMPORTS, csv.encode("utf-8", "surrogatepass"), "text/csv")
    assert r.status_code == 422, r.text
    assert _n_obs(api) == 0 and api.get("/v1/facilities/x").status_code == 404
    assert api.get("/v1/facilities/yard").json()["name"] == "Yard"


# ------------------------------------------------------------------------------------------- fields given twice


@pytest.mark.parametrize("field", ["captured_at", "gsd_m"])
def test_form_field_given_twice_is_refused(api: Any, fake: RecordingFakeDetector, settings: Any, field: str) -> None:
    png = (BAD / "png_named.tif").read_bytes()
    fields: dict[str, Any] = {"captured_at": "2024-05-01T10:30:00Z", "gsd_m": "0.5"}
    fields[field] = [fields[field], "2024-05-02T10:30:00Z" if field == "captured_at" else "0.3"]
    r = api.post("/v1/facilities/yard/images", data=fields, files={"file": ("c.png", png, "image/png")})
    assert r.status_code == 422 and field in r.json()["detail"] and "more than once" in r.json()["detail"], r.text
    assert _n_obs(api) == 0 and fake.calls == 0 and _archived(settings.archive_dir) == []


def test_two_file_parts_are_refused(api: Any, fake: RecordingFakeDetector, settings: Any) -> None:
    png = (BAD / "png_named.tif").read_bytes()
    files = [
        ("file", ("a.png", png, "image/png")),
        ("file", ("b.png", (BAD / "palette.png").read_bytes(), "image/png")),
    ]
    r = api.post("/v1/facilities/yard/images", data={"captured_at": "2024-05-01T10:30:00Z"}, files=files)
    assert r.status_code == 422 and "file" in r.json()["detail"] and "more than once" in r.json()["detail"], r.text
    assert _n_obs(api) == 0 and fake.calls == 0 and _archived(settings.archive_dir) == []


@pytest.mark.parametrize(
    "method, path, body, key",
    [
        ("post", "/v1/facilities", '{"id": "x", "name": "X", "kind": "rail", "kind": "port"}', "kind"),
        ("patch", "/v1/facilities/yard", '{"name": "A", "name": "B"}', "name"),
        ("put", "/v1/facilities/yard/alerts", '{"score": 3, "score": 300}', "score"),
        ("post", "/v1/keys", '{"role": "reader", "role": "admin"}', "role"),
        (
            "post",
            IMPORTS,
            '{"observations": [{"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": 1, "railcar": 9}}]}',
            "railcar",
        ),
        ("post", IMPORTS, '{"observations": [], "observations": []}', "observations"),
    ],
)
def test_json_key_given_twice_is_refused(api: Any, method: str, path: str, body: str, key: str) -> None:
    r = getattr(api, method)(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert repr(key) in r.json()["detail"] or key in r.json()["detail"]
    assert "more than once" in r.json()["detail"]
    assert _n_obs(api) == 0 and api.get("/v1/facilities/x").status_code == 404
    assert api.get("/v1/facilities/yard").json()["name"] == "Yard"
    assert api.get("/v1/facilities/yard/alerts").json()["configured"] is False


def test_query_parameter_given_twice_is_refused(api: Any) -> None:
    r = api.get("/v1/facilities/yard/observations", params=[("limit", "1"), ("limit", "5")])
    assert r.status_code == 422 and "limit" in r.json()["detail"] and "more than once" in r.json()["detail"]


# ------------------------------------------------------------------------------------------- no internals in refusals


def test_refusal_names_no_path_or_library_internals(api: Any, settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    import hashlib

    data = (BAD / "truncated.tif").read_bytes()
    with caplog.at_level("WARNING", logger="app.detection.raster"):
        r = _upload(api, "t.tif", data, content_type="image/tiff")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "cannot be read" in detail and "damaged" in detail
    sha = hashlib.sha256(data).hexdigest()
    for leak in (sha[:12], str(settings.archive_dir), "originals", "/", "TIFFRead", "GDAL", "rasterio", "Errno"):
        assert leak not in detail, detail
    logged = [rec for rec in caplog.records if rec.name == "app.detection.raster"]
    assert logged and "failed" in logged[-1].getMessage()  # the library's own words are kept for the operator
