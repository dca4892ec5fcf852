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
