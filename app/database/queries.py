"""The queries the use cases need, each in one function taking the caller's session."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Table,
    bindparam,
    case,
    cast,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.database.models import (
    REVIEW_CURRENT,
    AlertThreshold,
    DetectionRow,
    Facility,
    FacilityCalibration,
    Observation,
    ObservationCount,
    Review,
)

# ---------------------------------------------------------------------------------------------------- queries


def get_facility(session: Session, facility_id: str) -> Facility | None:
    """The facility with this id, or ``None``."""
    return session.get(Facility, facility_id)


def lock_facility(session: Session, facility_id: str) -> Facility | None:
    """The facility, locked until the transaction ends against other writers of its history (``None``: unknown).

    Rescoring reads a facility's whole history and then writes scores, so two writers of one facility must not
    interleave. PostgreSQL (read committed) takes a row lock (``FOR NO KEY UPDATE``: inserts of rows that merely
    refer to the facility are not blocked) and every later statement sees what the previous holder committed;
    SQLite needs nothing more, as its write transactions already begin with ``BEGIN IMMEDIATE``.
    """
    return session.scalars(
        select(Facility)
        .where(Facility.id == facility_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).one_or_none()


def list_facilities(session: Session, after: str | None = None, limit: int | None = None) -> list[tuple[Facility, int]]:
    """Facilities ordered by id (those whose id sorts after ``after``; at most ``limit``), each with its number of
    observations."""
    n_obs = (
        select(Observation.facility_id, func.count(Observation.id).label("n"))
        .group_by(Observation.facility_id)
        .subquery()
    )
    stmt = (
        select(Facility, func.coalesce(n_obs.c.n, 0))
        .outerjoin(n_obs, n_obs.c.facility_id == Facility.id)
        .order_by(Facility.id)
    )
    if after is not None:
        stmt = stmt.where(Facility.id > after)
    if limit is not None:
        stmt = stmt.limit(limit)
    rows = session.execute(stmt).all()
    return [(f, int(n)) for f, n in rows]


def count_observations(session: Session, facility_id: str | None = None) -> int:
    """Number of observations (of one facility, or in total)."""
    stmt = select(func.count(Observation.id))
    if facility_id is not None:
        stmt = stmt.where(Observation.facility_id == facility_id)
    return int(session.scalar(stmt) or 0)


def get_observation(session: Session, observation_id: int) -> Observation | None:
    """One observation (counts and detections load lazily), or ``None``."""
    return session.get(Observation, observation_id)


def list_observations(
    session: Session, facility_id: str, start: datetime | None = None, end: datetime | None = None
) -> Sequence[Observation]:
    """A facility's observations with ``start <= captured_at <= end``, oldest first, counts loaded."""
    from sqlalchemy.orm import selectinload

    stmt = (
        select(Observation)
        .where(Observation.facility_id == facility_id)
        .options(selectinload(Observation.counts))
        .order_by(Observation.captured_at, Observation.id)
    )
    if start is not None:
        stmt = stmt.where(Observation.captured_at >= start)
    if end is not None:
        stmt = stmt.where(Observation.captured_at <= end)
    return session.scalars(stmt).all()


def find_image_observation(
    session: Session, facility_id: str, captured_at: datetime, image_sha256: str
) -> Observation | None:
    """The observation of these image bytes at this facility and time, or ``None``."""
    return session.scalars(
        select(Observation).where(
            Observation.facility_id == facility_id,
            Observation.captured_at == captured_at,
            Observation.image_sha256 == image_sha256,
        )
    ).first()


def find_idempotent_observation(session: Session, facility_id: str, scope: str, key: str) -> Observation | None:
    """The observation stored by the upload with this ``Idempotency-Key`` (of this API key, at this facility)."""
    return session.scalars(
        select(Observation).where(
            Observation.facility_id == facility_id,
            Observation.idempotency_scope == scope,
            Observation.idempotency_key == key,
        )
    ).first()


