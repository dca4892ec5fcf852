"""Imports are never counted twice: a repeated ``Idempotency-Key`` replays the first result, and without a key a row
repeating a stored observation (same time, source and counts) is skipped, one contradicting it is refused (409)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from app.database import Store, count_observations
from app.usecases import facilities, imports

pytestmark = pytest.mark.databases("sqlite", "postgresql")

CSV = "captured_at,railcar,container\n2021-01-01T00:00:00Z,10,2\n2021-02-01T00:00:00Z,12,\n2021-03-01T00:00:00Z,9,1\n"


@pytest.fixture
def api(make_client: Any) -> Any:
    client = make_client()
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201
    return client


def _import(client: Any, body: str = CSV, key: str | None = None, **headers: str) -> Any:
    headers = {"Content-Type": "text/csv", **headers}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/v1/facilities/yard/observations", content=body, headers=headers)


def _stored(client: Any) -> int:
    with client.app.state.runtime.store.session() as session:
        return count_observations(session, "yard")


def test_repeated_key_replays_the_first_result(api: Any) -> None:
    first = _import(api, key="history-1")
    assert first.status_code == 201, first.text
    assert first.json()["imported"] == 3 and first.json()["duplicates"] == 0
    again = _import(api, key="history-1")
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [o["id"] for o in again.json()["observations"]] == [o["id"] for o in first.json()["observations"]]
    assert again.json()["imported"] == 3
    assert _stored(api) == 3


def test_key_reused_with_another_body_is_refused(api: Any) -> None:
    assert _import(api, key="history-1").status_code == 201
    other = _import(api, body=CSV.replace(",9,1", ",9,4"), key="history-1")
    assert other.status_code == 422, other.text
    assert "Idempotency-Key 'history-1'" in other.json()["detail"]
    assert _stored(api) == 3


def test_keys_are_scoped_per_api_key(api: Any) -> None:
    assert _import(api, key="history-1").status_code == 201
    secret = api.post("/v1/keys", json={"role": "uploader", "facilities": ["yard"]}).json()["key"]
    other = _import(api, key="history-1", Authorization=f"Bearer {secret}")
    assert other.status_code == 201, other.text  # its own key: a new import, whose rows are all stored already
    assert other.json()["imported"] == 0 and other.json()["duplicates"] == 3
    assert _stored(api) == 3


def test_bad_key_is_refused(api: Any) -> None:
    r = _import(api, key="with space")
    assert r.status_code == 422 and "Idempotency-Key" in r.text
    assert _stored(api) == 0


def test_repeated_rows_without_a_key_are_skipped(api: Any) -> None:
    assert _import(api).status_code == 201
    again = _import(api)
    assert again.status_code == 201, again.text
    assert again.json() == {"imported": 0, "duplicates": 3, "observations": []}
    more = _import(api, body=CSV + "2021-04-01T00:00:00Z,11,0\n")
    assert more.json()["imported"] == 1 and more.json()["duplicates"] == 3
    # the same rows as JSON, the same instant written with an offset: still the same observations
    rows = [{"captured_at": "2021-01-01T01:00:00+01:00", "counts": {"railcar": 10, "container": 2}}]
    r = api.post("/v1/facilities/yard/observations", json={"observations": rows})
    assert r.json()["imported"] == 0 and r.json()["duplicates"] == 1
    assert _stored(api) == 4


def test_contradicting_row_is_refused_and_nothing_stored(api: Any) -> None:
    assert _import(api).status_code == 201
    body = "captured_at,railcar\n2021-05-01T00:00:00Z,3\n2021-02-01T00:00:00Z,13\n"
    r = _import(api, body=body)
    assert r.status_code == 409, r.text
    assert "row 2" in r.json()["detail"] and "2021-02-01T00:00:00Z" in r.json()["detail"]
    assert _stored(api) == 3
    # a second reading at the same time is stored under another source
    other = "captured_at,railcar,source\n2021-02-01T00:00:00Z,13,analyst-b\n"
    assert _import(api, body=other).json()["imported"] == 1


def test_rows_repeated_within_one_import(api: Any) -> None:
    body = "captured_at,railcar\n2021-01-01T00:00:00Z,4\n2021-01-01T00:00:00Z,4\n"
    r = _import(api, body=body)
    assert r.json()["imported"] == 1 and r.json()["duplicates"] == 1
    clash = _import(api, body="captured_at,railcar\n2022-01-01T00:00:00Z,4\n2022-01-01T00:00:00Z,5\n")
    assert clash.status_code == 409 and "row 2" in clash.json()["detail"]
    assert _stored(api) == 1


def test_concurrent_imports_with_one_key_store_once(store: Store) -> None:
    facilities.create_facility(store, "yard", "Yard", "rail")
    rows = imports.parse_csv_import(CSV)
    results: list[imports.ImportResult] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        results.append(imports.import_counts(store, "yard", rows, ("k1", "batch-7"), "digest"))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.replayed for r in results) == [False, True, True, True]
    assert len({tuple(o.id for o in r.observations) for r in results}) == 1
    with store.session() as session:
        assert count_observations(session, "yard") == 3
