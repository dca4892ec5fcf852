"""Store and service: facilities, JSON/CSV imports (all-or-nothing), unknown counts, rescoring, image records."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from app.core import errors, validation
from app.database import Store, count_observations
from app.detection.imaging import decode_image
from app.detection.results import Detection, DetectionResult
from app.usecases import facilities, images, imports, observations
from tests.support.images import encode_image, gradient_rgb

T0 = datetime(2020, 1, 1, tzinfo=UTC)
pytestmark = pytest.mark.databases("sqlite", "postgresql")  # each database test runs on both


@pytest.fixture
def yard(store: Store) -> str:
    facilities.create_facility(store, "yard", "Test yard", "rail")
    return "yard"


def _rows(n: int, start: datetime, step_days: int = 7, cls: str = "railcar", value: int = 10) -> list[dict]:
    rng = np.random.default_rng(n)
    return [
        {
            "captured_at": (start + timedelta(days=step_days * i)).isoformat(),
            "counts": {cls: int(value + rng.integers(-3, 4))},
        }
        for i in range(n)
    ]


def _n_obs(store: Store) -> int:
    with store.session() as s:
        return count_observations(s)


# ------------------------------------------------------------------------------------------- facilities


def test_create_and_get_facility(store: Store) -> None:
    rec = facilities.create_facility(store, "tumangang", "Tumangang", "rail")
    assert rec.id == "tumangang" and rec.created_at.tzinfo is not None
    assert facilities.get_facility(store, "tumangang").name == "Tumangang"
    assert [f.id for f in facilities.list_facilities(store)] == ["tumangang"]
    with pytest.raises(errors.ConflictError):
        facilities.create_facility(store, "tumangang", "again", "port")
    with pytest.raises(errors.NotFoundError):
        facilities.get_facility(store, "nope")
    with pytest.raises(errors.InvalidInputError):
        facilities.create_facility(store, "Bad Id", "x", "rail")
    with pytest.raises(errors.InvalidInputError):
        facilities.create_facility(store, "ok", "x", "airport")


def test_sqlite_parent_directory_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'w.db'}"
    st = Store(url)
    assert (tmp_path / "a" / "b" / "w.db").exists()
    assert st.ping()
    st.dispose()


# ------------------------------------------------------------------------------------------- imports


def test_json_import_stores_utc_and_unknown_classes(store: Store, yard: str) -> None:
    rows = imports.parse_json_import(
        {
            "observations": [
                {"captured_at": "2021-03-04T18:30:00+09:00", "counts": {"railcar": 12}, "source": "analyst"},
                {"captured_at": "2021-03-05T09:30:00Z", "counts": {"railcar": None, "container": 4}},
            ]
        }
    )
    recs = imports.import_observations(store, yard, rows)
    assert len(recs) == 2
    first, second = recs
    assert first.captured_at == datetime(2021, 3, 4, 9, 30, tzinfo=UTC)
    assert first.source == "analyst" and second.source == "import"
    assert first.counts == {"railcar": 12, "container": None}
    assert second.counts == {"railcar": None, "container": 4}
    assert first.anomaly["container"] is None and first.anomaly["railcar"] is not None
    assert not first.has_image
    series = observations.list_observations(store, yard)
    assert [r.id for r in series] == [first.id, second.id]
    assert series[0].captured_at.tzinfo is not None


def test_csv_import_empty_cell_is_unknown(store: Store, yard: str) -> None:
    text = (
        "captured_at,railcar,container\n"
        + "".join(f"2021-01-{d:02d}T00:00:00Z,{10 + d % 3},\n" for d in range(1, 11))
        + "2021-01-11T00:00:00Z,,5\n"
        + "2021-01-12T00:00:00Z,40,0\n"
    )
    rows = imports.parse_csv_import(text)
    assert (
        len(rows) == 12 and rows[10].counts == {"container": 5} and rows[11].counts == {"railcar": 40, "container": 0}
    )
    recs = imports.import_observations(store, yard, rows)
    last = recs[-1]
    # railcar history: the 10 rows with a railcar count; the container-only row is not a zero.
    assert last.anomaly["railcar"] is not None
    assert last.anomaly["railcar"].history_size == 10
    assert last.anomaly["railcar"].exceeds_history_max is True
    assert last.anomaly["railcar"].score is not None and last.anomaly["railcar"].score > 3
    assert last.anomaly["container"] is not None and last.anomaly["container"].history_size == 1
    assert last.anomaly["container"].reason.startswith("cold start: 1 earlier observation")  # v2: no longer null


def test_csv_with_source_column_bom_and_blank_lines() -> None:
    rows = imports.parse_csv_import("\ufeffCaptured_At,source,railcar\n\n2021-01-01T00:00:00Z,sat,3\n\n")
    assert rows == [imports.ImportRow(datetime(2021, 1, 1, tzinfo=UTC), {"railcar": 3}, "sat")]


def test_bad_csv_rows_all_or_nothing(store: Store, yard: str) -> None:
    text = (
        "captured_at,railcar,container\n"
        "2021-01-01T00:00:00Z,10,2\n"
        "2021-01-02T00:00:00,10,2\n"  # line 3: naive
        "2021-01-03T00:00:00Z,ten,2\n"  # line 4: not a number
        "2021-01-04T00:00:00Z,,\n"  # line 5: no count
        "2021-01-05T00:00:00Z,-1,1,9\n"
    )  # line 6: extra cell
    with pytest.raises(errors.ImportValidationError) as err:
        imports.parse_csv_import(text)
    msg = str(err.value)
    for line in ("line 3", "line 4", "line 5", "line 6"):
        assert line in msg
    assert "line 2" not in msg
    assert "timezone" in msg and "'ten'" in msg
    assert len(err.value.errors) == 4
    assert _n_obs(store) == 0


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("railcar,container\n1,2\n", "captured_at"),
        ("captured_at,trucks\n2021-01-01T00:00:00Z,1\n", "unknown CSV column"),
        ("captured_at\n2021-01-01T00:00:00Z\n", "class column"),
        ("captured_at,railcar\n", "no rows"),
    ],
)
def test_bad_csv_headers(text: str, match: str) -> None:
    with pytest.raises(errors.InvalidInputError, match=match):
        imports.parse_csv_import(text)


def test_bad_json_rows_named(store: Store, yard: str) -> None:
    payload = {
        "observations": [
            {"captured_at": "2021-01-01T00:00:00Z", "counts": {"railcar": 1}},
            {"captured_at": "2021-01-02", "counts": {"railcar": 1}},
            {"captured_at": "2021-01-03T00:00:00Z", "counts": {"bus": 1}},
            {"captured_at": "2021-01-04T00:00:00Z", "counts": {"railcar": 1.5}},
            {"captured_at": "2021-01-05T00:00:00Z", "counts": {"railcar": True}},
            {"captured_at": "2021-01-06T00:00:00Z", "counts": {}},
            {"captured_at": "2021-01-07T00:00:00Z", "counts": {"railcar": 1}, "colour": "red"},
            "nonsense",
            {"captured_at": "2021-01-08T00:00:00Z", "counts": {"railcar": 2.0, "container": None}},
        ]
    }
    with pytest.raises(errors.ImportValidationError) as err:
        imports.parse_json_import(payload)
    bad = [e.split(":")[0] for e in err.value.errors]
    assert bad == [f"observations[{i}]" for i in (1, 2, 3, 4, 5, 6, 7)]
    assert "7 of 9 rows are invalid" in str(err.value)
    assert _n_obs(store) == 0
    assert imports.parse_json_import({"observations": [payload["observations"][8]]})[0].counts == {"railcar": 2}


@pytest.mark.parametrize("payload", [[], {"obs": []}, {"observations": {}}, {"observations": [], "x": 1}])
def test_bad_json_bodies(payload: object) -> None:
    with pytest.raises(errors.InvalidInputError):
        imports.parse_json_import(payload)


def test_import_into_unknown_facility_stores_nothing(store: Store) -> None:
    rows = imports.parse_json_import({"observations": _rows(3, T0)})
    with pytest.raises(errors.NotFoundError):
        imports.import_observations(store, "ghost", rows)
    assert _n_obs(store) == 0


def test_import_of_old_counts_rescores_later_observations(store: Store, yard: str) -> None:
    recent = imports.import_observations(
        store, yard, imports.parse_json_import({"observations": _rows(5, T0 + timedelta(days=1000))})
    )
    assert recent[0].anomaly["railcar"].score is None
    # v2: 1-4 earlier points are a cold start (weak prior, said so), no longer null
    assert all(r.anomaly["railcar"].reason.startswith("cold start") for r in recent[1:])
    assert recent[-1].anomaly["railcar"].history_size == 4

    imports.import_observations(store, yard, imports.parse_json_import({"observations": _rows(20, T0)}))
    series = observations.list_observations(store, yard)
    assert len(series) == 25
    later = series[20:]
    assert [r.id for r in later] == [r.id for r in recent]
    for i, r in enumerate(later):
        a = r.anomaly["railcar"]
        assert a is not None
        assert a.history_size == 20 + i
        assert a.score is not None
        assert a.history_span_days == pytest.approx(1000 + 7 * i)
    # and the imported old ones are scored against what precedes them only
    assert series[0].anomaly["railcar"].history_size == 0
    assert series[19].anomaly["railcar"].history_size == 19


def test_import_of_other_class_does_not_change_railcar_scores(store: Store, yard: str) -> None:
    imports.import_observations(store, yard, imports.parse_json_import({"observations": _rows(12, T0)}))
    before = observations.list_observations(store, yard)[-1].anomaly["railcar"]
    imports.import_observations(
        store, yard, imports.parse_json_import({"observations": _rows(12, T0 - timedelta(days=200), cls="container")})
    )
    after = observations.list_observations(store, yard)[-1].anomaly["railcar"]
    assert before == after


def test_list_observations_time_window(store: Store, yard: str) -> None:
    imports.import_observations(store, yard, imports.parse_json_import({"observations": _rows(10, T0)}))
    window = observations.list_observations(store, yard, T0 + timedelta(days=14), T0 + timedelta(days=28))
    assert [r.captured_at for r in window] == [T0 + timedelta(days=d) for d in (14, 21, 28)]
    with pytest.raises(errors.InvalidInputError):
        observations.list_observations(store, yard, T0 + timedelta(days=2), T0)


def test_parse_timestamp() -> None:
    assert validation.parse_timestamp("2021-01-01T09:00:00+09:00") == datetime(2021, 1, 1, tzinfo=UTC)
    assert validation.parse_timestamp("2021-01-01T00:00:00Z").tzinfo == UTC
    with pytest.raises(errors.InvalidInputError, match="no timezone"):
        validation.parse_timestamp("2021-01-01T00:00:00")
    with pytest.raises(errors.InvalidInputError, match="not an ISO 8601"):
        validation.parse_timestamp("yesterday")
    with pytest.raises(errors.InvalidInputError, match="required"):
        validation.parse_timestamp("")


# ------------------------------------------------------------------------------------------- image records


def _analysis(n_railcars: int, n_containers: int = 0) -> images.Analysis:
    """A hand-made analysis value (no model): boxes at known places."""
    dets = [
        Detection("railcar", 0.9, ((10.0 * i, 0.0), (10.0 * i + 8, 0.0), (10.0 * i + 8, 3.0), (10.0 * i, 3.0)))
        for i in range(n_railcars)
    ]
    dets += [Detection("container", 0.8, ((0.0, 20.0), (6.0, 20.0), (6.0, 22.0), (0.0, 22.0)))] * n_containers
    image = decode_image(encode_image(gradient_rgb(), "PNG"))
    result = DetectionResult(detections=dets, width=image.width, height=image.height, gsd_m=0.5, timing_ms=1.0)
    return images.Analysis(
        image=image,
        result=result,
        model_name="m",
        model_version="1",
        class_names=("railcar", "container"),
        gsd_m=0.5,
        decode_ms=1.0,
        detect_ms=1.0,
    )


def test_record_analysis_stores_detections_and_scores(store: Store, yard: str) -> None:
    imports.import_observations(store, yard, imports.parse_json_import({"observations": _rows(30, T0)}))
    when = datetime(2021, 6, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    rec = images.record_analysis(store, yard, when, _analysis(40, 2))
    assert rec.counts == {"railcar": 40, "container": 2}
    assert rec.captured_at == when.astimezone(UTC)
    assert rec.has_image and rec.image is not None and rec.image["width"] == 64
    assert rec.model == {"name": "m", "version": "1"}
    assert rec.anomaly["railcar"].exceeds_history_max
    assert rec.anomaly["railcar"].score > 3
    assert rec.anomaly["container"].history_size == 0
    again = observations.get_observation(store, rec.id)
    assert again.detections is not None and len(again.detections) == 42
    assert again.detections[0].obb == ((0.0, 0.0), (8.0, 0.0), (8.0, 3.0), (0.0, 3.0))
    assert again.to_dict(with_detections=True)["detections"][0]["class"] == "railcar"
    assert again.anomaly == rec.anomaly


def test_bulk_detection_insert_stores_what_orm_objects_stored(store: Store, yard: str) -> None:
    """The one-executemany detection insert stores byte-identical rows to one ORM object per detection (the
    former path), in order, and the answer built without reading them back equals what is read back."""
    from sqlalchemy import text

    from app import database as db

    lonlat = ((8.5, 47.25), (8.50001, 47.25), (8.50001, 47.25002), (8.5, 47.25002))
    dets = [
        Detection(
            "railcar",
            float(np.float32(0.8765)),
            tuple((float(np.float32(x + 0.1)), y) for x, y in ((10.0, 0.0), (18.0, 0.0), (18.0, 3.0), (10.0, 3.0))),
            lonlat,
        ),
        Detection("container", 1.0 / 3.0, ((0.0, 20.0), (6.0, 20.0), (6.0, 22.0), (0.0, 22.0))),
        Detection("railcar", 0.5, ((1e-9, 2.0), (3.0, 2.0), (3.0, 5.0), (1e-9, 5.0))),
    ]
    analysis = _analysis(0)
    analysis = images.Analysis(
        **{
            **analysis.__dict__,
            "result": DetectionResult(detections=dets, width=64, height=64, gsd_m=0.5, timing_ms=1.0),
        }
    )
    rec = images.record_analysis(store, yard, T0, analysis)
    with store.transaction() as session:  # the former path: ORM objects on a second observation
        ref = db.Observation(facility_id=yard, captured_at=T0 + timedelta(days=1), source="image")
        ref.detections = [
            db.DetectionRow(
                class_name=d.class_name,
                confidence=float(d.confidence),
                obb=[[float(x), float(y)] for x, y in d.obb],
                obb_lonlat=None if d.obb_lonlat is None else [[float(x), float(y)] for x, y in d.obb_lonlat],
            )
            for d in dets
        ]
        session.add(ref)
        session.flush()
        ref_id = ref.id

    def raw(oid: int) -> list[tuple]:
        with store.session() as session:
            return [
                tuple(r)
                for r in session.execute(
                    text(
                        "SELECT class_name, confidence, CAST(obb AS TEXT), CAST(obb_lonlat AS TEXT), "
                        "obb_lonlat IS NULL "
                        "FROM detections "
                        "WHERE observation_id = :o ORDER BY id"
                    ),
                    {"o": oid},
                ).all()
            ]

    assert raw(rec.id) == raw(ref_id)
    assert [r[0] for r in raw(rec.id)] == ["railcar", "container", "railcar"]
    stored = [replace(d, score=d.threshold_score) for d in dets]  # the score thresholds compare, made explicit
    assert rec.detections == observations.get_observation(store, rec.id).detections == stored


def test_record_analysis_unknown_facility_stores_nothing(store: Store) -> None:
    with pytest.raises(errors.NotFoundError):
        images.record_analysis(store, "ghost", T0, _analysis(3))
    assert _n_obs(store) == 0


def test_image_observation_is_history_for_later_imports(store: Store, yard: str) -> None:
    first = images.record_analysis(store, yard, T0, _analysis(5))
    imports.import_observations(
        store, yard, imports.parse_json_import({"observations": _rows(10, T0 + timedelta(days=1))})
    )
    series = observations.list_observations(store, yard)
    assert series[0].id == first.id
    assert series[-1].anomaly["railcar"].history_size == 10
    # the container count of 0 from the image is a known zero and is history for containers
    assert series[0].counts["container"] == 0


def test_get_unknown_observation(store: Store) -> None:
    with pytest.raises(errors.NotFoundError):
        observations.get_observation(store, 12345)


def test_pooled_prior_is_not_poisoned_by_one_absurd_count(store: Store) -> None:
    """One facility's single huge count (the largest accepted) leaves a new facility's cold start near what yards
    hold; counts are read as integers (no sums of squares that could overflow)."""
    facilities.create_facility(store, "big", "Big yard", "rail")
    history = [{"captured_at": f"2021-01-{d:02d}T00:00:00Z", "counts": {"railcar": 8 + d % 5}} for d in range(1, 21)]
    history.append(
        {"captured_at": "2021-01-25T00:00:00Z", "counts": {"railcar": imports.DEFAULT_MAX_COUNTS["railcar"]}}
    )
    imports.import_observations(store, "big", imports.parse_json_import({"observations": history}))
    facilities.create_facility(store, "new", "New yard", "rail")
    fresh = [{"captured_at": f"2021-02-0{d}T00:00:00Z", "counts": {"railcar": c}} for d, c in ((1, 6), (2, 14), (3, 9))]
    recs = imports.import_observations(store, "new", imports.parse_json_import({"observations": fresh}))
    score = recs[-1].anomaly["railcar"]
    assert score.reason.startswith("cold start") and "pooled from 1 rail" in score.reason
    assert score.expected is not None and 5 < score.expected < 20, score.expected


def test_facility_ids_sort_bytewise_in_a_postgresql_database_with_a_natural_language_locale() -> None:
    """Paging facilities by id orders as on SQLite even where the database sorts text by a locale (en-US: '_' and
    '-' would be nearly ignored)."""
    from tests.support.pgtools import require_postgres, temporary_database

    ids = ["yard-b", "yard_a", "yarda", "yard1", "yard-a", "yard9-z"]
    with temporary_database(require_postgres(), icu_locale="en-US") as url:
        st = Store(url)
        try:
            for fid in ids:
                facilities.create_facility(st, fid, fid, "rail")
            assert [f.id for f in facilities.list_facilities(st)] == sorted(ids)
            assert [f.id for f in facilities.list_facilities(st, after="yard-b")] == [
                i for i in sorted(ids) if i > "yard-b"
            ]
        finally:
            st.dispose()
