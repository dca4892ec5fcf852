"""Alembic migrations: they make exactly the models' schema, upgrade databases made before migrations existed,
and survive concurrent start-ups (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from app.cli import main as cli_main
from app.database import Base, Store, make_engine, migrate
from app.usecases import facilities, imports, observations
from tests.support import DATA_DIR

pytestmark = pytest.mark.databases("sqlite", "postgresql")

DATA = DATA_DIR


def _schema_diff(store: Store) -> list:
    with store.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def _version(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return migrate.current_revision(conn)


def test_migrations_make_exactly_the_models_schema(database_url: str) -> None:
    """Fails when a model changes without a migration: add one (`alembic revision --autogenerate`)."""
    store = Store(database_url)
    try:
        assert _version(store) == migrate.head_revision()
        assert _schema_diff(store) == []
    finally:
        store.dispose()


def test_upgrade_again_is_a_no_op_and_keeps_data(database_url: str) -> None:
    store = Store(database_url)
    facilities.create_facility(store, "yard", "Yard", "rail")
    store.dispose()
    again = Store(database_url)
    try:
        assert migrate.upgrade(again.engine) == migrate.head_revision()
        assert [f.id for f in facilities.list_facilities(again)] == ["yard"]
    finally:
        again.dispose()


def test_concurrent_startups_migrate_once(database_url: str) -> None:
    """Several processes starting at once on an empty database: one migrates, the others wait and find it done."""
    errors: list[BaseException] = []
    stores: list[Store] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            stores.append(Store(database_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(stores) == 4
        with stores[0].engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        assert _schema_diff(stores[0]) == []
    finally:
        for st in stores:
            st.dispose()


# ------------------------------------------------------------------------- databases made before migrations


def _legacy_sqlite(path: Path, schema_file: str) -> str:
    """An SQLite database as an old release left it (its schema from tests/data), with a facility and history."""
    conn = sqlite3.connect(path)
    conn.executescript((DATA / schema_file).read_text())
    conn.execute(
        "INSERT INTO facilities (id, name, kind, created_at) VALUES ('old', 'Old yard', 'rail', "
        "'2021-01-01 00:00:00.000000')"
    )
    for i in range(12):
        conn.execute(
            "INSERT INTO observations (id, facility_id, captured_at, source, created_at) VALUES "
            f"({i + 1}, 'old', '2021-{i + 1:02d}-01 00:00:00.000000', 'import', '2021-01-01 00:00:00.000000')"
        )
        conn.execute(
            "INSERT INTO observation_counts (observation_id, class_name, count, history_size, "
            f"exceeds_history_max, reason) VALUES ({i + 1}, 'railcar', {10 + i % 3}, {i}, 0, 'old score')"
        )
    conn.execute(
        "INSERT INTO detections (observation_id, class_name, confidence, obb) VALUES "
        "(12, 'railcar', 0.9, '[[0, 0], [1, 0], [1, 1], [0, 1]]')"
    )
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


@pytest.mark.parametrize("schema_file", ["schema_pre_alembic.sql", "schema_v1.sql"])
def test_database_of_an_old_release_is_upgraded(tmp_path: Path, schema_file: str) -> None:
    """The previous release (create_all + added columns) and the first one (no anomaly v2 columns, footprints,
    jobs or alert tables) both end at the newest revision with the models' exact schema and their data."""
    url = _legacy_sqlite(tmp_path / "old.db", schema_file)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert migrate.current_revision(conn) is None
    engine.dispose()
    store = Store(url)
    try:
        assert _version(store) == migrate.head_revision()
        assert _schema_diff(store) == []
        series = observations.list_observations(store, "old")
        assert [o.counts["railcar"] for o in series] == [10 + i % 3 for i in range(12)]
        assert series[0].captured_at == datetime(2021, 1, 1, tzinfo=UTC)
        assert observations.get_observation(store, 12).detections[0].obb_lonlat is None
        # the upgraded database works as a new one: a later import rescores with the new columns filled
        rows = imports.parse_json_import(
            {"observations": [{"captured_at": "2022-01-01T00:00:00Z", "counts": {"railcar": 40}}]}
        )
        new = imports.import_observations(store, "old", rows)[0].anomaly["railcar"]
        assert new is not None and new.history_size == 12 and new.exceeds_history_max
        assert new.drop_score is not None and new.expected_hi is not None
        facilities.update_facility(store, "old", footprint=None)
    finally:
        store.dispose()


