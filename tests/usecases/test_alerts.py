"""Alerts: thresholds, anomaly listings, and webhook delivery with retries (loopback receiver only)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from app.database import AlertDelivery, Store
from app.usecases import alerts, facilities, imports

pytestmark = pytest.mark.databases("sqlite", "postgresql")  # each database test runs on both

T0 = datetime(2022, 1, 3, tzinfo=UTC)


def _quiet(n: int = 30, start: datetime = T0) -> list[dict[str, Any]]:
    return [
        {"captured_at": (start + timedelta(days=9 * i)).isoformat(), "counts": {"railcar": 20 + (i * 7) % 5}}
        for i in range(n)
    ]


def _at(days: int, count: int) -> dict[str, Any]:
    return {"captured_at": (T0 + timedelta(days=days)).isoformat(), "counts": {"railcar": count}}


class _Receiver:
    """Loopback HTTP server answering each POST with the next status of ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append(json.loads(body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[[list[int]], _Receiver]]:
    made: list[_Receiver] = []

    def make(statuses: list[int]) -> _Receiver:
        made.append(_Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _facility(store: Store, fid: str = "yard") -> str:
    facilities.create_facility(store, fid, "Tumangang yard", "rail")
    return fid


def _import(store: Store, fid: str, rows: list[dict[str, Any]]) -> None:
    imports.import_observations(store, fid, imports.parse_json_import({"observations": rows}))


def test_anomalies_listed_with_default_thresholds_and_no_webhook_queue(store: Store) -> None:
    fid = _facility(store)
    _import(store, fid, _quiet() + [_at(300, 73), _at(310, 1)])
    with store.session() as s:
        found = alerts.list_anomalies(s, fid)
        assert alerts.get_thresholds(s, fid).configured is False
        assert s.query(AlertDelivery).count() == 0  # no thresholds set: listed, never sent
    assert {(a["direction"], a["count"]) for a in found} >= {("surge", 73), ("drop", 1)}
    surge = next(a for a in found if a["direction"] == "surge")
    assert surge["exceeds_history_max"] and surge["highest_in_days"] == surge["history_span_days"] == 300.0
    assert surge["score"] >= alerts.DEFAULT_SCORE_THRESHOLD and surge["reason"] == "highest in 300 days of history"


def test_thresholds_queue_deliveries_once_and_retry_with_backoff(store: Store, receiver: Any) -> None:
    fid = _facility(store)
    _import(store, fid, _quiet())
    with store.transaction() as s:
        alerts.set_thresholds(s, fid, 3.0, None)
    _import(store, fid, [_at(300, 73), _at(310, 2)])  # a surge (alert) and a drop (drops switched off)
    with store.session() as s:
        rows = s.query(AlertDelivery).all()
        assert [(d.class_name, d.direction, d.status) for d in rows] == [("railcar", "surge", "pending")]
    rx = receiver([503])
    now = datetime.now(UTC)
    r1 = alerts.deliver_due(store, rx.url, now=now, base_backoff_s=60)
    assert r1 == {"sent": 0, "retry": 1, "failed": 0}
    assert alerts.deliver_due(store, rx.url, now=now + timedelta(seconds=30)) == {"sent": 0, "retry": 0, "failed": 0}
    r2 = alerts.deliver_due(store, rx.url, now=now + timedelta(seconds=61))
    assert r2 == {"sent": 1, "retry": 0, "failed": 0}
    assert len(rx.bodies) == 2 and rx.bodies[-1]["count"] == 73 and rx.bodies[-1]["direction"] == "surge"
    assert rx.bodies[-1]["facility_name"] == "Tumangang yard" and rx.bodies[-1]["event"] == "anomaly"
    with store.session() as s:
        d = s.query(AlertDelivery).one()
        assert d.status == "sent" and d.attempts == 2 and d.last_error is None and d.sent_at is not None


def test_unreachable_webhook_keeps_the_delivery(store: Store, receiver: Any) -> None:
    fid = _facility(store)
    _import(store, fid, _quiet())
    with store.transaction() as s:
        alerts.set_thresholds(s, fid, 3.0, 3.0)
    _import(store, fid, [_at(300, 80)])
    rx = receiver([])
    dead_url = rx.url
    rx.close()  # nothing listens there any more: connection refused
    now = datetime.now(UTC)
    for i in range(3):
        alerts.deliver_due(store, dead_url, now=now + timedelta(hours=2 * i), max_backoff_s=3600, max_attempts=3)
    with store.session() as s:
        d = s.query(AlertDelivery).one()
        assert d.status == "failed" and d.attempts == 3 and d.last_error
        assert alerts.retry_failed(s) == 1
        s.commit()
    live = receiver([])
    assert alerts.deliver_due(store, live.url)["sent"] == 1
    assert alerts.backoff_seconds(1, 5, 3600) == 5 and alerts.backoff_seconds(4, 5, 3600) == 40
    assert alerts.backoff_seconds(20, 5, 3600) == 3600


def test_thresholds_left_out_are_off(make_client: Callable[..., Any]) -> None:
    client = make_client()
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201
    r = client.put("/v1/facilities/yard/alerts", json={"score": 2.5})
    assert r.status_code == 200, r.text
    assert r.json() == {"facility_id": "yard", "score": 2.5, "drop_score": None, "configured": True}
    r = client.put("/v1/facilities/yard/alerts", json={"drop_score": 4})
    assert r.status_code == 200 and (r.json()["score"], r.json()["drop_score"]) == (None, 4.0)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ThresholdsIn"]
    assert not schema.get("required")  # documented optional, and optional


def test_alert_routes_and_background_delivery(make_client: Callable[..., Any], receiver: Any) -> None:
    rx = receiver([500])
    client = make_client(webhook_url=rx.url, webhook_poll_s=0.05, webhook_backoff_s=0.05)
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201
    assert client.get("/v1/facilities/yard/alerts").json() == {
        "facility_id": "yard",
        "score": 3.0,
        "drop_score": 3.0,
        "configured": False,
    }
    r = client.put("/v1/facilities/yard/alerts", json={"score": 2.5, "drop_score": None})
    assert r.status_code == 200 and r.json()["configured"] is True and r.json()["drop_score"] is None
    assert client.put("/v1/facilities/yard/alerts", json={"score": -1, "drop_score": 1}).status_code == 422
    assert client.get("/v1/facilities/ghost/alerts").status_code == 404
    obs = _quiet() + [_at(300, 73)]
    assert client.post("/v1/facilities/yard/observations", json={"observations": obs}).status_code == 201
    found = client.get("/v1/facilities/yard/anomalies").json()["anomalies"]
    assert [(a["class"], a["direction"], a["count"]) for a in found] == [("railcar", "surge", 73)]
    assert client.get("/v1/anomalies", params={"since": "2022-10-01T00:00:00Z"}).json()["anomalies"] == found
    assert client.get("/v1/anomalies", params={"since": "2023-06-01T00:00:00Z"}).json() == {
        "anomalies": [],
        "next_cursor": None,
    }
    assert client.get("/v1/anomalies", params={"since": "yesterday"}).status_code == 422
    deadline = time.time() + 10
    while time.time() < deadline and not (len(rx.bodies) >= 2):
        time.sleep(0.05)
    assert len(rx.bodies) == 2  # one refused (500), then delivered on retry
    deadline = time.time() + 5
    sent: list[dict[str, Any]] = []
    while time.time() < deadline and not sent:
        sent = client.get("/v1/alerts/deliveries", params={"status": "sent"}).json()["deliveries"]
        time.sleep(0.05)
    assert sent and sent[0]["attempts"] == 2 and sent[0]["class"] == "railcar"
    assert client.delete("/v1/facilities/yard/alerts").status_code == 204
    assert client.get("/v1/facilities/yard/alerts").json()["configured"] is False


def test_processes_polling_one_database_send_each_delivery_once(store: Store, database_url: str) -> None:
    """Several service processes deliver webhooks from one database: each delivery is claimed by one of them."""
    fid = _facility(store)
    _import(store, fid, _quiet())
    with store.transaction() as s:
        alerts.set_thresholds(s, fid, 3.0, 3.0)
    _import(store, fid, [_at(300, 73), _at(310, 1), _at(320, 95)])
    with store.session() as s:
        pending = s.query(AlertDelivery).count()
    assert pending >= 2
    posted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(3)

    def post(url: str, body: bytes, timeout_s: float) -> int:
        time.sleep(0.05)  # both pollers have read the same due list by now
        with lock:
            posted.append(json.loads(body)["delivery_id"])
        return 200

    stores = [store, Store(database_url), Store(database_url)]

    def poll(st: Store) -> None:
        barrier.wait()
        alerts.deliver_due(st, "http://127.0.0.1:9/hook", post=post)

    threads = [threading.Thread(target=poll, args=(st,)) for st in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for st in stores[1:]:
        st.dispose()
    assert len(posted) == pending and len(set(posted)) == pending
    with store.session() as s:
        assert {d.status for d in s.query(AlertDelivery)} == {"sent"}