def observation_counts(session: Session, facility_id: str) -> list[tuple[int, datetime, str, dict[str, int]]]:
    """``(observation_id, captured_at, source, {class: count})`` of every observation of a facility (known counts
    only), oldest first."""
    rows = session.execute(
        select(
            Observation.id,
            Observation.captured_at,
            Observation.source,
            ObservationCount.class_name,
            ObservationCount.count,
        )
        .outerjoin(ObservationCount, ObservationCount.observation_id == Observation.id)
        .where(Observation.facility_id == facility_id)
        .order_by(Observation.captured_at, Observation.id)
    ).all()
    out: dict[int, tuple[int, datetime, str, dict[str, int]]] = {}
    for oid, at, source, cls, n in rows:
        entry = out.setdefault(int(oid), (int(oid), at, source, {}))
        if cls is not None:
            entry[3][cls] = int(n)
    return list(out.values())


def count_histories(
    session: Session, facility_id: str, classes: Sequence[str]
) -> dict[str, list[tuple[int, datetime, int, float | None, int | None]]]:
    """``class -> [(observation_id, captured_at, count, count_sd, verified_count), ...]``, oldest first (by
    captured_at, then id), of every known count of the given classes at a facility (one query; a class without
    counts is absent)."""
    rows = session.execute(
        select(
            ObservationCount.class_name,
            Observation.id,
            Observation.captured_at,
            ObservationCount.count,
            ObservationCount.count_sd,
            ObservationCount.verified_count,
        )
        .join(ObservationCount, ObservationCount.observation_id == Observation.id)
        .where(Observation.facility_id == facility_id, ObservationCount.class_name.in_(list(classes)))
        .order_by(Observation.captured_at, Observation.id)
    ).all()
    out: dict[str, list[tuple[int, datetime, int, float | None, int | None]]] = {}
    for cls, i, t, c, sd, v in rows:
        out.setdefault(cls, []).append(
            (int(i), t, int(c), None if sd is None else float(sd), None if v is None else int(v))
        )
    return out


def insert_detections(session: Session, observation_id: int, rows: Sequence[dict[str, Any]]) -> None:
    """Insert an observation's detection rows (dicts of ``class_name, confidence, obb, obb_lonlat``) with one
    executemany, in order (ids ascend in the given order), without creating ORM objects."""
    if rows:
        session.execute(insert(DetectionRow), [{"observation_id": observation_id, **r} for r in rows])


def count_rows(session: Session, class_name: str, observation_ids: Sequence[int]) -> list[ObservationCount]:
    """The stored counts of one class for the given observations (queried in chunks)."""
    out: list[ObservationCount] = []
    ids = list(observation_ids)
    for i in range(0, len(ids), 500):
        out.extend(
            session.scalars(
                select(ObservationCount).where(
                    ObservationCount.class_name == class_name, ObservationCount.observation_id.in_(ids[i : i + 500])
                )
            ).all()
        )
    return out


def history_fingerprint(session: Session, facility_id: str) -> tuple[int, ...]:
    """A cheap digest of a facility's stored observations, counts and reviews (how many, sum and largest of their
    ids; the counts and verified counts weighted by observation id; the reviews and those in force): it changes
    whenever an observation or count is added or deleted, a review recounts the facility's images or verifies a
    count, so an unchanged digest means the history read earlier is still current."""
    obs = session.execute(
        select(func.count(Observation.id), func.coalesce(func.sum(Observation.id), 0), func.max(Observation.id)).where(
            Observation.facility_id == facility_id
        )
    ).one()
    counts = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(cast(ObservationCount.count, BigInteger) * ObservationCount.observation_id), 0),
            func.coalesce(
                func.sum(cast(ObservationCount.verified_count + 1, BigInteger) * ObservationCount.observation_id), 0
            ),
        )
        .select_from(ObservationCount)
        .join(Observation, Observation.id == ObservationCount.observation_id)
        .where(Observation.facility_id == facility_id)
    ).one()
    reviews = session.execute(
        select(
            func.count(Review.id),
            func.coalesce(func.sum(case((Review.status == REVIEW_CURRENT, Review.id), else_=0)), 0),
        ).where(Review.facility_id == facility_id)
    ).one()
    return (
        int(obs[0]),
        int(obs[1]),
        int(obs[2] or 0),
        int(counts[0]),
        int(counts[1]),
        int(counts[2]),
        int(reviews[0]),
        int(reviews[1]),
    )


