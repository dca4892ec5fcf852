"""Analyst reviews through the API: verified counts, the audit trail, calibration of later uploads, exact restores
on withdrawal, roles and every bad input (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from app import database as db
from app.usecases import observations
from tests.support.fakes import ScriptedCandidateDetector, railcar_box
from tests.support.images import encode_image, gradient_rgb

pytestmark = pytest.mark.databases("sqlite", "postgresql")

T0 = datetime(2024, 1, 1, 10, tzinfo=UTC)
#: 10 sure railcars, 3 false ones just above the default threshold, 4 faint true ones below it (candidates)
TRUE_SURE = [railcar_box(10 + 40 * (i % 5), 10 + 20 * (i // 5)) for i in range(10)]
FALSE_NEAR = [railcar_box(10 + 40 * i, 150) for i in range(3)]
TRUE_FAINT = [railcar_box(10 + 40 * i, 80) for i in range(4)]
BOXES = (
    [("railcar", 0.9, b) for b in TRUE_SURE]
    + [("railcar", 0.4, b) for b in FALSE_NEAR]
    + [("railcar", 0.2, b) for b in TRUE_FAINT]
)
TRUTH = TRUE_SURE + TRUE_FAINT


def _obj(box: tuple) -> dict[str, Any]:
    return {"class": "railcar", "obb": [list(p) for p in box]}


BOX_REVIEW = {"objects": [_obj(b) for b in TRUTH], "ignore": [], "exhaustive": True}


@pytest.fixture
def api(make_client: Callable[..., Any]) -> Any:
    client = make_client(detector=ScriptedCandidateDetector(BOXES))
    for fid in ("yard", "twin"):
        assert client.post("/v1/facilities", json={"id": fid, "name": fid, "kind": "rail"}).status_code == 201
    return client


def _png(seed: int) -> bytes:
    img = gradient_rgb(200, 200)
    img[0, 0] = seed % 256  # a different image each time
    img[0, 1] = seed // 256
    return encode_image(img)


def _upload(client: Any, facility: str, day: float, seed: int | None = None) -> dict[str, Any]:
    r = client.post(
        f"/v1/facilities/{facility}/images",
        files={"file": ("chip.png", _png(int(day) if seed is None else seed), "image/png")},
        data={"captured_at": (T0 + timedelta(days=day)).isoformat()},
    )
    assert r.status_code == 201, r.text
    return r.json()


def _history(client: Any, facility: str = "yard") -> list[dict[str, Any]]:
    r = client.get(f"/v1/facilities/{facility}/observations", params={"limit": 1000})
    return [{k: o[k] for k in ("id", "counts", "anomaly", "verified_counts")} for o in r.json()["observations"]]


def _key(client: Any, role: str) -> str:
    r = client.post("/v1/keys", json={"role": role})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def _stored_scores(client: Any, facility: str = "yard") -> list[tuple]:
    with client.app.state.runtime.store.session() as session:
        rows = session.query(db.ObservationCount).join(db.Observation).filter(db.Observation.facility_id == facility)
        return sorted((r.observation_id, r.class_name, r.count, r.score, r.drop_score, r.expected) for r in rows)


def _fresh_rescore_changes_nothing(client: Any, facility: str = "yard") -> None:
    before = _stored_scores(client, facility)
    with client.app.state.runtime.store.transaction() as session:
        observations.rescore(session, facility, T0 - timedelta(days=1), ("railcar", "container"))
    assert _stored_scores(client, facility) == before


def _seed_history(client: Any, days: int = 8) -> list[dict[str, Any]]:
    return [_upload(client, "yard", d) for d in range(days)]


def test_box_review_verifies_counts_rescores_and_keeps_the_detector_count(api: Any) -> None:
    obs = _seed_history(api, 6)
    first = obs[0]
    assert first["counts"]["railcar"] == 13 and len(first["detections"]) == 13
    r = api.put(f"/v1/observations/{first['id']}/review", json=BOX_REVIEW)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["verified_counts"] == {"railcar": 14, "container": 0}
    assert out["review"]["exhaustive"] is True and out["review"]["counts"] == {"railcar": 14, "container": 0}
    assert out["review"]["reviewer"] and out["review"]["status"] == "current"
    assert len(out["review"]["objects"]) == 14
    # the detector's count is kept (at the facility's calibrated threshold)
    assert out["counts"]["railcar"] == len(out["detections"])
    listed = _history(api)[0]
    assert listed["verified_counts"]["railcar"] == 14
    _fresh_rescore_changes_nothing(api)
    trail = api.get(f"/v1/observations/{first['id']}/reviews").json()["reviews"]
    assert [t["status"] for t in trail] == ["current"]


def test_withdrawing_the_only_review_restores_every_count_and_score_exactly(api: Any) -> None:
    obs = _seed_history(api, 8)
    before = _history(api)
    scores_before = _stored_scores(api)
    mid = obs[3]
    assert api.put(f"/v1/observations/{mid['id']}/review", json=BOX_REVIEW).status_code == 200
    assert _history(api) != before
    r = api.delete(f"/v1/observations/{mid['id']}/review")
    assert r.status_code == 200 and r.json()["review"] is None
    assert _history(api) == before
    assert _stored_scores(api) == scores_before
    trail = api.get(f"/v1/observations/{mid['id']}/reviews").json()["reviews"]
    assert [t["status"] for t in trail] == ["withdrawn"] and trail[0]["ended_by"]
    assert api.delete(f"/v1/observations/{mid['id']}/review").status_code == 404


def test_count_review_makes_the_verified_count_the_history(api: Any) -> None:
    obs = _seed_history(api, 8)
    last_expected = _history(api)[-1]["anomaly"]["railcar"]["expected"]
    for o in obs[:4]:
        r = api.put(f"/v1/observations/{o['id']}/review", json={"counts": {"railcar": 40}})
        assert r.status_code == 200 and r.json()["verified_counts"]["railcar"] == 40
    assert _history(api)[-1]["anomaly"]["railcar"]["expected"] > last_expected
    _fresh_rescore_changes_nothing(api)


def test_reviews_calibrate_later_uploads_of_that_facility_only(api: Any) -> None:
    obs = _seed_history(api, 2)
    for o in obs:
        assert api.put(f"/v1/observations/{o['id']}/review", json=BOX_REVIEW).status_code == 200
    cal = api.get("/v1/facilities/yard").json()["calibration"]["railcar"]
    assert cal["reviews"] == 2
    # the faint true railcars pull the threshold down, but two reviews move it only part of the way
    assert cal["fitted_threshold"] <= 0.2 < cal["threshold"] < 0.35
    assert api.get("/v1/facilities/twin").json()["calibration"] == {}
    later = _upload(api, "yard", 30)
    twin = _upload(api, "twin", 30)
    assert twin["counts"]["railcar"] == 13
    assert later["counts"]["railcar"] == len(later["detections"])
    detail = api.get(f"/v1/observations/{later['id']}", params={"include": "candidates"}).json()
    assert all(d["score"] >= cal["threshold"] for d in detail["detections"])
    assert all(d["score"] < cal["threshold"] for d in detail["candidates"])
    assert len(detail["detections"]) + len(detail["candidates"]) == len(BOXES)


def test_candidates_only_when_asked_for(api: Any) -> None:
    o = _upload(api, "yard", 0)
    plain = api.get(f"/v1/observations/{o['id']}").json()
    assert plain["candidates"] is None and len(plain["detections"]) == 13
    full = api.get(f"/v1/observations/{o['id']}", params={"include": "candidates"}).json()
    assert len(full["candidates"]) == 4 and all(c["score"] == 0.2 for c in full["candidates"])
    assert api.get(f"/v1/observations/{o['id']}", params={"include": "everything"}).status_code == 422


def test_a_new_review_replaces_the_old_one_which_stays_in_the_trail(api: Any) -> None:
    o = _upload(api, "yard", 0)
    assert api.put(f"/v1/observations/{o['id']}/review", json={"counts": {"railcar": 9}}).status_code == 200
    r = api.put(f"/v1/observations/{o['id']}/review", json=BOX_REVIEW)
    assert r.json()["verified_counts"]["railcar"] == 14
    trail = api.get(f"/v1/observations/{o['id']}/reviews").json()["reviews"]
    assert [(t["status"], t["counts"]["railcar"]) for t in trail] == [("replaced", 9), ("current", 14)]


def test_concurrent_reviews_of_one_observation_end_with_one_and_both_in_the_trail(api: Any) -> None:
    o = _seed_history(api, 4)[0]
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def review(n: int) -> None:
        barrier.wait()
        statuses.append(api.put(f"/v1/observations/{o['id']}/review", json={"counts": {"railcar": n}}).status_code)

    threads = [threading.Thread(target=review, args=(n,)) for n in (20, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200, 200]
    trail = api.get(f"/v1/observations/{o['id']}/reviews").json()["reviews"]
    assert sorted(t["status"] for t in trail) == ["current", "replaced"]
    current = next(t for t in trail if t["status"] == "current")
    assert api.get(f"/v1/observations/{o['id']}").json()["verified_counts"]["railcar"] == current["counts"]["railcar"]
    _fresh_rescore_changes_nothing(api)


def test_a_review_racing_an_upload_leaves_the_scores_of_a_fresh_rescore(api: Any) -> None:
    obs = _seed_history(api, 6)
    barrier = threading.Barrier(2)
    done: list[int] = []

    def review() -> None:
        barrier.wait()
        done.append(api.put(f"/v1/observations/{obs[2]['id']}/review", json=BOX_REVIEW).status_code)

    def upload() -> None:
        barrier.wait()
        _upload(api, "yard", 3.5, seed=1000)  # between the reviewed observation and the newest
        done.append(201)

    threads = [threading.Thread(target=review), threading.Thread(target=upload)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(done) == [200, 201]
    _fresh_rescore_changes_nothing(api)


def test_csv_export_carries_both_counts(api: Any) -> None:
    o = _upload(api, "yard", 0)
    api.put(f"/v1/observations/{o['id']}/review", json={"counts": {"railcar": 21}})
    r = api.get("/v1/facilities/yard/observations", params={"format": "csv"})
    row = next(csv.DictReader(io.StringIO(r.text)))
    assert row["railcar"] == "13" and row["railcar_verified"] == "21" and row["reviewed_by"]


def test_roles(api: Any, make_client: Callable[..., Any]) -> None:
    o = _upload(api, "yard", 0)
    url = f"/v1/observations/{o['id']}/review"
    for role, status in (("reader", 403), ("uploader", 403), ("analyst", 200)):
        key = (
            _key(api, role)
            if role != "uploader"
            else api.post("/v1/keys", json={"role": role, "facilities": ["yard"]}).json()["key"]
        )
        r = api.put(url, json={"counts": {"railcar": 5}}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == status, (role, r.text)
        if status == 403:
            assert "analyst" in r.json()["detail"]
    analyst = _key(api, "analyst")
    got = api.get(f"/v1/observations/{o['id']}", headers={"Authorization": f"Bearer {analyst}"})
    assert got.status_code == 200 and got.json()["review"]["reviewer"]


def _bad_bodies() -> list[tuple[Any, str]]:
    box = _obj(railcar_box(10, 10))
    return [
        ({}, "needs"),
        ([], "needs"),
        ({"objects": [{"class": "tank", "obb": box["obb"]}]}, "unknown class"),
        ({"objects": [{"class": "railcar", "obb": [[0, 0], [5, 0], [10, 0], [15, 0]]}]}, "degenerate"),
        ({"objects": [{"class": "railcar", "obb": [[0, 0], [1, 0], [1, 1]]}]}, "4"),
        ({"objects": [{"class": "railcar", "obb": [[190, 10], [260, 10], [260, 20], [190, 20]]}]}, "outside"),
        ({"objects": [{"class": "railcar", "obb": [[0, 0], ["a", 0], [1, 1], [0, 1]]}]}, "finite"),
        ('{"objects": [{"class": "railcar", "obb": [[0, 0], [NaN, 0], [1, 1], [0, 1]]}]}', "finite"),
        ('{"objects": [{"class": "railcar", "obb": [[0, 0], [1e999, 0], [1, 1], [0, 1]]}]}', "finite"),
        ({"objects": [box], "ignore": [[[0, 0], [1, 0], [0, 1]]]}, "degenerate"),
        ({"objects": [box], "exhaustive": "yes"}, "exhaustive"),
        ({"objects": [box], "classes": ["container"]}, "not among"),
        ({"objects": [box], "colour": "red"}, "unknown field"),
        ({"counts": {"railcar": -1}}, "whole number"),
        ({"counts": {"railcar": 1.5}}, "whole number"),
        ({"counts": {"tank": 3}}, "unknown class"),
        ({"counts": {}}, "counts"),
        ({"counts": {"railcar": 3}, "objects": []}, "either"),
        ({"ignore": []}, "objects"),
    ]


@pytest.mark.databases("sqlite")  # validation happens before the database is written
@pytest.mark.parametrize(("body", "reason"), _bad_bodies())
def test_bad_reviews_are_refused_with_a_reason_and_change_nothing(api: Any, body: Any, reason: str) -> None:
    o = _upload(api, "yard", 0)
    before = _history(api)
    url = f"/v1/observations/{o['id']}/review"
    if isinstance(body, str):  # raw JSON text (what a JSON encoder refuses to write)
        r = api.put(url, content=body, headers={"Content-Type": "application/json"})
    else:
        r = api.put(url, json=body)
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"]
    assert _history(api) == before
    assert api.get(f"/v1/observations/{o['id']}/reviews").json()["reviews"] == []


def test_review_of_unknown_or_imageless_observations(api: Any) -> None:
    assert api.put("/v1/observations/999999/review", json={"counts": {"railcar": 1}}).status_code == 404
    assert api.delete("/v1/observations/999999/review").status_code == 404
    assert api.get("/v1/observations/999999/reviews").status_code == 404
    imp = api.post(
        "/v1/facilities/yard/observations",
        json={"observations": [{"captured_at": "2023-01-01T00:00:00Z", "counts": {"railcar": 4}}]},
    ).json()["observations"][0]
    r = api.put(f"/v1/observations/{imp['id']}/review", json=BOX_REVIEW)
    assert r.status_code == 422 and "no image" in r.json()["detail"]
    ok = api.put(f"/v1/observations/{imp['id']}/review", json={"counts": {"railcar": 6, "container": 2}})
    assert ok.status_code == 200 and ok.json()["verified_counts"] == {"railcar": 6, "container": 2}
    assert ok.json()["counts"]["railcar"] == 4


def test_objects_outside_the_counted_footprint_are_not_verified(api: Any) -> None:
    """Boxes are drawn in the image; only those centred where the facility counts give the verified count."""
    o = _upload(api, "yard", 0)
    with api.app.state.runtime.store.transaction() as session:
        row = session.get(db.Observation, o["id"])
        row.geo = {"footprint_px": [[0, 0], [100, 0], [100, 200], [0, 200], [0, 0]], "window": [0, 0, 200, 200]}
    r = api.put(f"/v1/observations/{o['id']}/review", json=BOX_REVIEW)
    inside = sum(1 for b in TRUTH if np.mean([p[0] for p in b]) < 100)
    assert r.json()["verified_counts"]["railcar"] == inside < len(TRUTH)
