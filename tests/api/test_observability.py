"""Request ids, JSON access logs and Prometheus metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from app.core.logs import request_id_from
from tests.support.fakes import RecordingFakeDetector
from tests.support.images import encode_image, gradient_rgb


def _log_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def _metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in the exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return 0.0


def test_request_id_is_echoed_or_generated(client: Any) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123.trace"})
    assert r.headers["X-Request-ID"] == "abc-123.trace"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    for insane in (b"has space", b"x" * 200, b'quote"d', b"caf\xc3\xa9", b"<script>"):
        echoed = client.get("/healthz", headers={"X-Request-ID": insane})
        assert re.fullmatch(r"[0-9a-f]{32}", echoed.headers["X-Request-ID"]), insane


def test_request_id_rule() -> None:
    assert request_id_from("a1:b2/c3=d4@e5+f6") == "a1:b2/c3=d4@e5+f6"
    assert request_id_from(None) != request_id_from(None)
    assert request_id_from("") != ""


def test_refusals_carry_the_request_id(client: Any) -> None:
    r = client.get("/v1/facilities/ghost", headers={"X-Request-ID": "req-404"})
    assert r.status_code == 404 and r.headers["X-Request-ID"] == "req-404"


def test_one_json_access_line_per_request(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    client.post(
        "/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}, headers={"X-Request-ID": "req-1"}
    )
    client.get("/v1/facilities/ghost", headers={"X-Request-ID": "req-2"})
    access = [line for line in _log_lines(capsys.readouterr().err) if line["logger"] == "app.access"]
    assert [(a["method"], a["path"], a["status"], a["request_id"]) for a in access] == [
        ("POST", "/v1/facilities", 201, "req-1"),
        ("GET", "/v1/facilities/ghost", 404, "req-2"),
    ]
    assert all(isinstance(a["duration_ms"], float) and a["duration_ms"] >= 0 for a in access)
    assert access[1]["route"] == "/v1/facilities/{facility_id}" and access[0]["level"] == "INFO"


def test_plain_log_format(make_client: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    client = make_client(log_format="plain")
    capsys.readouterr()
    client.get("/healthz", headers={"X-Request-ID": "plain-1"})
    err = capsys.readouterr().err
    assert "[plain-1]: GET /healthz 200" in err and not _log_lines(err)


def test_metrics_by_route_template(client: Any) -> None:
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    for fid in ("yard", "ghost1", "ghost2"):
        client.get(f"/v1/facilities/{fid}")
    client.get("/no/such/path/123")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    route = "/v1/facilities/{facility_id}"
    assert _metric(text, "wagon_http_request_duration_seconds_count", route=route, method="GET", status="200") == 1
    assert _metric(text, "wagon_http_request_duration_seconds_count", route=route, method="GET", status="404") == 2
    assert (
        _metric(text, "wagon_http_request_duration_seconds_count", route="<unmatched>", method="GET", status="404") == 1
    )
    assert "ghost1" not in text and "/no/such/path" not in text  # raw paths never become labels
    assert _metric(text, "wagon_errors_total", kind="NotFoundError") == 2
    assert _metric(text, "wagon_inference_queue_depth") == 0
    assert "process_resident_memory_bytes" in text or "python_info" in text


def test_413_before_routing_is_labelled_by_template(make_client: Callable[..., Any]) -> None:
    client = make_client(max_upload_mb=0.01)
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    r = client.post(
        "/v1/facilities/yard/observations", content=b"x" * (3 * 1024 * 1024), headers={"content-type": "text/csv"}
    )
    assert r.status_code == 413
    text = client.get("/metrics").text
    assert (
        _metric(
            text,
            "wagon_http_request_duration_seconds_count",
            route="/v1/facilities/{facility_id}/observations",
            method="POST",
            status="413",
        )
        == 1
    )
    assert _metric(text, "wagon_errors_total", kind="body_too_large") == 1
    small = b"\x89PNG\r\n\x1a\n" + bytes(20_000)  # over the file limit, under the multipart allowance
    r = client.post(
        "/v1/facilities/yard/images",
        data={"captured_at": "2024-05-01T10:30:00Z"},
        files={"file": ("x.png", small, "image/png")},
    )
    assert r.status_code == 413  # refused by the route while archiving the file
    assert _metric(client.get("/metrics").text, "wagon_errors_total", kind="body_too_large") == 2


def test_inference_and_detection_metrics(make_client: Callable[..., Any]) -> None:
    client = make_client(detector=RecordingFakeDetector())
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    for day in (1, 2):  # two captures (the same image at the same time would be a repeat, answered 200)
        r = client.post(
            "/v1/facilities/yard/images",
            data={"captured_at": f"2024-05-0{day}T10:30:00Z"},
            files={"file": ("c.png", encode_image(gradient_rgb(), "PNG"), "image/png")},
        )
        assert r.status_code == 201, r.text
    bad = client.post(
        "/v1/facilities/yard/images",
        data={"captured_at": "2024-05-01T10:30:00"},
        files={"file": ("c.png", b"x", "image/png")},
    )
    assert bad.status_code == 422
    text = client.get("/metrics").text
    assert _metric(text, "wagon_inference_duration_seconds_count") == 2
    assert _metric(text, "wagon_detections_total", class_name="railcar") == 2
    assert _metric(text, "wagon_detections_total", class_name="container") == 0
    assert _metric(text, "wagon_errors_total", kind="InvalidInputError") == 1


def test_unhandled_error_is_json_500_with_request_id(
    make_client: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    client = make_client()

    def broken() -> None:
        raise RuntimeError("boom")

    client.app.state.runtime.store.ping = broken
    quiet = TestClient(client.app, raise_server_exceptions=False)
    r = quiet.get("/healthz", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500 and r.json()["detail"] == "internal error; quote request id req-500"
    assert r.headers["X-Request-ID"] == "req-500"
    lines = _log_lines(capsys.readouterr().err)
    assert any(line["request_id"] == "req-500" and "boom" in line.get("exc_info", "") for line in lines)
    assert _metric(client.get("/metrics").text, "wagon_errors_total", kind="unhandled") == 1
