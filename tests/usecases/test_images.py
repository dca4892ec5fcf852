"""Never double-count, never half-write: repeated uploads (same bytes/facility/time, or a repeated
``Idempotency-Key``) return the original observation; an upload or import that fails midway leaves nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from app import database as db
from app.core import validation
from app.core.settings import Settings
from app.database import Store
from app.usecases import facilities, images, imports, observations, scenes
from tests.support.geodata import BlobDetector, blob_scene, make_geotiff
from tests.support.images import encode_image

pytestmark = pytest.mark.databases("sqlite", "postgresql")

WHEN = "2024-05-01T10:30:00Z"


@pytest.fixture
def chips() -> tuple[bytes, bytes]:
    """Two different PNGs with three and two bright blobs."""
    return (
        encode_image(blob_scene(centres=((40.0, 40.0), (120.0, 60.0), (200.0, 100.0)))),
        encode_image(blob_scene(centres=((40.0, 40.0), (120.0, 60.0)))),
    )


@pytest.fixture
def api(make_client: Callable[..., Any]) -> Any:
    client = make_client(detector=BlobDetector())
    assert client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).status_code == 201
    return client


def _upload(
    client: Any, data: bytes, when: str = WHEN, key: str | None = None, facility: str = "yard", **headers: str
) -> Any:
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(
        f"/v1/facilities/{facility}/images",
        files={"file": ("chip.png", data, "image/png")},
        data={"captured_at": when},
        headers=headers,
    )


def _rows(store: Store) -> dict[str, int]:
    with store.session() as session:
        return {
            t.__tablename__: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in (db.Observation, db.ObservationCount, db.DetectionRow, db.AlertDelivery)
        }


def test_same_image_same_time_returns_the_original(api: Any, chips: tuple[bytes, bytes]) -> None:
    first = _upload(api, chips[0])
    assert first.status_code == 201, first.text
    again = _upload(api, chips[0], when="2024-05-01T12:30:00+02:00")  # the same instant, another offset
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["counts"] == first.json()["counts"] and len(again.json()["detections"]) == 3
    assert api.app.state.runtime.detector.calls == 1  # the repeat was not analysed again
    later = _upload(api, chips[0], when="2024-05-02T10:30:00Z")  # the same bytes at another time: a new point
    assert later.status_code == 201 and later.json()["id"] != first.json()["id"]
    assert _rows(api.app.state.runtime.store)["observations"] == 2


def test_idempotency_key(api: Any, chips: tuple[bytes, bytes]) -> None:
    first = _upload(api, chips[0], key="upload-0001")
    assert first.status_code == 201
    again = _upload(api, chips[0], key="upload-0001")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    clash = _upload(api, chips[1], key="upload-0001")
    assert clash.status_code == 422 and "Idempotency-Key" in clash.json()["detail"]
    clash = _upload(api, chips[0], when="2024-06-01T00:00:00Z", key="upload-0001")
    assert clash.status_code == 422
    assert _rows(api.app.state.runtime.store)["observations"] == 1
    # keys are scoped per API key: another uploader's "upload-0001" is its own
    secret = api.post("/v1/keys", json={"role": "uploader", "facilities": ["yard"]}).json()["key"]
    other = _upload(api, chips[1], key="upload-0001", Authorization=f"Bearer {secret}")
    assert other.status_code == 201, other.text
    assert _upload(api, chips[1], key="upload-0001", Authorization=f"Bearer {secret}").status_code == 200
    bad = _upload(api, chips[1], key="with space")
    assert bad.status_code == 422 and "Idempotency-Key" in bad.text


def test_concurrent_duplicates_store_one(store: Store, chips: tuple[bytes, bytes]) -> None:
    facilities.create_facility(store, "yard", "Yard", "rail")
    analysis = scenes.analyse_image(BlobDetector(), chips[0])
    when = validation.parse_timestamp(WHEN)
    results: list[tuple[observations.ObservationRecord, bool]] = []
    barrier = threading.Barrier(4)

    def upload() -> None:
        barrier.wait()
        results.append(images.record_upload(store, "yard", when, analysis))

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert len({rec.id for rec, _ in results}) == 1
    assert _rows(store)["observations"] == 1


def test_lost_race_is_answered_from_the_unique_index(
    store: Store, chips: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the check before the insert misses a concurrent duplicate, the index refuses the second row and the
    original is returned (the race made deterministic)."""
    facilities.create_facility(store, "yard", "Yard", "rail")
    analysis = scenes.analyse_image(BlobDetector(), chips[0])
    when = validation.parse_timestamp(WHEN)
    original, created = images.record_upload(store, "yard", when, analysis, ("k1", "abc"))
    assert created
    real = images.find_upload
    calls: list[int] = []

    def blind_first(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return None if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(images, "find_upload", blind_first)
    again, created = images.record_upload(store, "yard", when, analysis, ("k1", "abc"))
    assert not created and again.id == original.id and len(calls) == 2
    assert _rows(store)["observations"] == 1
    with pytest.raises(IntegrityError, match="(?i)unique"):  # the index itself, without the service's check
        images.record_analysis(store, "yard", when, analysis)


def test_failed_upload_leaves_nothing(
    api: Any, chips: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch, make_client: Callable[..., Any]
) -> None:
    """A failure after the observation and its detections are inserted (while scoring) rolls everything back."""
    store = api.app.state.runtime.store
    api.put("/v1/facilities/yard/alerts", json={"score": 0.1, "drop_score": 0.1})

    written: list[int] = []

    def broken_rescore(session: Any, *args: Any, **kwargs: Any) -> int:
        session.flush()
        written.append(int(session.scalar(select(func.count()).select_from(db.DetectionRow)) or 0))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(images, "rescore", broken_rescore)
    from fastapi.testclient import TestClient

    quiet = TestClient(api.app, raise_server_exceptions=False, headers=dict(api.headers))
    r = _upload(quiet, chips[0])
    assert r.status_code == 500 and written == [3]  # the detections were written, then rolled back
    assert _rows(store) == {"observations": 0, "observation_counts": 0, "detections": 0, "alert_deliveries": 0}
    monkeypatch.undo()
    assert _upload(api, chips[0]).status_code == 201  # the retry is stored once, as new
    assert _rows(store)["observations"] == 1


def test_failed_import_leaves_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    facilities.create_facility(store, "yard", "Yard", "rail")
    rows = imports.parse_csv_import("captured_at,railcar\n2021-01-01T00:00:00Z,4\n2021-02-01T00:00:00Z,5\n")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("lost the connection")

    monkeypatch.setattr(db, "insert_counts", broken)  # after the observations are inserted
    with pytest.raises(RuntimeError):
        imports.import_observations(store, "yard", rows)
    assert _rows(store)["observations"] == 0 and _rows(store)["observation_counts"] == 0


def test_import_names_every_bad_row_and_stores_nothing(api: Any) -> None:
    csv = (
        "captured_at,railcar,container\n2021-01-01T00:00:00Z,4,1\n2021-02-01T00:00:00,5,\n"
        "2021-03-01T00:00:00Z,6,\n2021-04-01T00:00:00Z,,\n2021-05-01T00:00:00Z,-1,2\n"
    )
    r = api.post("/v1/facilities/yard/observations", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 422
    body = r.json()
    assert [e.split(":")[0] for e in body["errors"]] == ["line 3", "line 5", "line 6"]
    assert "3 of 5 rows are invalid; nothing was imported" in body["detail"]
    assert api.get("/v1/facilities/yard").json()["observation_count"] == 0


def test_repeated_large_upload_joins_the_pending_job(make_client: Callable[..., Any], tmp_path: Path) -> None:
    client = make_client(detector=BlobDetector(), async_upload_mb=0.0001, jobs_worker=False)
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    scene = make_geotiff(tmp_path / "s.tif", blob_scene(), 0.5).path.read_bytes()
    other = make_geotiff(tmp_path / "t.tif", blob_scene(centres=((60.0, 60.0),)), 0.5).path.read_bytes()
    first = _upload(client, scene, key="scene-1")
    assert first.status_code == 202, first.text
    again = _upload(client, scene, key="scene-1")
    assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    assert _upload(client, scene).json()["job_id"] == first.json()["job_id"]  # same content, no key
    clash = _upload(client, other, key="scene-1")
    assert clash.status_code == 422 and "Idempotency-Key" in clash.json()["detail"]
    with client.app.state.runtime.store.session() as session:
        assert session.query(db.Job).count() == 1


def _back_to_revision_0001(st: Store) -> None:
    """Put a database back to the schema before idempotent uploads and API keys (Alembic revision 0001)."""
    with st.engine.begin() as conn:
        conn.execute(text("DROP INDEX uq_observations_image"))
        conn.execute(text("DROP INDEX uq_observations_idempotency"))
        conn.execute(text("ALTER TABLE observations DROP COLUMN idempotency_key"))
        conn.execute(text("ALTER TABLE observations DROP COLUMN idempotency_scope"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN idempotency_key"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN idempotency_scope"))
        conn.execute(text("DROP TABLE api_key_facilities"))
        conn.execute(text("DROP TABLE api_keys"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))


def test_database_at_revision_0001_gets_the_columns_and_unique_indexes(settings: Settings) -> None:
    st = Store(settings.database_url)
    _back_to_revision_0001(st)
    st.dispose()
    st = Store(settings.database_url)  # migrates 0001 -> head
    try:
        inspector = inspect(st.engine)
        assert {"idempotency_key", "idempotency_scope"} <= {c["name"] for c in inspector.get_columns("observations")}
        assert "idempotency_key" in {c["name"] for c in inspector.get_columns("jobs")}
        assert {"api_keys", "api_key_facilities"} <= set(inspector.get_table_names())
        unique = {i["name"] for i in inspector.get_indexes("observations") if i["unique"]}
        assert unique == {"uq_observations_image", "uq_observations_idempotency"}
    finally:
        st.dispose()


def test_migration_keeps_duplicate_uploads_already_stored(settings: Settings) -> None:
    st = Store(settings.database_url)
    _back_to_revision_0001(st)
    with st.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO facilities (id, name, kind, created_at) VALUES ('yard', 'Yard', 'rail', "
                "'2026-01-01 00:00:00')"
            )
        )
        for _ in range(2):  # the same image uploaded twice by an older release
            conn.execute(
                text(
                    "INSERT INTO observations (facility_id, captured_at, source, created_at, image_sha256) "
                    "VALUES ('yard', '2026-01-02 00:00:00', 'upload', '2026-01-02 00:00:00', 'ab12')"
                )
            )
    st.dispose()
    st = Store(settings.database_url)
    try:
        with st.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM observations")).scalar_one() == 2
        unique = {i["name"] for i in inspect(st.engine).get_indexes("observations") if i["unique"]}
        assert unique == {"uq_observations_idempotency"}  # the index the duplicates prevent is skipped
    finally:
        st.dispose()


def _locked(*args: Any, **kwargs: Any) -> Any:
    from sqlalchemy.exc import OperationalError

    raise OperationalError("INSERT INTO observations ...", {}, Exception("database is locked"))


def test_store_is_retried_while_the_database_is_locked(
    store: Store, chips: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An analysis done while another writer holds the lock is stored when the lock frees, not thrown away; when it
    never frees, the refusal says when to retry and nothing is stored."""
    facilities.create_facility(store, "yard", "Yard", "rail")
    analysis = scenes.analyse_image(BlobDetector(), chips[0])
    when = validation.parse_timestamp(WHEN)
    monkeypatch.setattr(images, "STORE_RETRY_PAUSE_S", 0.0)
    real = images.record_analysis
    calls: list[int] = []

    def locked_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return _locked() if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(images, "record_analysis", locked_once)
    record, created = images.record_upload(store, "yard", when, analysis)
    assert created and len(calls) == 2 and _rows(store)["observations"] == 1
    monkeypatch.setattr(images, "record_analysis", _locked)
    with pytest.raises(images.DatabaseBusyError) as refused:
        images.record_upload(store, "yard", validation.parse_timestamp("2024-06-01T00:00:00Z"), analysis)
    assert refused.value.retry_after_s > 0 and _rows(store)["observations"] == 1


@pytest.mark.databases("sqlite")  # SQLite's single write lock; imports as jobs are tested on both databases
def test_writers_during_a_large_import_all_store(store: Store) -> None:
    """Uploads, imports and key creation while a 5,000-row import is written all succeed, and nothing is lost."""
    from datetime import UTC, datetime, timedelta

    from app.usecases import keys

    facilities.create_facility(store, "yard", "Yard", "rail")
    facilities.create_facility(store, "port", "Port", "port")
    start = datetime(2000, 1, 1, tzinfo=UTC)
    big = [imports.ImportRow(start + timedelta(days=i), {"railcar": 10 + i % 9}) for i in range(5000)]
    analysis = scenes.analyse_image(BlobDetector(), encode_image(blob_scene(centres=((40.0, 40.0),))))
    errors: list[BaseException] = []

    def run(job: Callable[[], Any]) -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    jobs: list[Callable[[], Any]] = [lambda: imports.import_counts(store, "yard", big)]
    for i in range(5):
        at = start + timedelta(days=20_000 + i)
        jobs.append(lambda i=i, at=at: imports.import_counts(store, "port", [imports.ImportRow(at, {"container": i})]))
        jobs.append(lambda i=i: keys.create_key(store, "reader", name=f"key {i}"))
        jobs.append(lambda at=at: images.record_upload(store, "port", at + timedelta(hours=1), analysis))
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.session() as session:
        assert db.count_observations(session, "yard") == 5000
        assert db.count_observations(session, "port") == 10
        assert len(keys.list_keys(store)) == 5
