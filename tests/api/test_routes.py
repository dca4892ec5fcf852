"""API v1 end to end through ``TestClient`` on a temporary database (SQLite, and PostgreSQL when configured).

Every refusal must be a 4xx with a JSON ``detail`` string and must leave the observation count unchanged.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import numpy as np
import pytest

from app import database as db
from tests.support.images import crafted_png_header, encode_image, gradient_rgb
from tests.support.network import NetworkAccessError

CSV = "text/csv"
pytestmark = pytest.mark.databases("sqlite", "postgresql")  # each database test runs on both


def _facility(client: Any, fid: str = "yard", kind: str = "rail") -> None:
    r = client.post("/v1/facilities", json={"id": fid, "name": f"Facility {fid}", "kind": kind})
    assert r.status_code == 201, r.text


def _n_obs(client: Any) -> int:
    return sum(f["observation_count"] for f in client.get("/v1/facilities").json()["facilities"])


def _refused(response: Any, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    for w in words:
        assert w.lower() in body["detail"].lower(), body["detail"]
    return body


def _upload(client: Any, data: bytes, fid: str = "yard", name: str = "chip.png", **form: Any) -> Any:
    fields = {"captured_at": "2024-05-01T10:30:00Z", **form}
    fields = {k: v for k, v in fields.items() if v is not None}
    return client.post(f"/v1/facilities/{fid}/images", data=fields, files={"file": (name, data, "image/png")})


# ------------------------------------------------------------------------------------------- facilities


def test_facilities_crud(client: Any) -> None:
    r = client.post("/v1/facilities", json={"id": "tumangang", "name": "Tumangang yard", "kind": "rail"})
    assert r.status_code == 201
    assert r.json()["id"] == "tumangang" and r.json()["observation_count"] == 0
    _refused(client.post("/v1/facilities", json={"id": "tumangang", "name": "again", "kind": "port"}), 409, "exists")
    assert client.get("/v1/facilities/tumangang").json()["kind"] == "rail"
    _refused(client.get("/v1/facilities/nowhere"), 404, "not found")
    assert [f["id"] for f in client.get("/v1/facilities").json()["facilities"]] == ["tumangang"]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"id": "Bad Id", "name": "x", "kind": "rail"}, ["id"]),
        ({"id": "-lead", "name": "x", "kind": "rail"}, ["id"]),
        ({"id": "a" * 65, "name": "x", "kind": "rail"}, ["id"]),
        ({"id": "ok", "name": "x", "kind": "airport"}, ["kind"]),
        ({"id": "ok", "name": "x", "kind": "rail", "colour": "red"}, ["colour"]),
        ({"id": "ok", "kind": "rail"}, ["name"]),
    ],
)
def test_facility_validation(client: Any, body: dict, words: list[str]) -> None:
    _refused(client.post("/v1/facilities", json=body), 422, *words)
    assert client.get("/v1/facilities").json() == {"facilities": [], "next_cursor": None}


# ------------------------------------------------------------------------------------------- imports


def test_import_json_then_series(client: Any) -> None:
    _facility(client)
    obs = [{"captured_at": f"2021-01-{d:02d}T00:00:00Z", "counts": {"railcar": 10 + d % 3}} for d in range(1, 11)]
    obs.append(
        {"captured_at": "2021-01-11T09:00:00+09:00", "counts": {"railcar": 60, "container": 3}, "source": "analyst"}
    )
    r = client.post("/v1/facilities/yard/observations", json={"observations": obs})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["imported"] == 11 and len(body["observations"]) == 11
    series = client.get("/v1/facilities/yard/observations").json()["observations"]
    assert [o["captured_at"] for o in series][:2] == ["2021-01-01T00:00:00Z", "2021-01-02T00:00:00Z"]
    last = series[-1]
    assert last["captured_at"] == "2021-01-11T00:00:00Z" and last["source"] == "analyst"
    assert last["has_image"] is False and last["image"] is None
    assert last["counts"] == {"railcar": 60, "container": 3}
    a = last["anomaly"]["railcar"]
    assert set(a) >= {
        "score",
        "expected",
        "history_size",
        "history_max",
        "exceeds_history_max",
        "history_span_days",
        "reason",
    }  # v1 fields kept; v2 adds drop_score, model, ...
    assert {"drop_score", "model", "count_sd", "highest_in_days", "lowest_in_days"} <= set(a)
    assert a["history_size"] == 10 and a["exceeds_history_max"] is True and a["score"] > 3
    assert a["history_span_days"] == 10.0 and a["reason"] == "highest in 10 days of history"
    assert series[0]["counts"] == {"railcar": 11, "container": None} and series[0]["anomaly"]["container"] is None
    assert series[0]["anomaly"]["railcar"]["score"] is None and "8" in series[0]["anomaly"]["railcar"]["reason"]
    window = client.get(
        "/v1/facilities/yard/observations", params={"start": "2021-01-03T00:00:00Z", "end": "2021-01-05T00:00:00+00:00"}
    ).json()["observations"]
    assert len(window) == 3
    one = client.get(f"/v1/observations/{last['id']}").json()
    assert one["detections"] == [] and one["counts"] == last["counts"]


def test_import_csv_and_rescoring_visible_in_get(client: Any) -> None:
    _facility(client)
    recent = "captured_at,railcar,container\n" + "".join(
        f"2023-02-{d:02d}T00:00:00Z,{12 + d % 2},\n" for d in range(1, 4)
    )
    r = client.post("/v1/facilities/yard/observations", content=recent, headers={"content-type": CSV})
    assert r.status_code == 201, r.text
    assert r.json()["observations"][-1]["anomaly"]["railcar"]["reason"].startswith("cold start")  # v2
    old = "captured_at,railcar\n" + "".join(f"2020-{m:02d}-01T00:00:00Z,{12 + m % 3}\n" for m in range(1, 13))
    r = client.post(
        "/v1/facilities/yard/observations", content=old, headers={"content-type": "text/csv; charset=utf-8"}
    )
    assert r.status_code == 201 and r.json()["imported"] == 12
    series = client.get("/v1/facilities/yard/observations").json()["observations"]
    assert [o["anomaly"]["railcar"]["history_size"] for o in series[-3:]] == [12, 13, 14]
    assert all(o["anomaly"]["railcar"]["score"] is not None for o in series[-3:])
    assert all(o["counts"]["container"] is None for o in series)


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        (
            {
                "json": {
                    "observations": [
                        {"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": 1}},
                        {"captured_at": "2021-01-02T00:00:00", "counts": {"railcar": 1}},
                        {"captured_at": "2021-01-03T00:00:00Z", "counts": {"railcar": -4}},
                    ]
                }
            },
            422,
            ["observations[1]", "observations[2]", "nothing was imported"],
        ),
        (
            {
                "content": "captured_at,railcar\n2021-01-01T00:00:00Z,1\n2021-01-02T00:00:00Z,x\n",
                "headers": {"content-type": CSV},
            },
            422,
            ["line 3"],
        ),
        (
            {"content": "captured_at,lorries\n2021-01-01T00:00:00Z,1\n", "headers": {"content-type": CSV}},
            422,
            ["lorries"],
        ),
        ({"content": "{not json", "headers": {"content-type": "application/json"}}, 422, ["json"]),
        ({"json": {"observations": []}}, 422, ["no observations"]),
        ({"json": {"observations": [], "extra": 1}}, 422, ["extra"]),
        ({"content": "<xml/>", "headers": {"content-type": "application/xml"}}, 415, ["text/csv"]),
        ({"content": b"\xff\xfe\x00bad", "headers": {"content-type": CSV}}, 422, ["utf-8"]),
    ],
)
def test_import_refusals_store_nothing(client: Any, kwargs: dict, status: int, words: list[str]) -> None:
    _facility(client)
    before = _n_obs(client)
    _refused(client.post("/v1/facilities/yard/observations", **kwargs), status, *words)
    assert _n_obs(client) == before == 0


def _csv(days: int, offset: int = 0) -> str:
    return "captured_at,railcar\n" + "".join(
        f"{(date(2021, 1, 1) + timedelta(days=d + offset)).isoformat()}T00:00:00Z,{10 + d % 4}\n" for d in range(days)
    )


def _wait_job(client: Any, url: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(url).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job not finished: {job}")


def test_large_import_is_a_background_job_for_its_uploader(make_client: Callable[..., Any]) -> None:
    admin = make_client(async_import_rows=5)
    _facility(admin)
    _facility(admin, "other")
    token = admin.post("/v1/keys", json={"role": "uploader", "facilities": ["yard"]}).json()["key"]
    client = make_client(api_key=token, async_import_rows=5)
    small = client.post("/v1/facilities/yard/observations", content=_csv(5), headers={"Content-Type": "text/csv"})
    assert small.status_code == 201 and small.json()["imported"] == 5  # at the limit: answered directly
    headers = {"Content-Type": "text/csv", "Idempotency-Key": "big-1"}
    r = client.post("/v1/facilities/yard/observations", content=_csv(12, offset=5), headers=headers)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert set(accepted) == {"job_id", "status", "status_url"} and r.headers["Location"] == accepted["status_url"]
    job = _wait_job(client, accepted["status_url"])
    assert job["kind"] == "import" and job["status"] == "done" and job["progress"] == 1.0, job
    ids = job["import_result"]["observation_ids"]
    assert job["import_result"]["imported"] == 12 and job["import_result"]["duplicates"] == 0
    series = admin.get("/v1/facilities/yard/observations", params={"limit": 100}).json()["observations"]
    assert [o["id"] for o in series][5:] == ids and series[-1]["anomaly"]["railcar"]["history_size"] == 16
    again = client.post("/v1/facilities/yard/observations", content=_csv(12, offset=5), headers=headers)
    assert again.status_code == 202 and again.json() == {**accepted, "status": "done"}  # the same job
    _refused(
        client.post("/v1/facilities/yard/observations", content=_csv(13, offset=5), headers=headers),
        422,
        "Idempotency-Key",
    )
    other = admin.post("/v1/keys", json={"role": "uploader", "facilities": ["other"]}).json()["key"]
    r = make_client(api_key=other).get(accepted["status_url"])
    assert r.status_code == 403  # an uploader of another facility does not see the job
    assert len(admin.get("/v1/facilities/yard/observations", params={"limit": 100}).json()["observations"]) == 17


def test_large_import_with_a_bad_row_is_refused_before_queueing(make_client: Callable[..., Any]) -> None:
    client = make_client(async_import_rows=5)
    _facility(client)
    body = _csv(12).replace(",13\n", ",x\n", 1)
    _refused(
        client.post("/v1/facilities/yard/observations", content=body, headers={"Content-Type": "text/csv"}),
        422,
        "whole number",
    )
    with client.app.state.runtime.store.session() as session:
        assert session.query(db.Job).count() == 0
    assert _n_obs(client) == 0


def test_import_unknown_facility(client: Any) -> None:
    body = {"observations": [{"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": 1}}]}
    _refused(client.post("/v1/facilities/ghost/observations", json=body), 404, "ghost")
    assert _n_obs(client) == 0


def test_series_refusals(client: Any) -> None:
    _facility(client)
    _refused(client.get("/v1/facilities/ghost/observations"), 404)
    _refused(client.get("/v1/facilities/yard/observations", params={"start": "2021-01-01T00:00:00"}), 422, "timezone")
    _refused(client.get("/v1/facilities/yard/observations", params={"end": "soon"}), 422, "iso 8601")
    _refused(client.get("/v1/observations/999"), 404)
    _refused(client.get("/v1/observations/abc"), 422)


# ------------------------------------------------------------------------------------------- upload refusals


@pytest.mark.parametrize(
    "data, form, status, words",
    [
        (b"", {}, 422, ["empty"]),
        (b"this is not an image", {}, 415, ["jpeg", "png", "tiff"]),
        (encode_image(gradient_rgb(), "GIF"), {}, 415, ["gif"]),
        (
            encode_image(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8), "PNG")[:2000],
            {},
            422,
            ["truncated"],
        ),
        (
            encode_image(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8), "JPEG")[:2000],
            {},
            422,
            ["truncated"],
        ),
        (crafted_png_header(100_000, 100_000), {}, 413, ["pixels"]),
        (encode_image(gradient_rgb(), "PNG"), {"captured_at": "2024-05-01T10:30:00"}, 422, ["timezone"]),
        (encode_image(gradient_rgb(), "PNG"), {"captured_at": "last tuesday"}, 422, ["iso 8601"]),
        (encode_image(gradient_rgb(), "PNG"), {"captured_at": None}, 422, ["captured_at"]),
        (encode_image(gradient_rgb(), "PNG"), {"gsd_m": "0.01"}, 422, ["gsd_m"]),
        (encode_image(gradient_rgb(), "PNG"), {"gsd_m": "11"}, 422, ["gsd_m"]),
        (encode_image(gradient_rgb(), "PNG"), {"gsd_m": "half"}, 422, ["gsd_m"]),
    ],
)
def test_upload_refusals_store_nothing(client: Any, data: bytes, form: dict, status: int, words: list[str]) -> None:
    _facility(client)
    _refused(_upload(client, data, **form), status, *words)
    assert _n_obs(client) == 0


def test_upload_missing_file(client: Any) -> None:
    _facility(client)
    r = client.post("/v1/facilities/yard/images", data={"captured_at": "2024-05-01T10:30:00Z"})
    _refused(r, 422, "file")
    assert _n_obs(client) == 0


def test_upload_unknown_facility(client: Any, png_bytes: bytes) -> None:
    _refused(_upload(client, png_bytes, fid="ghost"), 404, "ghost")
    assert _n_obs(client) == 0


def test_upload_too_big(make_client: Callable[..., Any]) -> None:
    client = make_client(max_upload_mb=0.01)  # ~10 KiB
    _facility(client)
    noisy = encode_image(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8), "PNG")
    assert 10_486 < len(noisy) < 1024 * 1024  # over the file limit, under the multipart allowance
    _refused(_upload(client, noisy), 413, "limit")
    big = b"\x89PNG\r\n\x1a\n" + bytes(3 * 1024 * 1024)  # over the whole-request limit: refused before parsing
    _refused(_upload(client, big), 413, "limit")
    assert _n_obs(client) == 0


def test_upload_without_model_is_503_after_validation(client: Any, png_bytes: bytes) -> None:
    _facility(client)
    _refused(_upload(client, png_bytes), 503, "detector")
    assert _n_obs(client) == 0
    health = client.get("/healthz").json()
    assert health["db"] is True and health["model"] is None


def test_openapi_and_docs(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/facilities",
        "/v1/facilities/{facility_id}",
        "/v1/facilities/{facility_id}/images",
        "/v1/facilities/{facility_id}/observations",
        "/v1/observations/{observation_id}",
        "/healthz",
    ):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/facilities/{facility_id}/observations"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "text/csv"}
    assert "ImportIn" in spec["components"]["schemas"] and "ImportRowIn" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------------- the real model


@pytest.fixture
def model_client(make_client: Callable[..., Any], detector: Any) -> Any:
    client = make_client(detector=detector)
    _facility(client)
    return client


@pytest.mark.slow
def test_healthz_with_model(model_client: Any, detector: Any) -> None:
    body = model_client.get("/healthz").json()
    assert body["status"] == "ok" and body["db"] is True
    assert body["model"] == {"name": detector.name, "version": detector.version}


@pytest.mark.slow
def test_upload_response_shape(model_client: Any, detector: Any, png_bytes: bytes) -> None:
    r = _upload(model_client, png_bytes, name="whatever.jpg", gsd_m="0.5", captured_at="2024-05-01T19:30:00+09:00")
    assert r.status_code == 201, r.text
    body = r.json()
    assert {
        "id",
        "facility_id",
        "captured_at",
        "counts",
        "anomaly",
        "detections",
        "model",
        "image",
        "timing_ms",
    } <= set(body)
    assert body["facility_id"] == "yard" and body["captured_at"] == "2024-05-01T10:30:00Z"
    assert set(body["counts"]) >= {"railcar", "container"}
    assert all(isinstance(v, int) for v in body["counts"].values())
    assert sum(body["counts"].values()) == len(body["detections"])
    for cls in ("railcar", "container"):
        a = body["anomaly"][cls]
        assert a["score"] is None and a["history_size"] == 0 and a["reason"]
    for d in body["detections"]:
        assert d["class"] in detector.class_names and 0 <= d["confidence"] <= 1
        assert len(d["obb"]) == 4 and len(d["bbox"]) == 4
    assert body["model"] == {"name": detector.name, "version": detector.version}
    img = body["image"]
    assert (img["width"], img["height"], img["gsd_m"]) == (64, 48, 0.5) and len(img["sha256"]) == 64
    assert set(body["timing_ms"]) == {"decode", "detect", "store", "total"}
    one = model_client.get(f"/v1/observations/{body['id']}").json()
    assert one["detections"] == body["detections"] and one["has_image"] is True
    assert _n_obs(model_client) == 1


@pytest.mark.slow
def test_upload_is_scored_against_imported_history(model_client: Any, png_bytes: bytes) -> None:
    obs = [
        {"captured_at": f"2023-{m:02d}-01T00:00:00Z", "counts": {"railcar": 50 + m, "container": 20}}
        for m in range(1, 13)
    ]
    assert model_client.post("/v1/facilities/yard/observations", json={"observations": obs}).status_code == 201
    body = _upload(model_client, png_bytes).json()
    a = body["anomaly"]["railcar"]
    # expected is the predictive mean (parameter uncertainty included): near the plain mean 56.5
    assert a["history_size"] == 12 and a["score"] is not None and a["expected"] == pytest.approx(56.5, rel=0.01)


@pytest.mark.slow
def test_upload_refusal_with_model_stores_nothing(model_client: Any) -> None:
    _refused(_upload(model_client, b"not an image"), 415)
    assert _n_obs(model_client) == 0


# ------------------------------------------------------------------------------------------- offline


def test_network_guard_blocks_non_loopback(network_attempts: list[str]) -> None:
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("203.0.113.7", 80), timeout=0.1)
    with pytest.raises(NetworkAccessError):
        socket.getaddrinfo("example.com", 443)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(NetworkAccessError):
            s.connect(("8.8.8.8", 53))
    finally:
        s.close()
    assert len(network_attempts) == 3
    network_attempts.clear()
    # loopback stays usable
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        with socket.create_connection(server.getsockname(), timeout=1):
            pass
        assert socket.getaddrinfo("localhost", 80)
    finally:
        server.close()


def test_streamed_body_over_limit_is_413(make_client: Callable[..., Any]) -> None:
    client = make_client(max_upload_mb=0.01)  # whole-request limit ~1.01 MiB
    _facility(client)

    def chunks() -> Any:  # no Content-Length: the limit is enforced while streaming
        yield b"captured_at,railcar\n"
        for _ in range(300):
            yield b"2021-01-01T00:00:00Z,1\n" * 200

    r = client.post("/v1/facilities/yard/observations", content=chunks(), headers={"content-type": CSV})
    _refused(r, 413, "limit")
    assert _n_obs(client) == 0


def test_empty_window_parameters_mean_unbounded(client: Any) -> None:
    _facility(client)
    assert client.get("/v1/facilities/yard/observations?start=&end=").json() == {
        "observations": [],
        "next_cursor": None,
    }


def test_healthz_degraded_when_database_is_gone(client: Any) -> None:
    assert client.get("/healthz").status_code == 200
    client.app.state.runtime.store.ping = lambda: False  # simulate an unreachable database
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "degraded" and r.json()["db"] is False