def test_db_cli_reports_and_upgrades(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.core.settings import get_settings

    url = _legacy_sqlite(tmp_path / "old.db", "schema_pre_alembic.sql")
    monkeypatch.setenv("WAGON_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        head = migrate.head_revision()
        assert cli_main(["db", "current"]) == 0
        assert f"revision none, newest {head} (needs" in capsys.readouterr().out
        assert cli_main(["db", "upgrade"]) == 0
        assert f"at revision {head}" in capsys.readouterr().out
        assert cli_main(["db", "current"]) == 0
        assert "up to date" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()


def test_reviews_revision_goes_down_and_up_keeping_other_data(database_url: str) -> None:
    """Revision 0004 (reviews, candidates, calibration) downgrades to 0003 without touching the rest, and back."""
    from alembic import command
    from sqlalchemy import inspect

    store = Store(database_url)
    facilities.create_facility(store, "yard", "Yard", "rail")
    imports.import_counts(store, "yard", [imports.ImportRow(datetime(2021, 1, 1, tzinfo=UTC), {"railcar": 5})])
    store.dispose()
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0003")
        inspector = inspect(engine)
        assert {"reviews", "facility_calibrations"}.isdisjoint(inspector.get_table_names())
        assert {"score", "counted"}.isdisjoint(c["name"] for c in inspector.get_columns("detections"))
        assert "verified_count" not in {c["name"] for c in inspector.get_columns("observation_counts")}
        assert migrate.upgrade(engine) == migrate.head_revision()
    finally:
        engine.dispose()
    again = Store(database_url)
    try:
        assert _schema_diff(again) == []
        assert [o.counts["railcar"] for o in observations.list_observations(again, "yard")] == [5]
    finally:
        again.dispose()


def test_import_jobs_revision_goes_down_and_up_keeping_upload_jobs(database_url: str) -> None:
    """Revision 0005 (job kinds, import payloads and results) downgrades to 0004 keeping the upload jobs (import
    jobs cannot exist there), and back."""
    from alembic import command
    from sqlalchemy import inspect

    from app import database as db

    store = Store(database_url)
    facilities.create_facility(store, "yard", "Yard", "rail")
    now = datetime(2024, 1, 1, tzinfo=UTC)
    with store.transaction() as session:
        session.add(db.Job(id="up", facility_id="yard", captured_at=now, image_sha256="a" * 64, created_at=now))
        session.add(db.Job(id="imp", facility_id="yard", kind="import", payload_sha256="b" * 64, created_at=now))
    store.dispose()
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0004")
        columns = {c["name"]: c for c in inspect(engine).get_columns("jobs")}
        assert {"kind", "payload_sha256", "result"}.isdisjoint(columns)
        assert not columns["captured_at"]["nullable"] and not columns["image_sha256"]["nullable"]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, image_sha256 FROM jobs")).all() == [("up", "a" * 64)]
        assert migrate.upgrade(engine) == migrate.head_revision()
    finally:
        engine.dispose()
    again = Store(database_url)
    try:
        assert _schema_diff(again) == []
        with again.session() as session:
            job = session.get(db.Job, "up")
            assert job is not None and job.kind == "upload" and job.captured_at == now
    finally:
        again.dispose()


def test_scene_sources_revision_goes_down_and_up_keeping_other_data(database_url: str) -> None:
    """Revision 0006 (observations.scene_source, scene_jobs) downgrades to 0005 without touching the rest, and
    back."""
    from alembic import command
    from sqlalchemy import inspect

    store = Store(database_url)
    facilities.create_facility(store, "yard", "Yard", "rail")
    imports.import_counts(store, "yard", [imports.ImportRow(datetime(2021, 1, 1, tzinfo=UTC), {"railcar": 5})])
    store.dispose()
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0005")
        inspector = inspect(engine)
        assert "scene_jobs" not in inspector.get_table_names()
        assert "scene_source" not in {c["name"] for c in inspector.get_columns("observations")}
        assert "reviews" in inspector.get_table_names()
        assert migrate.upgrade(engine) == migrate.head_revision()
        assert "scene_jobs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    again = Store(database_url)
    try:
        assert _schema_diff(again) == []
        assert [o.counts["railcar"] for o in observations.list_observations(again, "yard")] == [5]
    finally:
        again.dispose()


def test_subscriptions_revision_goes_down_and_up_keeping_other_data(database_url: str) -> None:
    """Revision 0007 (subscriptions, subscription_items) downgrades to 0006 without touching the rest, and back."""
    from alembic import command
    from sqlalchemy import inspect

    store = Store(database_url)
    facilities.create_facility(store, "yard", "Yard", "rail")
    imports.import_counts(store, "yard", [imports.ImportRow(datetime(2021, 1, 1, tzinfo=UTC), {"railcar": 5})])
    store.dispose()
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0006")
        inspector = inspect(engine)
        assert not {"subscriptions", "subscription_items"} & set(inspector.get_table_names())
        assert "scene_jobs" in inspector.get_table_names()
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == "0006"
        assert migrate.upgrade(engine) == migrate.head_revision() == "0007"
        assert {"subscriptions", "subscription_items"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    again = Store(database_url)
    try:
        assert _schema_diff(again) == []
        assert [o.counts["railcar"] for o in observations.list_observations(again, "yard")] == [5]
    finally:
        again.dispose()
