"""Subscriptions through the API: a static catalog and a paged STAC API search on a loopback server, each item
submitted once as a scene job across polls; unusable items recorded and tried again; refusals with nothing stored."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.geodata import BlobDetector, GeoScene
from tests.support.range_server import RangeServer
from tests.support.scenes import footprint, make_cog
from tests.support.stac_catalogs import FakeSearch, serve_static_catalog, stac_item

WAGONS = ((300.0, 300.0), (500.0, 320.0), (600.0, 450.0))
BOX = (200.0, 200.0, 700.0, 500.0)
TIMES = ("2023-10-15T02:30:00Z", "2023-10-16T02:30:00Z", "2023-10-17T02:30:00Z", "2023-10-18T02:30:00Z")


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> GeoScene:
    """A 1,024 px COG with three wagons inside the facility's footprint."""
    return make_cog(tmp_path_factory.mktemp("cog") / "s.tif", 1024, 0.5, centres=WAGONS)


@pytest.fixture
def server(cog: GeoScene) -> Iterator[RangeServer]:
    with RangeServer() as srv:
        for name in ("a", "b", "c", "d", "e"):
            srv.files[f"/scenes/{name}.tif"] = cog.path
        yield srv


@pytest.fixture
def client(make_client: Callable[..., Any], cog: GeoScene) -> Any:
    """An admin client allowed to fetch from the loopback server (no periodic polls: the tests poll), with a
    facility under the COG's wagons."""
    c = make_client(detector=BlobDetector(), fetch_allowed_hosts=["127.0.0.1"], fetch_retries=0, jobs_periodic=False)
    r = c.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail", "footprint": footprint(cog, BOX)})
    assert r.status_code == 201, r.text
    return c


