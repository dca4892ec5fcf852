"""Scenes use cases: the GSD a facility's earlier uploads were given stands in for one an upload does not give."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.usecases import scenes
from tests.support.geodata import BlobDetector, blob_scene
from tests.support.images import encode_image


def _upload(client: Any, when: str, **data: str) -> dict[str, Any]:
    r = client.post(
        "/v1/facilities/yard/images",
        files={"file": ("a.png", encode_image(blob_scene()))},
        data={"captured_at": when, **data},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _store(client: Any) -> Any:
    return client.app.state.runtime.store


def test_upload_without_gsd_takes_the_gsd_the_facility_was_given(make_client: Callable[..., Any]) -> None:
    client = make_client(detector=BlobDetector())
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    assert scenes.facility_gsd(_store(client), "yard") is None  # no upload yet
    first = _upload(client, "2024-05-01T10:00:00Z")
    assert first["image"]["gsd_source"] is None  # nothing to go by (the blobs are too few to estimate from)
    assert scenes.facility_gsd(_store(client), "yard") is None
    _upload(client, "2024-05-02T10:00:00Z", gsd_m="0.5")
    _upload(client, "2024-05-03T10:00:00Z", gsd_m="0.51")
    assert scenes.facility_gsd(_store(client), "yard") == 0.505
    later = _upload(client, "2024-05-04T10:00:00Z")
    assert later["image"]["gsd_source"] == "facility" and later["image"]["gsd_m"] == 0.505
    # a borrowed GSD is not a given one: the facility's GSD still rests on the two given uploads only
    assert scenes.facility_gsd(_store(client), "yard") == 0.505
    given = _upload(client, "2024-05-05T10:00:00Z", gsd_m="0.3")  # the request still overrides
    assert given["image"]["gsd_source"] == "request" and given["image"]["gsd_m"] == 0.3


def test_disagreeing_uploads_give_the_facility_no_gsd(make_client: Callable[..., Any]) -> None:
    client = make_client(detector=BlobDetector())
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    _upload(client, "2024-05-01T10:00:00Z", gsd_m="0.5")
    _upload(client, "2024-05-02T10:00:00Z", gsd_m="0.3")  # another product: more than 5% apart
    assert scenes.facility_gsd(_store(client), "yard") is None
    later = _upload(client, "2024-05-03T10:00:00Z")
    assert later["image"]["gsd_source"] is None and later["image"]["gsd_m"] is None


def test_only_the_newest_given_uploads_count(make_client: Callable[..., Any]) -> None:
    client = make_client(detector=BlobDetector())
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    _upload(client, "2024-04-01T10:00:00Z", gsd_m="0.3")  # an old product, pushed out by five newer uploads
    for day in range(1, 6):
        _upload(client, f"2024-05-0{day}T10:00:00Z", gsd_m="0.5")
    assert scenes.facility_gsd(_store(client), "yard") == 0.5
