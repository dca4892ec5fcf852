"""API for georeferenced scenes: footprints, obb_lonlat, GeoJSON, overlay, archive, background jobs, reprocess."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.core.settings import Settings
from app.database import Store
from app.usecases import scenes
from tests.support.geodata import BlobDetector, blob_scene, ground_distance_m, make_geotiff
from tests.support.images import encode_image

pytestmark = pytest.mark.databases("sqlite", "postgresql")  # each database test runs on both

CENTRES = ((100.0, 80.0), (250.0, 200.0), (330.0, 60.0))
WHEN = "2024-05-01T10:30:00Z"


def _footprint(gs: Any, x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    ring = gs.pixel_to_lonlat(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]))
    return {"type": "Polygon", "coordinates": [ring.tolist()]}


def _upload(client: Any, path: Path, facility: str = "yard", **data: str) -> Any:
    return client.post(
        f"/v1/facilities/{facility}/images",
        files={"file": (path.name, path.read_bytes())},
        data={"captured_at": WHEN, **data},
    )


def test_facility_footprint_create_patch_and_refusals(client: Any, tmp_path: Path) -> None:
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(), 0.5)
    fp = _footprint(gs, 0, 0, 100, 100)
    r = client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail", "footprint": fp})
    assert r.status_code == 201, r.text
    assert r.json()["footprint"]["type"] == "Polygon"
    bad = {"type": "Polygon", "coordinates": [[[0, 0], [500, 0], [1, 1], [0, 0]]]}
    r = client.post("/v1/facilities", json={"id": "bad", "name": "B", "kind": "rail", "footprint": bad})
    assert r.status_code == 422 and "longitude" in r.json()["detail"]
    r = client.patch("/v1/facilities/yard", json={"name": "Renamed"})
    assert r.status_code == 200 and r.json()["name"] == "Renamed" and r.json()["footprint"] is not None
    r = client.patch("/v1/facilities/yard", json={"footprint": None})
    assert r.status_code == 200 and r.json()["footprint"] is None
    assert client.patch("/v1/facilities/yard", json={"footprint": bad}).status_code == 422
    assert client.patch("/v1/facilities/nope", json={"name": "x"}).status_code == 404
    assert client.get("/v1/facilities/yard").json()["footprint"] is None


def test_geotiff_upload_geojson_overlay_and_archive(
    make_client: Callable[..., Any], tmp_path: Path, settings: Settings
) -> None:
    client = make_client(detector=BlobDetector())
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5, crs="wgs84", bits=16)
    fp = _footprint(gs, 50, 20, 280, 250)  # holds the first two blobs
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail", "footprint": fp})
    r = _upload(client, gs.path)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["counts"]["railcar"] == 2
    assert body["image"]["crs"] == "EPSG:4326" and body["image"]["gsd_source"] == "geotransform"
    assert body["image"]["gsd_m"] == pytest.approx(0.5, rel=1e-3)
    assert body["coverage"]["share"] == pytest.approx(1.0, abs=0.01) and body["exposure"] == body["coverage"]["share"]
    assert all(len(d["obb_lonlat"]) == 4 for d in body["detections"])
    # the original is kept under its digest
    sha = body["image"]["sha256"]
    assert scenes.archive_path(settings.archive_dir, sha).read_bytes() == gs.path.read_bytes()

    geo = client.get(f"/v1/observations/{body['id']}/detections.geojson")
    assert geo.status_code == 200 and geo.headers["content-type"].startswith("application/geo+json")
    fc = geo.json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    truth = gs.pixel_to_lonlat(np.array(CENTRES[:2]))
    for f in fc["features"]:
        assert f["properties"]["class"] == "railcar" and f["properties"]["captured_at"] == WHEN
        ring = np.array(f["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all() and len(ring) == 5
        centre = ring[:4].mean(axis=0)
        assert ground_distance_m(np.repeat(centre[None], 2, 0), truth).min() < 0.25  # half a pixel

    png = client.get(f"/v1/observations/{body['id']}/overlay.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(png.content))
    assert im.mode == "RGB" and 0 < max(im.size) <= settings.overlay_max_px

    detail = client.get(f"/v1/observations/{body['id']}").json()
    assert detail["coverage"] == body["coverage"] and detail["detections"][0]["obb_lonlat"]


def test_plain_png_has_no_map_coordinates(make_client: Callable[..., Any]) -> None:
    client = make_client(detector=BlobDetector())
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    r = client.post(
        "/v1/facilities/yard/images",
        files={"file": ("a.png", encode_image(blob_scene()))},
        data={"captured_at": WHEN, "gsd_m": "0.5"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["counts"]["railcar"] == 1 and body["coverage"] is None and body["exposure"] is None
    assert body["detections"][0].get("obb_lonlat") is None
    assert body["image"]["gsd_source"] == "request"
    assert client.get(f"/v1/observations/{body['id']}/detections.geojson").status_code == 404
    assert client.get(f"/v1/observations/{body['id']}/overlay.png").status_code == 200
    assert client.get("/v1/observations/999/overlay.png").status_code == 404


def test_footprint_not_covered_is_refused(make_client: Callable[..., Any], tmp_path: Path) -> None:
    client = make_client(detector=BlobDetector())
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(), 0.5)
    client.post(
        "/v1/facilities",
        json={"id": "yard", "name": "Yard", "kind": "rail", "footprint": _footprint(gs, 2000, 2000, 2100, 2100)},
    )
    r = _upload(client, gs.path)
    assert r.status_code == 422 and "footprint" in r.json()["detail"]


def _wait_job(client: Any, url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(url).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job not finished: {job}")


def test_large_upload_becomes_a_background_job(make_client: Callable[..., Any], tmp_path: Path) -> None:
    client = make_client(detector=BlobDetector(), async_upload_mb=0.0001)
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5)
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    r = _upload(client, gs.path)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert r.headers["location"] == accepted["status_url"]
    job = _wait_job(client, accepted["status_url"])
    assert job["status"] == "done" and job["progress"] == 1.0, job
    assert job["result"]["counts"]["railcar"] == 3 and job["result"]["detections"][0]["obb_lonlat"]
    assert client.get(f"/v1/observations/{job['observation_id']}").status_code == 200
    assert client.get("/v1/jobs/nope").status_code == 404


def test_background_job_failure_is_reported(make_client: Callable[..., Any], tmp_path: Path) -> None:
    client = make_client(detector=BlobDetector(), async_upload_mb=0.0001)
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(), 0.5, tiled=True)
    data = gs.path.read_bytes()
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    r = client.post(
        "/v1/facilities/yard/images", files={"file": ("t.tif", data[: len(data) // 2])}, data={"captured_at": WHEN}
    )
    assert r.status_code == 202
    job = _wait_job(client, r.json()["status_url"])
    assert job["status"] == "failed" and job["error_status"] == 422 and job["error"]


def test_unfinished_jobs_resume_after_restart(
    settings: Settings, tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    from app import database as db
    from app.core.validation import parse_timestamp
    from app.usecases.facilities import create_facility
    from app.usecases.jobs import JobQueue

    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5)
    st = Store(settings.database_url)
    create_facility(st, "yard", "Yard", "rail")
    sha, _ = scenes.archive_bytes(settings.archive_dir, gs.path.read_bytes())
    # a job that was running when the process died: in the database, its task gone from the queue
    queue = JobQueue(settings, st, None)
    job_id = queue.submit("yard", parse_timestamp(WHEN), None, sha)
    queue.huey.flush()
    with st.transaction() as session:
        session.get(db.Job, job_id).status = "running"
    st.dispose()
    client = make_client(detector=BlobDetector())  # "restart"
    job = _wait_job(client, f"/v1/jobs/{job_id}")
    assert job["status"] == "done" and job["result"]["counts"]["railcar"] == 3


def test_reprocess_reruns_a_new_model_over_the_archive(
    make_client: Callable[..., Any], tmp_path: Path, settings: Settings
) -> None:
    client = make_client(detector=BlobDetector("v1"))
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5)
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    first = _upload(client, gs.path).json()
    assert first["model"]["version"] == "v1" and first["counts"]["railcar"] == 3
    # a footprint set later, and a new model: reprocess applies both
    client.patch("/v1/facilities/yard", json={"footprint": _footprint(gs, 50, 20, 150, 150)})
    st = Store(settings.database_url)
    done = scenes.reprocess_facility(st, settings, BlobDetector("v2"), "yard")
    st.dispose()
    assert [(d.observation_id, d.after) for d in done] == [(first["id"], {"railcar": 1, "container": 0})]
    again = client.get(f"/v1/observations/{first['id']}").json()
    assert again["model"]["version"] == "v2" and again["counts"]["railcar"] == 1
    assert again["coverage"]["share"] == pytest.approx(1.0, abs=0.01)
    assert len(again["detections"]) == 1


@pytest.mark.skipif(
    not __import__("os").environ.get("WAGON_TEST_REDIS_URL"),
    reason="WAGON_TEST_REDIS_URL not set (.ci/run sets it when redis-server is available)",
)
def test_redis_backend_runs_jobs(make_client: Callable[..., Any], tmp_path: Path) -> None:
    import os

    url = os.environ["WAGON_TEST_REDIS_URL"]
    pytest.importorskip("redis").Redis.from_url(url).flushdb()
    # a queue of its own: a consumer of an earlier test's app may still be polling the shared Redis
    client = make_client(
        detector=BlobDetector(),
        async_upload_mb=0.0001,
        jobs_backend="redis",
        redis_url=url,
        jobs_queue_name=f"wagon-test-{tmp_path.name}",
    )
    gs = make_geotiff(tmp_path / "s.tif", blob_scene(centres=CENTRES), 0.5)
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    r = _upload(client, gs.path)
    assert r.status_code == 202, r.text
    job = _wait_job(client, r.json()["status_url"])
    assert job["status"] == "done" and job["result"]["counts"]["railcar"] == 3