def _subscribe(client: Any, url: str, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/subscriptions", json={"url": url, "interval_minutes": 60, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _poll(client: Any, sub_id: str) -> dict[str, Any]:
    r = client.post(f"/v1/subscriptions/{sub_id}/poll")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait_done(client: Any, job_ids: list[str], timeout_s: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [client.get(f"/v1/scenes/{j}").json() for j in job_ids]
        if all(j["status"] in ("done", "failed") for j in jobs):
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"scene jobs not finished: {jobs}")


def test_static_catalog_items_are_submitted_once_across_polls(client: Any, server: RangeServer) -> None:
    items = [stac_item(f"scene-{n}", f"../../../scenes/{n}.tif", TIMES[i]) for i, n in enumerate("abc")]
    url = serve_static_catalog(server, items)
    sub = _subscribe(client, url, name="vendor A")
    assert sub["kind"] == "static" and sub["url"] == url and sub["last_polled_at"] is None
    assert sub["items_seen"] == 0 and sub["next_poll_at"] <= sub["created_at"]

    first = _poll(client, sub["id"])
    assert first["error"] is None and first["failed"] == [] and first["items_found"] == 3
    assert sorted(s["item_id"] for s in first["submitted"]) == ["scene-a", "scene-b", "scene-c"]
    jobs = _wait_done(client, [s["scene_job_id"] for s in first["submitted"]])
    assert [j["status"] for j in jobs] == ["done"] * 3, jobs
    # each item's own asset, resolved against the item's URL, at the item's time
    assert sorted(j["source"]["location"] for j in jobs) == [server.url(f"/scenes/{n}.tif") for n in "abc"]
    observations = client.get("/v1/facilities/yard/observations").json()["observations"]
    assert sorted(o["captured_at"][:10] for o in observations) == ["2023-10-15", "2023-10-16", "2023-10-17"]
    assert all(o["counts"]["railcar"] == len(WAGONS) for o in observations)

    second = _poll(client, sub["id"])
    assert second["submitted"] == [] and second["failed"] == [] and second["already_seen"] == 3
    shown = client.get(f"/v1/subscriptions/{sub['id']}").json()
    assert (shown["items_seen"], shown["scenes_submitted"], shown["failures"]) == (3, 3, 0)
    assert shown["last_polled_at"][:19] == second["polled_at"][:19]
    assert shown["last_error"] is None and shown["next_poll_at"] > shown["last_polled_at"]
    assert len(client.get("/v1/facilities/yard/observations").json()["observations"]) == 3

    # a new item published later: only it is submitted
    items.append(stac_item("scene-d", "../../../scenes/d.tif", TIMES[3]))
    serve_static_catalog(server, items)
    third = _poll(client, sub["id"])
    assert [s["item_id"] for s in third["submitted"]] == ["scene-d"] and third["already_seen"] == 3
    _wait_done(client, [third["submitted"][0]["scene_job_id"]])

    listed = client.get("/v1/subscriptions").json()["subscriptions"]
    assert [(s["id"], s["scenes_submitted"]) for s in listed] == [(sub["id"], 4)]
    assert client.delete(f"/v1/subscriptions/{sub['id']}").status_code == 200
    assert client.get(f"/v1/subscriptions/{sub['id']}").status_code == 404
    assert client.post(f"/v1/subscriptions/{sub['id']}/poll").status_code == 404
    assert len(client.get("/v1/facilities/yard/observations").json()["observations"]) == 4  # scenes stay


def test_an_unusable_item_is_recorded_and_tried_again_while_polling_goes_on(client: Any, server: RangeServer) -> None:
    good = stac_item("good", "../../../scenes/a.tif", TIMES[0])
    bad = stac_item("bad", "../../../scenes/b.png", TIMES[1], type="image/png")  # no image asset
    url = serve_static_catalog(server, [good, bad])
    sub = _subscribe(client, url)

    first = _poll(client, sub["id"])
    assert [s["item_id"] for s in first["submitted"]] == ["good"]
    assert [(f["item_id"], f["attempts"], f["given_up"]) for f in first["failed"]] == [("bad", 1, False)]
    assert "no usable image asset" in first["failed"][0]["error"]
    shown = client.get(f"/v1/subscriptions/{sub['id']}").json()
    assert (shown["items_seen"], shown["scenes_submitted"], shown["failures"]) == (2, 1, 1)
    assert "no usable image asset" in shown["last_error"]

    second = _poll(client, sub["id"])  # tried again, still unusable; the good one is not sent twice
    assert second["submitted"] == [] and [(f["item_id"], f["attempts"]) for f in second["failed"]] == [("bad", 2)]

    serve_static_catalog(server, [good, stac_item("bad", "../../../scenes/b.tif", TIMES[1])])  # the vendor fixes it
    server.files["/scenes/b.tif"] = server.files["/scenes/a.tif"]
    third = _poll(client, sub["id"])
    assert [s["item_id"] for s in third["submitted"]] == ["bad"] and third["failed"] == []
    jobs = _wait_done(client, [s["scene_job_id"] for s in first["submitted"] + third["submitted"]])
    assert [j["status"] for j in jobs] == ["done", "done"], jobs
    shown = client.get(f"/v1/subscriptions/{sub['id']}").json()
    assert (shown["scenes_submitted"], shown["failures"], shown["last_error"]) == (2, 0, None)


def test_an_unreadable_catalog_is_recorded_and_polled_again(client: Any, server: RangeServer) -> None:
    url = serve_static_catalog(server, [stac_item("a", "../../../scenes/a.tif", TIMES[0])])
    sub = _subscribe(client, url)
    del server.files["/stac/catalog.json"]
    failed = _poll(client, sub["id"])
    assert "HTTP 404" in failed["error"] and failed["submitted"] == []
    assert "HTTP 404" in client.get(f"/v1/subscriptions/{sub['id']}").json()["last_error"]
    serve_static_catalog(server, [stac_item("a", "../../../scenes/a.tif", TIMES[0])])
    again = _poll(client, sub["id"])
    assert again["error"] is None and [s["item_id"] for s in again["submitted"]] == ["a"]
    _wait_done(client, [again["submitted"][0]["scene_job_id"]])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"url": "http://localhost:{port}/stac/catalog.json"}, "not allowed"),
        ({"url": "http://127.0.0.1:{port}/scenes/a.tif"}, "not JSON"),
        ({"url": "http://127.0.0.1:{port}/nothing.json"}, "HTTP 404"),
        ({"url": "http://127.0.0.1:{port}/stac/catalog.json", "kind": "api"}, "without a search link"),
        ({"url": "http://127.0.0.1:{port}/stac/catalog.json", "interval_minutes": 1}, "interval_minutes"),
        ({"url": "http://127.0.0.1:{port}/stac/catalog.json", "kind": "ftp"}, "kind"),
        ({"url": "http://127.0.0.1:{port}/stac/catalog.json", "facilities": ["nowhere"]}, "nowhere"),
        ({"url": "file:///etc/passwd"}, "scheme"),
    ],
)
def test_bad_subscriptions_are_refused_with_a_reason_and_nothing_stored(
    client: Any, server: RangeServer, body: dict[str, Any], reason: str
) -> None:
    serve_static_catalog(server, [])
    sent = {"interval_minutes": 60, **body, "url": body["url"].format(port=server.port)}
    r = client.post("/v1/subscriptions", json=sent)
    assert r.status_code in (404, 422), r.text
    assert reason in r.text
    assert client.get("/v1/subscriptions").json()["subscriptions"] == []


def test_a_stac_api_search_is_followed_across_pages_once(client: Any, server: RangeServer) -> None:
    items = [stac_item(f"s{i}", server.url(f"/scenes/{'abcde'[i]}.tif"), TIMES[i % 4]) for i in range(5)]
    items[4]["properties"]["datetime"] = "2023-10-19T02:30:00Z"
    search = FakeSearch(server, items, page_size=2)
    sub = _subscribe(client, search.url, collections=["scenes"])
    assert sub["kind"] == "api" and sub["collections"] == ["scenes"]
    search.requests.clear()

    first = _poll(client, sub["id"])
    assert sorted(s["item_id"] for s in first["submitted"]) == [f"s{i}" for i in range(5)]
    assert [m for m, _q, _b in search.requests] == ["GET", "GET", "POST"]  # three pages: GET, GET, then POST
    assert search.requests[0][1]["collections"] == ["scenes"] and "datetime" not in search.requests[0][1]
    assert search.requests[2][2]["page"] == 3
    jobs = _wait_done(client, [s["scene_job_id"] for s in first["submitted"]])
    assert [j["status"] for j in jobs] == ["done"] * 5, jobs

    search.requests.clear()
    second = _poll(client, sub["id"])
    assert second["submitted"] == [] and second["already_seen"] == 5
    window = search.requests[0][1]["datetime"][0]
    assert window.endswith("/..") and window < first["polled_at"]  # since the last poll (with an overlap)
    assert len(client.get("/v1/facilities/yard/observations").json()["observations"]) == 5
