"""Backpressure and timeouts: at most N inferences at once, at most Q waiting, 503 + Retry-After beyond; a request
over its time limit answers 504 and stores nothing, and the inference slot is held until the thread really ends."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from app.core.backpressure import InferenceGate, OverloadedError
from tests.support.fakes import SlowFakeDetector
from tests.support.images import encode_image, gradient_rgb

PNG = encode_image(gradient_rgb(), "PNG")


def _facility(client: Any) -> None:
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201


_MINUTES = itertools.count()


def _upload(client: Any) -> Any:
    """Upload the chip at a new capture time each call (the same image and time would be a repeat, answered 200)."""
    when = datetime(2024, 5, 1, 10, 30, tzinfo=UTC) + timedelta(minutes=next(_MINUTES))
    return client.post(
        "/v1/facilities/yard/images",
        data={"captured_at": when.isoformat()},
        files={"file": ("chip.png", PNG, "image/png")},
    )


def _n_obs(client: Any) -> int:
    return client.get("/v1/facilities/yard").json()["observation_count"]


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _in_threads(fn: Callable[[], Any], n: int) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(fn())) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, results


def test_queue_full_is_503_with_retry_after(make_client: Callable[..., Any]) -> None:
    detector = SlowFakeDetector()
    client = make_client(detector=detector, max_concurrent_inferences=1, max_queued_inferences=2)
    _facility(client)
    gate = client.app.state.runtime.inference_gate
    threads, results = _in_threads(lambda: _upload(client), 3)
    try:
        assert detector.started.acquire(timeout=20)  # one pass running ...
        _wait_for(lambda: gate.waiting == 2)  # ... and two waiting: the queue is full
        metrics = client.get("/metrics").text
        assert "wagon_inference_queue_depth 2.0" in metrics and "wagon_inferences_running 1.0" in metrics
        refused = _upload(client)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        detail = refused.json()["detail"]
        assert "busy" in detail and "WAGON_MAX_QUEUED_INFERENCES" in detail
    finally:
        detector.release.set()
        for t in threads:
            t.join(30)
    assert sorted(r.status_code for r in results) == [201, 201, 201]
    assert detector.peak == 1  # never two passes at once
    assert _n_obs(client) == 3 and gate.waiting == 0 and gate.running == 0
    assert 'wagon_errors_total{kind="OverloadedError"} 1.0' in client.get("/metrics").text


def test_two_slots_run_two_passes_at_once(make_client: Callable[..., Any]) -> None:
    detector = SlowFakeDetector()
    client = make_client(detector=detector, max_concurrent_inferences=2, max_queued_inferences=0)
    _facility(client)
    threads, results = _in_threads(lambda: _upload(client), 2)
    try:
        assert detector.started.acquire(timeout=20) and detector.started.acquire(timeout=20)
        assert _upload(client).status_code == 503  # 2 running, no queue
    finally:
        detector.release.set()
        for t in threads:
            t.join(30)
    assert [r.status_code for r in results] == [201, 201] and detector.peak == 2


def test_timeout_is_504_stores_nothing_and_keeps_the_slot_until_the_pass_ends(make_client: Callable[..., Any]) -> None:
    detector = SlowFakeDetector()
    client = make_client(
        detector=detector, max_concurrent_inferences=1, max_queued_inferences=0, request_timeout_s=2.0
    )  # long enough for the pass to start on a busy machine
    _facility(client)
    gate = client.app.state.runtime.inference_gate
    r = _upload(client)
    assert r.status_code == 504, r.text
    assert detector.started.acquire(timeout=0)  # the pass had started when the request gave up
    assert "WAGON_REQUEST_TIMEOUT_S" in r.json()["detail"] and r.headers["X-Request-ID"]
    assert gate.running == 1  # the abandoned pass still runs in its thread and holds the only slot
    busy = _upload(client)
    assert busy.status_code == 503 and "Retry-After" in busy.headers
    detector.release.set()
    _wait_for(lambda: gate.running == 0 and gate.waiting == 0)
    assert _n_obs(client) == 0  # the abandoned pass's result was discarded
    assert _upload(client).status_code == 201  # the slot came back
    assert _n_obs(client) == 1
    assert 'wagon_errors_total{kind="timeout"} 1.0' in client.get("/metrics").text


def test_slow_body_upload_times_out(make_client: Callable[..., Any]) -> None:
    client = make_client(request_timeout_s=0.3)
    _facility(client)

    def dribble() -> Any:  # a client sending its body slower than the limit allows
        yield b"captured_at,railcar\n"
        time.sleep(1.0)
        yield b"2021-01-01T00:00:00Z,1\n"

    r = client.post("/v1/facilities/yard/observations", content=dribble(), headers={"content-type": "text/csv"})
    assert r.status_code == 504, r.text
    assert _n_obs(client) == 0


# ------------------------------------------------------------------------------------------- the gate alone


def test_gate_skips_a_pass_abandoned_before_it_started() -> None:
    ran: list[str] = []
    blocker = threading.Event()

    async def main() -> None:
        gate = InferenceGate(max_concurrent=1, max_queued=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.run, lambda: (blocker.wait(10), ran.append("first")))
            await anyio.sleep(0.05)
            with anyio.move_on_after(0.1):  # the caller gives up while waiting for the slot
                await gate.run(lambda: ran.append("second"))
            assert gate.waiting == 1  # its thread still waits for the slot, counted against the queue
            with pytest.raises(OverloadedError):
                await gate.run(lambda: ran.append("third"))
            blocker.set()
        for _ in range(200):
            if gate.waiting == 0 and gate.running == 0:
                break
            await anyio.sleep(0.01)
        assert (gate.waiting, gate.running) == (0, 0)
        await gate.run(lambda: ran.append("fourth"))

    anyio.run(main)
    assert ran == ["first", "fourth"]


def test_gate_retry_after_grows_with_the_backlog() -> None:
    gate = InferenceGate(max_concurrent=1, max_queued=10)
    assert gate.retry_after_s() >= 1
    gate._mean_pass_s = 4.0
    gate._admitted = 5
    assert gate.retry_after_s() == 20
