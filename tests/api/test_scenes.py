"""``POST /v1/scenes``: one scene, every facility it covers; by upload, by URL (range requests from a loopback
server) and by STAC item; and every refusal, with nothing stored."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app import database as db
from app.core.settings import Settings
from tests.support.geodata import BlobDetector, GeoScene
from tests.support.range_server import Behaviour, RangeServer
from tests.support.scenes import cut_window, footprint, make_cog

#: Footprints (pixel boxes) of the big scene: two inside, one outside; wagons inside both and one elsewhere.
BOX_A = (2000.0, 3000.0, 2800.0, 3500.0)
BOX_B = (8000.0, 7000.0, 8900.0, 7600.0)
BOX_C = (20_000.0, 20_000.0, 20_600.0, 20_400.0)  # outside the 12,000 px scene
WAGONS_A = ((2100.0, 3100.0), (2300.0, 3100.0), (2500.0, 3300.0), (2700.0, 3400.0), (2200.0, 3450.0))
WAGONS_B = tuple((8100.0 + 100.0 * i, 7100.0 + 60.0 * i) for i in range(7))
ELSEWHERE = ((6000.0, 6000.0), (500.0, 500.0))
MARGIN_PX = 100  # WAGON_FOOTPRINT_MARGIN_M 50 m at 0.5 m/px


def _wait(client: Any, url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(url).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"scene job not finished: {job}")


def _facility(client: Any, fid: str, fp: dict[str, Any] | None) -> None:
    r = client.post("/v1/facilities", json={"id": fid, "name": fid, "kind": "rail", "footprint": fp})
    assert r.status_code == 201, r.text


def _stored(settings: Settings) -> tuple[int, int]:
    """(observations, scene jobs) in the database."""
    store = db.Store(settings.database_url)
    try:
        with store.session() as session:
            return (
                session.scalar(select(func.count()).select_from(db.Observation)) or 0,
                session.scalar(select(func.count()).select_from(db.SceneJob)) or 0,
            )
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> GeoScene:
    """The 12,000 x 12,000 px, 0.5 m COG (built once: about 15 s)."""
    path = tmp_path_factory.mktemp("cog") / "scene.tif"
    return make_cog(path, 12_000, 0.5, centres=WAGONS_A + WAGONS_B + ELSEWHERE)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> GeoScene:
    """A 2,048 px COG with the same wagons of facility A."""
    path = tmp_path_factory.mktemp("cog") / "small.tif"
    return make_cog(path, 4096, 0.5, centres=WAGONS_A)


@pytest.fixture
def server() -> Iterator[RangeServer]:
    with RangeServer() as srv:
        yield srv


def _client(make_client: Callable[..., Any], **overrides: Any) -> Any:
    overrides.setdefault("fetch_allowed_hosts", ["127.0.0.1"])
    overrides.setdefault("fetch_retries", 1)
    return make_client(detector=BlobDetector(), **overrides)


WHEN = "2023-10-15T02:30:00Z"


@pytest.mark.slow
def test_big_cog_by_url_makes_one_observation_per_covered_facility_reading_a_fraction(
    make_client: Callable[..., Any], server: RangeServer, big_scene: GeoScene, tmp_path: Path
) -> None:
    """Two facilities inside, one outside: exactly two observations, with the counts an upload of each footprint's
    window gives, reading at most a quarter of the file; sent again, no new observation anywhere."""
    client = _client(make_client)
    for fid, box in (("a", BOX_A), ("b", BOX_B), ("c", BOX_C)):
        _facility(client, fid, footprint(big_scene, box))
    server.files["/scene.tif"] = big_scene.path
    size = big_scene.path.stat().st_size

    r = client.post("/v1/scenes", json={"href": server.url("/scene.tif"), "captured_at": WHEN})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["status_url"])
    assert job["status"] == "done", job
    result = job["result"]
    made = {o["facility_id"]: o for o in result["observations"]}
    assert sorted(made) == ["a", "b"] and all(o["created"] for o in made.values())
    assert result["skipped"] == [{"facility_id": "c", "reason": "outside the scene"}]
    assert made["a"]["observation"]["counts"]["railcar"] == len(WAGONS_A)
    assert made["b"]["observation"]["counts"]["railcar"] == len(WAGONS_B)
    assert server.stats.bytes_sent <= 0.25 * size, (server.stats.bytes_sent, size)
    assert result["source"]["bytes_read"] == server.stats.bytes_sent and result["source"]["size"] == size

    # the same windows uploaded to twin facilities count the same
    for fid, box in (("a", BOX_A), ("b", BOX_B)):
        _facility(client, f"{fid}2", footprint(big_scene, box))
        x0, y0, x1, y1 = (int(v) for v in box)
        window = (x0 - MARGIN_PX, y0 - MARGIN_PX, x1 - x0 + 2 * MARGIN_PX, y1 - y0 + 2 * MARGIN_PX)
        cut = cut_window(big_scene.path, window, tmp_path / f"{fid}.tif")
        with cut.open("rb") as f:
            up = client.post(f"/v1/facilities/{fid}2/images", files={"file": f}, data={"captured_at": WHEN})
        assert up.status_code == 201, up.text
        assert up.json()["counts"] == made[fid]["observation"]["counts"]
        assert up.json()["coverage"] == made[fid]["observation"]["coverage"]

    # delivered again (to the first three): the same observations, none new
    body = {"href": server.url("/scene.tif"), "captured_at": WHEN, "facilities": ["a", "b", "c"]}
    again = _wait(client, client.post("/v1/scenes", json=body).json()["status_url"])
    assert again["status"] == "done", again
    assert {o["facility_id"]: (o["observation"]["id"], o["created"]) for o in again["result"]["observations"]} == {
        f: (o["observation"]["id"], False) for f, o in made.items()
    }
    for fid in ("a", "b"):
        assert len(client.get(f"/v1/facilities/{fid}/observations").json()["observations"]) == 1


def _item(href: str, **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "scene-1",
        "geometry": None,
        "properties": {"datetime": WHEN, **props},
        "assets": {
            "visual": {
                "href": href,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["visual"],
            },
            "thumbnail": {"href": href + ".png", "type": "image/png", "roles": ["thumbnail"]},
        },
        "links": [],
    }


def test_stac_item_by_url_uses_its_time_and_skips_facilities_outside_its_geometry(
    make_client: Callable[..., Any], server: RangeServer, small_scene: GeoScene, settings: Settings
) -> None:
    client = _client(make_client)
    _facility(client, "a", footprint(small_scene, BOX_A))
    _facility(client, "far", footprint(small_scene, (3500.0, 3500.0, 3900.0, 3900.0)))
    _facility(client, "bare", None)
    server.files["/s.tif"] = small_scene.path
    item = _item(server.url("/s.tif"), gsd=0.5)
    item["geometry"] = footprint(small_scene, (0.0, 0.0, 3000.0, 3000.0))  # the item's valid area misses "far"
    server.files["/item.json"] = __import__("json").dumps(item).encode()
    r = client.post("/v1/scenes", json={"stac_item_href": server.url("/item.json")})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["status_url"])
    assert job["status"] == "done", job
    assert [o["facility_id"] for o in job["result"]["observations"]] == ["a"]
    obs = job["result"]["observations"][0]["observation"]
    assert obs["counts"]["railcar"] == len(WAGONS_A) and obs["captured_at"].startswith("2023-10-15T02:30:00")
    assert sorted((s["facility_id"], s["reason"]) for s in job["result"]["skipped"]) == [
        ("bare", "no footprint"),
        ("far", "outside the scene"),
    ]
    store = db.Store(settings.database_url)
    try:
        with store.session() as session:
            row = session.get(db.Observation, obs["id"])
            assert row is not None and row.scene_source is not None
            assert row.scene_source["stac_item"]["id"] == "scene-1"
            assert row.scene_source["identity"] == f"stac:scene-1:{server.url('/s.tif')}"
    finally:
        store.dispose()


def test_uploaded_scene_and_scoped_uploader(
    make_client: Callable[..., Any], small_scene: GeoScene, settings: Settings
) -> None:
    """An uploader reaches only its facilities (others: "not granted"; none: 403); readers may not submit."""
    admin = _client(make_client)
    _facility(admin, "a", footprint(small_scene, BOX_A))
    _facility(admin, "b", footprint(small_scene, (100.0, 100.0, 400.0, 400.0)))
    uploader = admin.post("/v1/keys", json={"role": "uploader", "facilities": ["a"]}).json()["key"]
    reader = admin.post("/v1/keys", json={"role": "reader"}).json()["key"]
    up = make_client(detector=BlobDetector(), api_key=uploader)
    data = small_scene.path.read_bytes()
    r = up.post("/v1/scenes", files={"file": ("s.tif", data)}, data={"captured_at": WHEN, "facilities": "a,b"})
    assert r.status_code == 202, r.text
    job = _wait(up, r.json()["status_url"])
    assert [o["facility_id"] for o in job["result"]["observations"]] == ["a"]
    assert job["result"]["skipped"] == [{"facility_id": "b", "reason": "not granted"}]
    assert job["result"]["observations"][0]["observation"]["counts"]["railcar"] == len(WAGONS_A)
    r = up.post("/v1/scenes", files={"file": ("s.tif", data)}, data={"captured_at": WHEN, "facilities": "b"})
    assert r.status_code == 403 and "none of the facilities" in r.json()["detail"]
    rd = make_client(detector=BlobDetector(), api_key=reader)
    assert rd.post("/v1/scenes", files={"file": ("s.tif", data)}, data={"captured_at": WHEN}).status_code == 403
    assert rd.get(r"/v1/scenes/" + job["id"]).status_code == 200
    assert _stored(settings) == (1, 1)


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("hosts", "path", "via", "needle"),
    [
        (["scenes.example"], "/s.tif", None, "is not allowed"),
        (["localhost"], "/s.tif", "localhost", "loopback address"),
        (["127.0.0.1"], "/s.tif", "ftp", "scheme"),
    ],
    ids=["host-not-allowed", "resolves-to-loopback", "bad-url"],
)
def test_url_refused_at_submission(
    make_client: Callable[..., Any],
    server: RangeServer,
    small_scene: GeoScene,
    settings: Settings,
    hosts: list[str],
    path: str,
    via: str | None,
    needle: str,
) -> None:
    client = _client(make_client, fetch_allowed_hosts=hosts)
    _facility(client, "a", footprint(small_scene, BOX_A))
    server.files[path] = small_scene.path
    url = server.url(path, host=via if via != "ftp" else None)
    if via == "ftp":
        url = url.replace("http://", "ftp://")
    r = client.post("/v1/scenes", json={"href": url, "captured_at": WHEN})
    assert r.status_code == 422 and needle in r.json()["detail"], r.text
    assert server.stats.requests == 0
    assert _stored(settings) == (0, 0)


def test_by_reference_is_off_by_default(make_client: Callable[..., Any], small_scene: GeoScene) -> None:
    client = make_client(detector=BlobDetector())
    _facility(client, "a", footprint(small_scene, BOX_A))
    r = client.post("/v1/scenes", json={"href": "http://127.0.0.1:9/s.tif", "captured_at": WHEN})
    assert r.status_code == 422 and "WAGON_FETCH_ALLOWED_HOSTS is empty" in r.json()["detail"]
    r = client.post("/v1/scenes", json={"href": "/etc/passwd", "captured_at": WHEN})
    assert r.status_code == 422 and "WAGON_SCENE_DIRS" in r.json()["detail"]


def _truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 3]


@pytest.mark.parametrize(
    ("setup", "overrides", "status", "needle"),
    [
        ("redirect", {}, 422, "redirects to"),
        ("missing", {}, 404, "404"),
        ("stall", {"fetch_read_timeout_s": 0.3}, 504, "read timeout"),
        ("too-big", {"fetch_max_mb": 0.5}, 413, "WAGON_FETCH_MAX_MB"),
        ("truncated", {}, 422, "truncated"),
        ("flaky-then-dead", {}, 502, "503"),
    ],
)
def test_fetch_failures_fail_the_job_with_the_cause_and_store_nothing(
    make_client: Callable[..., Any],
    server: RangeServer,
    small_scene: GeoScene,
    settings: Settings,
    setup: str,
    overrides: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    client = _client(make_client, **overrides)
    _facility(client, "a", footprint(small_scene, BOX_A))
    server.files["/s.tif"] = small_scene.path
    path = "/s.tif"
    if setup == "redirect":
        path = "/r.tif"
        server.behaviour[path] = Behaviour(redirect_to=server.url("/s.tif", host="localhost"))
    elif setup == "missing":
        path = "/gone.tif"
    elif setup == "stall":
        server.behaviour[path] = Behaviour(stall_s=1.5)
    elif setup == "truncated":
        path = "/cut.tif"
        server.files[path] = _truncated(small_scene.path)
    elif setup == "flaky-then-dead":
        server.behaviour[path] = Behaviour(fail_times=10)
    r = client.post("/v1/scenes", json={"href": server.url(path), "captured_at": WHEN})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["status_url"])
    assert job["status"] == "failed" and job["error_status"] == status and needle in job["error"], job
    assert _stored(settings) == (0, 1)  # the job that says why; no observation


def test_retries_a_server_error_then_succeeds(
    make_client: Callable[..., Any], server: RangeServer, small_scene: GeoScene
) -> None:
    client = _client(make_client, fetch_retries=2)
    _facility(client, "a", footprint(small_scene, BOX_A))
    server.files["/s.tif"] = small_scene.path
    server.behaviour["/s.tif"] = Behaviour(fail_times=1)
    job = _wait(
        client, client.post("/v1/scenes", json={"href": server.url("/s.tif"), "captured_at": WHEN}).json()["status_url"]
    )
    assert job["status"] == "done" and job["result"]["observations"][0]["observation"]["counts"]["railcar"] == 5


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("no-asset", "no usable image asset"),
        ("no-time", "captured_at is required"),
        ("not-an-item", "not a STAC item"),
        ("two-sources", "exactly one of"),
    ],
)
def test_stac_item_refused_at_submission(
    make_client: Callable[..., Any],
    server: RangeServer,
    small_scene: GeoScene,
    settings: Settings,
    change: str,
    needle: str,
) -> None:
    client = _client(make_client)
    _facility(client, "a", footprint(small_scene, BOX_A))
    server.files["/s.tif"] = small_scene.path
    item = _item(server.url("/s.tif"))
    body: dict[str, Any] = {"stac_item": item}
    if change == "no-asset":
        del item["assets"]["visual"]
    elif change == "no-time":
        item["properties"]["datetime"] = None
        item["properties"]["start_datetime"] = None
    elif change == "not-an-item":
        body = {"stac_item": {"type": "FeatureCollection"}}
    else:
        body["href"] = server.url("/s.tif")
    r = client.post("/v1/scenes", json=body)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text
    assert server.stats.requests == 0
    assert _stored(settings) == (0, 0)
