"""Text and numbers that SQLite stores but PostgreSQL refuses (NUL characters, integers past 32 bits) are refused
with 422 before they reach the database, on both databases (found by the fuzzer on PostgreSQL)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

pytestmark = pytest.mark.databases("sqlite", "postgresql")

NUL = "a\x00b"


def _cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


@pytest.fixture
def api(make_client: Any) -> Any:
    client = make_client()
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/v1/observations/2147483648",
        "/v1/observations/56882699850418/detections.geojson",
        "/v1/observations/7849660853/overlay.png",
    ],
)
def test_ids_past_the_database_range_are_refused(api: Any, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "path",
    ["/v1/facilities/a%00b", "/v1/facilities/a%00b/observations", "/v1/facilities/a%00b/alerts", "/v1/jobs/a%00b"],
)
def test_nul_in_path_ids_is_refused_or_unknown(api: Any, path: str) -> None:
    assert api.get(path).status_code in (404, 422)


def test_nul_in_revoked_key_id(api: Any) -> None:
    assert api.delete("/v1/keys/a%00b").status_code in (404, 422)


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("post", "/v1/facilities", {"id": "new", "name": NUL, "kind": "rail"}),
        ("patch", "/v1/facilities/yard", {"name": NUL}),
        ("post", "/v1/keys", {"role": "reader", "name": NUL}),
        ("post", "/v1/keys", {"role": "uploader", "facilities": [NUL]}),
        (
            "post",
            "/v1/facilities/yard/observations",
            {"observations": [{"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": 1}, "source": NUL}]},
        ),
    ],
)
def test_nul_in_json_text_is_refused(api: Any, method: str, path: str, body: Any) -> None:
    r = getattr(api, method)(path, json=body)
    assert r.status_code == 422, r.text
    assert "control character" in r.text or "pattern" in r.text


def test_nul_in_csv_cells_is_refused(api: Any) -> None:
    csv_text = f"captured_at,railcar,source\n2021-01-01T00:00:00Z,3,{NUL}\n"
    r = api.post("/v1/facilities/yard/observations", content=csv_text, headers={"Content-Type": "text/csv"})
    assert r.status_code == 422, r.text
    assert "line 2" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/facilities", "/v1/anomalies", "/v1/facilities/yard/anomalies"])
@pytest.mark.parametrize("key", [[NUL], ["2021-01-01T00:00:00Z", 2**40, "railcar"], ["2021-01-01T00:00:00Z", 1, NUL]])
def test_crafted_cursors_are_refused(api: Any, path: str, key: list[Any]) -> None:
    assert api.get(path, params={"cursor": _cursor(key)}).status_code == 422


@pytest.mark.parametrize("params", [{"start": NUL}, {"since": NUL}, {"cursor": NUL}])
def test_nul_in_query_text_is_refused(api: Any, params: dict[str, str]) -> None:
    path = "/v1/anomalies" if "since" in params else "/v1/facilities/yard/observations"
    assert api.get(path, params=params).status_code == 422
