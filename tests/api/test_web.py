"""API features for browser dashboards: cursor pagination, CSV lists, ETags, CORS, RFC 3339 times, the 90 % band,
and the dashboard page's static files (served by the service itself, nothing from a CDN)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytestmark = pytest.mark.databases("sqlite", "postgresql")  # each database test runs on both

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _seed(client: Any, n: int = 30, fid: str = "yard", surge_at: int | None = None) -> list[dict[str, Any]]:
    assert client.post("/v1/facilities", json={"id": fid, "name": "Yard", "kind": "rail"}).status_code == 201
    t0 = datetime(2021, 1, 1, 9, 30, tzinfo=UTC)
    rows = ["captured_at,railcar,container"]
    for i in range(n):
        railcar = 80 if i == surge_at else 10 + (i * 7) % 5
        rows.append(f"{(t0 + timedelta(days=7 * i)).isoformat()},{railcar},{'' if i % 4 == 0 else i % 3}")
    r = client.post(
        f"/v1/facilities/{fid}/observations", content="\n".join(rows) + "\n", headers={"Content-Type": "text/csv"}
    )
    assert r.status_code == 201, r.text
    observations: list[dict[str, Any]] = r.json()["observations"]
    return observations


def test_cursor_pagination_walks_the_series_both_ways(client: Any) -> None:
    imported = _seed(client, 25)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/facilities/yard/observations", params=params).json()
        seen += [o["id"] for o in body["observations"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == [o["id"] for o in imported]
    newest = client.get("/v1/facilities/yard/observations", params={"order": "desc", "limit": 1}).json()
    assert newest["observations"][0]["id"] == imported[-1]["id"] and newest["next_cursor"]
    second = client.get(
        "/v1/facilities/yard/observations", params={"order": "desc", "limit": 1, "cursor": newest["next_cursor"]}
    ).json()
    assert second["observations"][0]["id"] == imported[-2]["id"]
    bad = client.get("/v1/facilities/yard/observations", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]


def test_observations_csv_matches_json(client: Any) -> None:
    _seed(client, 12, surge_at=11)
    series = client.get("/v1/facilities/yard/observations").json()["observations"]
    r = client.get("/v1/facilities/yard/observations", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == len(series)
    for row, obs in zip(rows, series, strict=True):
        assert int(row["id"]) == obs["id"] and row["captured_at"] == obs["captured_at"]
        for cls in ("railcar", "container"):
            assert row[cls] == ("" if obs["counts"][cls] is None else str(obs["counts"][cls]))
            block = obs["anomaly"][cls]
            assert row[f"{cls}_score"] == ("" if not block or block["score"] is None else str(block["score"]))
    paged = client.get("/v1/facilities/yard/observations", params={"format": "csv", "limit": 5})
    assert len(list(csv.DictReader(io.StringIO(paged.text)))) == 5 and paged.headers["x-next-cursor"]


def test_anomalies_csv_matches_json(client: Any) -> None:
    _seed(client, 20, surge_at=19)
    events = client.get("/v1/facilities/yard/anomalies").json()["anomalies"]
    assert events and events[0]["class"] == "railcar" and events[0]["count"] == 80
    for path in ("/v1/facilities/yard/anomalies", "/v1/anomalies"):
        r = client.get(path, params={"format": "csv"})
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert r.headers["content-type"].startswith("text/csv") and len(rows) == len(events)
        assert rows[0]["observation_id"] == str(events[0]["observation_id"]) and rows[0]["class"] == "railcar"
        assert float(rows[0]["score"]) == events[0]["score"]


FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3"]


def test_csv_exports_neutralise_formulas(client: Any) -> None:
    name = FORMULAS[0]
    assert client.post("/v1/facilities", json={"id": "yard", "name": name, "kind": "rail"}).status_code == 201
    t0 = datetime(2021, 1, 1, tzinfo=UTC)
    obs = [
        {"captured_at": (t0 + timedelta(days=7 * i)).isoformat(), "counts": {"railcar": 80 if i == 19 else 10 + i % 3}}
        | {"source": FORMULAS[i % len(FORMULAS)]}
        for i in range(20)
    ]
    assert client.post("/v1/facilities/yard/observations", json={"observations": obs}).status_code == 201
    r = client.get("/v1/facilities/yard/observations", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["source"] for row in rows] == ["'" + o["source"] for o in obs]
    drops = [float(row["railcar_drop_score"]) for row in rows if row["railcar_drop_score"]]
    assert drops and all(not row["railcar_drop_score"].startswith("'") for row in rows)  # numbers stay numbers
    for path in ("/v1/facilities/yard/anomalies", "/v1/anomalies"):
        rows = list(csv.DictReader(io.StringIO(client.get(path, params={"format": "csv"}).text)))
        assert rows and all(row["facility_name"] == "'" + name and row["source"].startswith("'") for row in rows)


@pytest.mark.parametrize(
    "value, cell",
    [
        ("=1+1", "'=1+1"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-x", "'-x"),
        ("import", "import"),
        (-1.5, "-1.5"),
        (-3, "-3"),
        (True, "true"),
    ],
)
def test_csv_cell_neutralises_text_only(value: Any, cell: str) -> None:
    from app.api.web import _cell

    assert _cell(value) == cell


def test_etag_and_304(client: Any) -> None:
    _seed(client, 5)
    first = client.get("/v1/facilities/yard/observations")
    etag = first.headers["etag"]
    again = client.get("/v1/facilities/yard/observations", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    client.post(
        "/v1/facilities/yard/observations",
        json={"observations": [{"captured_at": "2022-01-01T00:00:00Z", "counts": {"railcar": 3}}]},
    )
    changed = client.get("/v1/facilities/yard/observations", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert client.get("/v1/facilities/ghost").headers.get("etag") is None  # errors carry none
    page = client.get("/dashboard")
    assert client.get("/dashboard", headers={"If-None-Match": page.headers["etag"]}).status_code == 304


def test_cors_is_off_by_default_and_configurable(client: Any, make_client: Callable[..., Any]) -> None:
    origin = {"Origin": "https://dash.example.org"}
    assert "access-control-allow-origin" not in client.get("/v1/facilities", headers=origin).headers
    cors = make_client(cors_origins="https://dash.example.org, https://other.example.org")
    r = cors.get("/v1/facilities", headers=origin)
    assert r.headers["access-control-allow-origin"] == "https://dash.example.org"
    assert "etag" in r.headers["access-control-expose-headers"].lower()
    pre = cors.options(
        "/v1/facilities",
        headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"},
    )
    assert pre.status_code == 200
    assert (
        "access-control-allow-origin"
        not in cors.get("/v1/facilities", headers={"Origin": "https://evil.example.org"}).headers
    )


def test_times_are_rfc3339_utc(client: Any) -> None:
    _seed(client, 20, surge_at=19)
    client.post(
        "/v1/facilities/yard/observations",
        json={"observations": [{"captured_at": "2023-06-01T12:00:00+09:00", "counts": {"railcar": 9}}]},
    )
    facility = client.get("/v1/facilities/yard").json()
    times = [facility["created_at"], *(f["created_at"] for f in client.get("/v1/facilities").json()["facilities"])]
    times += [o["captured_at"] for o in client.get("/v1/facilities/yard/observations").json()["observations"]]
    times += [e["captured_at"] for e in client.get("/v1/anomalies").json()["anomalies"]]
    assert times and all(RFC3339_UTC.match(t) for t in times), times
    assert "2023-06-01T03:00:00Z" in times


def test_anomaly_block_has_the_90_percent_band(client: Any) -> None:
    series = _seed(client, 20)
    block = series[-1]["anomaly"]["railcar"]
    assert block["expected_lo"] <= block["expected"] <= block["expected_hi"]
    assert block["expected_lo"] < block["expected_hi"]


def test_dashboard_is_served_offline(client: Any) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    assets = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', html)
    assert any(a.endswith("uPlot.iife.min.js") for a in assets) and any(a.endswith("dashboard.js") for a in assets)
    for asset in assets:
        r = client.get(asset)
        assert r.status_code == 200, asset
        if asset.endswith((".js", ".css")):
            assert "//cdn" not in r.text and "fonts.googleapis" not in r.text
    assert client.get("/dashboard/static/vendor/uplot/LICENSE").status_code == 200


def _walk(client: Any, path: str, key: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged list, following next_cursor with a small page size."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        r = client.get(path, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {key, "next_cursor"} and len(body[key]) <= limit
        out += body[key]
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        assert body[key], "a page with a next_cursor is not empty"
    raise AssertionError("paging did not end")


def test_facilities_page_by_id(client: Any) -> None:
    ids = [f"f{i:02d}" for i in range(7)]
    for fid in reversed(ids):
        assert client.post("/v1/facilities", json={"id": fid, "name": fid, "kind": "rail"}).status_code == 201
    assert [f["id"] for f in _walk(client, "/v1/facilities", "facilities", 3)] == ids
    first = client.get("/v1/facilities", params={"limit": 2}).json()
    # a facility created before the cursor's position does not shift the pages after it
    assert client.post("/v1/facilities", json={"id": "a0", "name": "a0", "kind": "rail"}).status_code == 201
    rest = client.get("/v1/facilities", params={"cursor": first["next_cursor"]}).json()
    assert [f["id"] for f in rest["facilities"]] == ids[2:] and rest["next_cursor"] is None
    assert client.get("/v1/facilities", params={"limit": 7}).json()["next_cursor"] is not None  # 8 now
    for bad in ("not-a-cursor", "WzFd"):  # garbage; a cursor of another list ([1])
        r = client.get("/v1/facilities", params={"cursor": bad})
        assert r.status_code == 422 and "cursor" in r.json()["detail"]


def test_anomalies_page_newest_first_each_once(client: Any) -> None:
    _seed(client, 30, surge_at=29)
    _seed(client, 12, fid="port", surge_at=11)
    low = {"min_score": 0.01, "min_drop_score": 0.01}
    full = client.get("/v1/facilities/yard/anomalies", params=low).json()
    assert len(full["anomalies"]) > 5 and full["next_cursor"] is None
    paged = _walk(client, "/v1/facilities/yard/anomalies", "anomalies", 2, **low)
    assert paged == full["anomalies"]
    keys = [(a["captured_at"], a["observation_id"], a["class"], a["direction"]) for a in paged]
    assert len(set(keys)) == len(keys)
    assert [k[:2] for k in keys] == sorted((k[:2] for k in keys), reverse=True)
    everywhere = client.get("/v1/anomalies").json()["anomalies"]
    assert {a["facility_id"] for a in everywhere} == {"yard", "port"}
    assert _walk(client, "/v1/anomalies", "anomalies", 1) == everywhere
    # CSV pages carry the cursor in X-Next-Cursor and continue where the JSON would
    r = client.get("/v1/facilities/yard/anomalies", params={**low, "format": "csv", "limit": 3})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["observation_id"]) for x in rows] == [a["observation_id"] for a in paged[:3]]
    nxt = client.get("/v1/facilities/yard/anomalies", params={**low, "cursor": r.headers["x-next-cursor"]}).json()
    assert nxt["anomalies"] == paged[3:]
    last = client.get("/v1/facilities/yard/anomalies", params={**low, "format": "csv", "limit": len(paged)})
    assert "x-next-cursor" not in last.headers
    # newer observations arriving do not disturb a walk that already started
    first = client.get("/v1/facilities/yard/anomalies", params={**low, "limit": 2}).json()
    newer = {"observations": [{"captured_at": "2024-01-01T00:00:00Z", "counts": {"railcar": 500}}]}
    assert client.post("/v1/facilities/yard/observations", json=newer).status_code == 201
    after = client.get("/v1/facilities/yard/anomalies", params={**low, "cursor": first["next_cursor"]}).json()
    assert after["anomalies"] == paged[2:]
    for path in ("/v1/facilities/yard/anomalies", "/v1/anomalies"):
        for bad in ("not-a-cursor", "WzFd"):
            r = client.get(path, params={"cursor": bad})
            assert r.status_code == 422 and "cursor" in r.json()["detail"]


def test_deliveries_page_newest_first(client: Any) -> None:
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201
    assert client.put("/v1/facilities/yard/alerts", json={"score": 0.01, "drop_score": 0.01}).status_code == 200
    t0 = datetime(2021, 1, 1, tzinfo=UTC)
    counts = [
        {"captured_at": (t0 + timedelta(days=7 * i)).isoformat(), "counts": {"railcar": 10 + (i * 7) % 5}}
        for i in range(20)
    ]
    r = client.post("/v1/facilities/yard/observations", json={"observations": counts})
    assert r.status_code == 201, r.text
    full = client.get("/v1/alerts/deliveries", params={"limit": 1000}).json()
    ids = [d["id"] for d in full["deliveries"]]
    assert len(ids) >= 3 and ids == sorted(ids, reverse=True) and full["next_cursor"] is None
    assert [d["id"] for d in _walk(client, "/v1/alerts/deliveries", "deliveries", 2)] == ids
    assert [d["id"] for d in _walk(client, "/v1/alerts/deliveries", "deliveries", 1, status="pending")] == ids
    for bad in ("not-a-cursor", "WyJ4Il0"):  # garbage; a facilities cursor (["x"])
        r = client.get("/v1/alerts/deliveries", params={"cursor": bad})
        assert r.status_code == 422 and "cursor" in r.json()["detail"]