def insert_observations(session: Session, facility_id: str, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert observations of one facility (dicts of columns, ``facility_id`` included) with one executemany,
    without ORM objects; return their ids in the given order. The caller must hold the facility
    (:func:`lock_facility`, or SQLite's write lock): the new ids are the facility's above its largest before, and
    they ascend in the order inserted."""
    if not rows:
        return []
    before = session.scalar(select(func.max(Observation.id)).where(Observation.facility_id == facility_id)) or 0
    _executemany(session, Observation.__table__, rows)
    ids = session.scalars(
        select(Observation.id)
        .where(Observation.facility_id == facility_id, Observation.id > before)
        .order_by(Observation.id)
    ).all()
    if len(ids) != len(rows):
        raise RuntimeError(f"inserted {len(rows)} observations but found {len(ids)} new ids")
    return [int(i) for i in ids]


def insert_counts(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert count rows (dicts of every column, scores included) with one executemany, without ORM objects."""
    if rows:
        _executemany(session, ObservationCount.__table__, rows)


def _executemany(session: Session, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows (dicts with the same keys) into ``table`` with one DBAPI executemany, the column types' bind
    processing applied here (SQLAlchemy's own per-row parameter handling took most of a large import's time)."""
    conn = session.connection()
    dialect = conn.dialect
    keys = list(rows[0])
    compiled = insert(table).compile(dialect=dialect, column_keys=keys)
    names = list(compiled.positiontup or []) if compiled.positional else keys
    if set(names) - set(keys):
        raise ValueError(f"an insert into {table.name} needs {sorted(set(names) - set(keys))}")
    columns: list[Sequence[Any]] = [[r[k] for r in rows] for k in names]  # column-wise: the processors run in bulk
    for j, k in enumerate(names):
        process = table.c[k].type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            columns[j] = [process(v) for v in columns[j]]
    params: list[Any] = (
        list(zip(*columns, strict=True))
        if compiled.positional
        else [dict(zip(names, v, strict=True)) for v in zip(*columns, strict=True)]
    )
    conn.exec_driver_sql(str(compiled), params)


def update_scores(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Update stored count rows by primary key with one executemany: dicts with ``observation_id``,
    ``class_name`` and the same score columns each."""
    if not rows:
        return
    table = typing.cast(Table, ObservationCount.__table__)
    keys = ("observation_id", "class_name")
    columns = [k for k in rows[0] if k not in keys]
    stmt = (
        update(table)
        .where(table.c.observation_id == bindparam("key_observation_id"), table.c.class_name == bindparam("key_class"))
        .values({c: bindparam(c) for c in columns})
    )
    session.execute(
        stmt,
        [
            {"key_observation_id": r["observation_id"], "key_class": r["class_name"], **{c: r[c] for c in columns}}
            for r in rows
        ],
    )


# ------------------------------------------------------------------------------------------ anomalies, alerts


#: Most counts of one facility read for the pooled prior (its newest).
POOLED_PER_FACILITY = 500


def pooled_counts(
    session: Session, kind: str, class_name: str, exclude_facility: str, per_facility: int = POOLED_PER_FACILITY
) -> list[list[int]]:
    """The counts of a class at every other facility of a kind (each facility's newest ``per_facility``), one
    list per facility."""
    newest = func.row_number().over(partition_by=Observation.facility_id, order_by=Observation.captured_at.desc())
    ranked = (
        select(Observation.facility_id.label("fid"), ObservationCount.count.label("n"), newest.label("rank"))
        .join(ObservationCount, ObservationCount.observation_id == Observation.id)
        .join(Facility, Facility.id == Observation.facility_id)
        .where(
            Facility.kind == kind,
            ObservationCount.class_name == class_name,
            Observation.facility_id != exclude_facility,
        )
        .subquery()
    )
    rows = session.execute(select(ranked.c.fid, ranked.c.n).where(ranked.c.rank <= per_facility)).all()
    out: dict[str, list[int]] = {}
    for fid, n in rows:
        out.setdefault(fid, []).append(int(n))
    return list(out.values())


def get_thresholds(session: Session, facility_id: str) -> AlertThreshold | None:
    """A facility's alert thresholds, or ``None`` when none are set."""
    return session.get(AlertThreshold, facility_id)


def all_thresholds(session: Session) -> dict[str, AlertThreshold]:
    """Every facility's thresholds, by facility id."""
    return {t.facility_id: t for t in session.scalars(select(AlertThreshold)).all()}


def anomalous_counts(
    session: Session,
    facility_id: str | None,
    since: datetime | None,
    min_score: float | None,
    min_drop_score: float | None,
    limit: int,
    start: tuple[datetime, int, str] | None = None,
    include_start: bool = True,
) -> list[tuple[ObservationCount, Observation]]:
    """Counts whose score >= ``min_score`` or drop score >= ``min_drop_score``, newest first (by captured_at,
    observation id, then class name); with ``start`` (captured_at, observation id, class), only the counts from
    that one on in this order (``include_start`` false: after it)."""
    from sqlalchemy import and_, or_

    conds = []
    if min_score is not None:
        conds.append(ObservationCount.score >= min_score)
    if min_drop_score is not None:
        conds.append(ObservationCount.drop_score >= min_drop_score)
    if not conds:
        return []
    stmt = (
        select(ObservationCount, Observation)
        .join(Observation, ObservationCount.observation_id == Observation.id)
        .where(or_(*conds))
        .order_by(Observation.captured_at.desc(), Observation.id.desc(), ObservationCount.class_name)
        .limit(limit)
    )
    if facility_id is not None:
        stmt = stmt.where(Observation.facility_id == facility_id)
    if since is not None:
        stmt = stmt.where(Observation.captured_at >= since)
    if start is not None:
        at, obs_id, cls = start
        same = ObservationCount.class_name >= cls if include_start else ObservationCount.class_name > cls
        stmt = stmt.where(
            or_(
                Observation.captured_at < at,
                and_(Observation.captured_at == at, or_(Observation.id < obs_id, and_(Observation.id == obs_id, same))),
            )
        )
    return [(c, o) for c, o in session.execute(stmt).all()]


def recent_image_gsds(session: Session, facility_id: str, limit: int) -> list[tuple[float, dict[str, Any] | None]]:
    """``(gsd_m, geo)`` of the facility's newest ``limit`` image observations that have a GSD, newest upload first."""
    rows = session.execute(
        select(Observation.gsd_m, Observation.geo)
        .where(
            Observation.facility_id == facility_id,
            Observation.image_sha256.is_not(None),
            Observation.gsd_m.is_not(None),
        )
        .order_by(Observation.id.desc())
        .limit(limit)
    ).all()
    return [(float(gsd), geo) for gsd, geo in rows]


# ------------------------------------------------------------------------------------------ reviews, calibration


def current_review(session: Session, observation_id: int) -> Review | None:
    """The review in force for an observation, or ``None``."""
    return session.scalars(
        select(Review).where(Review.observation_id == observation_id, Review.status == REVIEW_CURRENT)
    ).first()


def current_reviews(session: Session, observation_ids: Sequence[int]) -> dict[int, Review]:
    """The reviews in force for the given observations (queried in chunks), by observation id."""
    out: dict[int, Review] = {}
    ids = list(observation_ids)
    for i in range(0, len(ids), 500):
        for r in session.scalars(
            select(Review).where(Review.observation_id.in_(ids[i : i + 500]), Review.status == REVIEW_CURRENT)
        ):
            out[r.observation_id] = r
    return out


def review_trail(session: Session, observation_id: int) -> list[Review]:
    """Every review of an observation, current or not, oldest first (the audit trail)."""
    return list(session.scalars(select(Review).where(Review.observation_id == observation_id).order_by(Review.id)))


def facility_reviews(session: Session, facility_id: str) -> list[Review]:
    """The reviews in force at a facility, oldest first."""
    return list(
        session.scalars(
            select(Review).where(Review.facility_id == facility_id, Review.status == REVIEW_CURRENT).order_by(Review.id)
        )
    )


def facility_calibrations(session: Session, facility_id: str) -> dict[str, FacilityCalibration]:
    """A facility's stored calibration, by class (empty: never reviewed)."""
    return {
        c.class_name: c
        for c in session.scalars(select(FacilityCalibration).where(FacilityCalibration.facility_id == facility_id))
    }


def other_calibrations(session: Session, facility_id: str) -> list[FacilityCalibration]:
    """The stored calibrations of every other facility (for the pooled prior)."""
    return list(
        session.scalars(
            select(FacilityCalibration).where(
                FacilityCalibration.facility_id != facility_id, FacilityCalibration.reviews > 0
            )
        )
    )
