"""Real server processes on one database: two serving one facility at once, and one killed (SIGKILL) in the middle
of a stream of uploads. Run on SQLite, and on PostgreSQL when ``WAGON_TEST_POSTGRES_URL`` is set.

The servers are ``tests/procserver.py`` processes (uvicorn on loopback) with the blob test double as detector: an
upload of an image with ``k`` white blobs is an observation of ``k`` railcars and 0 containers with ``k``
detections, so what must be stored is known exactly.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.core import validation
from app.core.offline import CLASS_NAMES
from app.database import Store
from app.usecases import facilities, imports, observations
from tests.support import ADMIN_KEY
from tests.support.geodata import blob_scene
from tests.support.images import encode_image
from tests.support.procserver import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.databases("sqlite", "postgresql")]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HISTORY = 10  # imported counts before the uploads, so every upload is scored and rescores later ones


def _image(k: int) -> bytes:
    """A 400 x 300 PNG with ``k`` (1-40) white blobs that the blob detector counts as railcars."""
    centres = tuple((20.0 + 36.0 * (j % 10), 20.0 + 36.0 * (j // 10)) for j in range(k))
    return encode_image(blob_scene(400, 300, centres), "PNG")


AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _upload(client: httpx.Client, when: datetime, k: int) -> httpx.Response:
    return client.post(
        "/v1/facilities/yard/images",
        data={"captured_at": when.isoformat()},
        files={"file": ("chip.png", _image(k), "image/png")},
    )


def _prepare(database_url: str) -> Store:
    store = Store(database_url)
    facilities.create_facility(store, "yard", "Yard", "rail")
    rows = [
        imports.ImportRow(T0 - timedelta(days=HISTORY - i), {"railcar": 10 + i % 4, "container": 0})
        for i in range(HISTORY)
    ]
    imports.import_observations(store, "yard", rows)
    return store


def _env(tmp_path: Path, database_url: str, name: str) -> dict[str, str]:
    # Both servers start with the same first admin key (created once, whichever starts first); clients send it.
    return {
        "WAGON_ADMIN_KEY": ADMIN_KEY,
        "WAGON_DATABASE_URL": database_url,
        "WAGON_ARCHIVE_DIR": str(tmp_path / "originals"),
        "WAGON_JOBS_SQLITE_PATH": str(tmp_path / f"jobs-{name}.db"),
        "WAGON_JOBS_WORKER": "false",
    }


def _stored_scores(store: Store) -> dict[int, Any]:
    return {
        o.id: {c: (None if a is None else a.to_dict()) for c, a in o.anomaly.items()}
        for o in observations.list_observations(store, "yard")
    }


def _assert_scores_are_fresh(store: Store) -> None:
    """The stored anomaly scores are what rescoring the whole history now computes (no write lost a race)."""
    before = _stored_scores(store)
    with store.transaction() as session:
        observations.rescore(session, "yard", since=T0 - timedelta(days=HISTORY + 1), classes=CLASS_NAMES)
    assert _stored_scores(store) == before


def _assert_complete(store: Store) -> dict[int, dict[str, int | None]]:
    """Every observation whole: image ones have a count row per class and one detection row per counted object;
    no count or detection row without its observation. Returns the counts of every observation."""
    with store.engine.connect() as conn:
        for table in ("observation_counts", "detections"):
            orphans = conn.execute(
                text(
                    f"SELECT count(*) FROM {table} t LEFT JOIN observations o "
                    "ON o.id = t.observation_id WHERE o.id IS NULL"
                )
            ).scalar_one()
            assert orphans == 0, f"{orphans} orphan rows in {table}"
        n_det = dict(
            conn.execute(text("SELECT observation_id, count(*) FROM detections GROUP BY observation_id")).all()
        )
    counts: dict[int, dict[str, int | None]] = {}
    for obs in observations.list_observations(store, "yard"):
        counts[obs.id] = obs.counts
        if obs.has_image:
            assert all(obs.counts[c] is not None for c in CLASS_NAMES), obs
            assert n_det.get(obs.id, 0) == sum(v or 0 for v in obs.counts.values()), obs
    return counts


def _backend(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


def test_two_processes_upload_to_one_facility(database_url: str, tmp_path: Path) -> None:
    store = _prepare(database_url)
    servers = [ServerProcess(_env(tmp_path, database_url, f"s{i}"), tmp_path / f"server{i}.log") for i in range(2)]
    try:
        for s in servers:
            s.start()
        n_uploads, n_clients = 40, 4
        plan = [(T0 + timedelta(days=d), 1 + (7 * d) % 30) for d in range(n_uploads)]
        random.Random(6).shuffle(plan)  # out of time order: each upload rescores the ones after it
        acked: dict[int, tuple[str, int]] = {}
        failures: list[str] = []
        lock = threading.Lock()

        def client(c: int) -> None:
            server = servers[c % 2]
            with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as http:
                for when, k in plan[c::n_clients]:
                    r = _upload(http, when, k)
                    with lock:
                        if r.status_code == 201:
                            acked[r.json()["id"]] = (r.json()["captured_at"], k)
                        else:
                            failures.append(f"{r.status_code} {r.text[:300]}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.perf_counter() - t0
        assert not failures, failures
        assert len(acked) == n_uploads
        counts = _assert_complete(store)
        series = observations.list_observations(store, "yard")
        assert len(series) == HISTORY + n_uploads == len(counts)
        assert len({o.captured_at for o in series}) == len(series)  # each upload stored once
        for obs_id, (when, k) in acked.items():
            assert counts[obs_id] == {"railcar": k, "container": 0}
            assert validation.iso(next(o.captured_at for o in series if o.id == obs_id)) == when
        _assert_scores_are_fresh(store)
        print(
            f"\ntwo processes ({_backend(database_url)}): {n_uploads} uploads from {n_clients} clients over 2 "
            f"servers in {elapsed:.1f} s, {len(acked)} acknowledged, {len(series) - HISTORY} stored, "
            "scores equal a fresh rescore"
        )
    finally:
        for s in servers:
            s.stop()
        store.dispose()


def test_sigkill_mid_stream_keeps_every_acknowledged_upload_and_nothing_partial(
    database_url: str, tmp_path: Path
) -> None:
    store = _prepare(database_url)
    env = _env(tmp_path, database_url, "k")
    server = ServerProcess(env, tmp_path / "server.log").start()
    acked: dict[int, tuple[str, int]] = {}
    sent = [0]
    failures: list[str] = []
    lock = threading.Lock()
    n_clients = 3

    def client(c: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http:
            for i in range(c, 10_000, n_clients):
                when, k = T0 + timedelta(hours=i), 1 + (7 * i) % 30
                with lock:
                    sent[0] += 1
                try:
                    r = _upload(http, when, k)
                except httpx.HTTPError:
                    return  # the server is gone
                with lock:
                    if r.status_code == 201:
                        acked[r.json()["id"]] = (r.json()["captured_at"], k)
                    else:
                        failures.append(f"{r.status_code} {r.text[:300]}")

    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()  # with uploads in flight
        for t in threads:
            t.join(30)
        assert not failures, failures
        assert acked, "no upload succeeded before the kill"
        server = ServerProcess(env, tmp_path / "server.log").start()  # the same database, after the crash

        counts = _assert_complete(store)
        found = len(counts) - HISTORY
        for obs_id, (_when, k) in acked.items():
            assert counts.get(obs_id) == {"railcar": k, "container": 0}, f"acknowledged observation {obs_id} lost"
        assert len(acked) <= found <= sent[0]
        _assert_scores_are_fresh(store)
        with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http:  # and the restarted server works
            assert _upload(http, T0 - timedelta(days=100), 5).status_code == 201
            assert http.get("/v1/facilities/yard").json()["observation_count"] == HISTORY + found + 1
        print(
            f"\nkill test ({_backend(database_url)}): {sent[0]} uploads sent, {len(acked)} acknowledged before "
            f"SIGKILL, {found} found after restart ({found - len(acked)} committed but not acknowledged), "
            "0 partial, 0 orphan rows"
        )
    finally:
        server.stop()
        store.dispose()
