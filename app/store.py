"""Persistence: SQLAlchemy 2 tables, engine set-up and the queries the service needs.

Tables: ``facilities``; ``observations`` (one per uploaded image or imported row, with image and model metadata
when there was an image); ``observation_counts`` (one row per observation and *known* class count, with the stored
anomaly score; a class absent here is unknown, not zero); ``detections`` (oriented boxes of uploaded images);
``api_keys`` and ``api_key_facilities`` (hashed API keys, their roles and the facilities an uploader may upload to);
``import_requests`` (imports sent with an ``Idempotency-Key``: what they stored, to answer a repeat).
All datetimes are stored as UTC. The same code runs on SQLite and PostgreSQL; the schema is made and changed by
the Alembic migrations in ``app/migrations`` (:mod:`app.migrate`), run when a :class:`Store` is constructed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    UniqueConstraint,
    Integer,
    cast,
    String,
    TypeDecorator,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

_IMMEDIATE = "wagon_sqlite_immediate"
#: Largest value of an ``Integer`` column (ids, counts): 32-bit on PostgreSQL. Larger numbers from requests are
#: refused before they reach the database (which would fail on PostgreSQL, not on SQLite).
MAX_DB_INT = 2**31 - 1


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes stored as naive UTC; naive input is refused."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """Current time, aware, UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of all tables."""


#: Facility ids sort bytewise on PostgreSQL too, whatever the database's locale: paging by id orders as on SQLite.
FACILITY_ID = String(64).with_variant(String(64, collation="C"), "postgresql")


class Facility(Base):
    """A rail yard, port or mixed site whose counts form one history."""

    __tablename__ = "facilities"

    id: Mapped[str] = mapped_column(FACILITY_ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: GeoJSON Polygon in WGS84: counts of georeferenced images are of detections centred inside it.
    footprint: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Observation(Base):
    """One point in a facility's history: an analysed image or an imported count.

    Two unique indexes keep an upload from being counted twice: the same image bytes at the same facility and time
    (``uq_observations_image``), and the same ``Idempotency-Key`` from the same API key at the same facility
    (``uq_observations_idempotency``). Imported rows have neither (NULLs never collide).
    """

    __tablename__ = "observations"
    __table_args__ = (
        Index("ix_observations_facility_time", "facility_id", "captured_at"),
        Index("uq_observations_image", "facility_id", "captured_at", "image_sha256", unique=True),
        Index("uq_observations_idempotency", "facility_id", "idempotency_scope", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"))
    captured_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    image_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    image_width: Mapped[int | None] = mapped_column(Integer, default=None)
    image_height: Mapped[int | None] = mapped_column(Integer, default=None)
    image_format: Mapped[str | None] = mapped_column(String(8), default=None)
    gsd_m: Mapped[float | None] = mapped_column(Float, default=None)
    model_name: Mapped[str | None] = mapped_column(String(100), default=None)
    model_version: Mapped[str | None] = mapped_column(String(100), default=None)
    #: Georeferencing of the image and the region read ({crs, transform, window, gsd_source, bands}).
    geo: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: Share of the facility footprint the image covered ({share, nodata_cut, edge_cut, in_scene_share}).
    coverage: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: Covered share of the footprint, for the anomaly score (None: whole image counted, no footprint applied).
    exposure: Mapped[float | None] = mapped_column(Float, default=None)
    #: ``Idempotency-Key`` header of the upload, and whose it was (the API key id; ``-`` with authentication off).
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    idempotency_scope: Mapped[str | None] = mapped_column(String(32), default=None)

    counts: Mapped[list[ObservationCount]] = relationship(
        back_populates="observation", cascade="all, delete-orphan", order_by="ObservationCount.class_name"
    )
    detections: Mapped[list[DetectionRow]] = relationship(
        back_populates="observation", cascade="all, delete-orphan", order_by="DetectionRow.id"
    )


class ObservationCount(Base):
    """Known count of one class in one observation, with its stored anomaly score."""

    __tablename__ = "observation_counts"
    __table_args__ = (Index("ix_counts_class", "class_name", "observation_id"),)

    observation_id: Mapped[int] = mapped_column(
        ForeignKey("observations.id", ondelete="CASCADE"), primary_key=True
    )
    class_name: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float, default=None)
    expected: Mapped[float | None] = mapped_column(Float, default=None)
    history_size: Mapped[int] = mapped_column(Integer, default=0)
    history_max: Mapped[int | None] = mapped_column(Integer, default=None)
    exceeds_history_max: Mapped[bool] = mapped_column(Boolean, default=False)
    history_span_days: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str] = mapped_column(String(200), default="not scored yet")
    # anomaly v2 (columns added later; older databases get them from the baseline migration)
    drop_score: Mapped[float | None] = mapped_column(Float, default=None)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    count_sd: Mapped[float | None] = mapped_column(Float, default=None)  # detector count uncertainty; None = exact
    highest_in_days: Mapped[float | None] = mapped_column(Float, default=None)
    lowest_in_days: Mapped[float | None] = mapped_column(Float, default=None)
    expected_lo: Mapped[float | None] = mapped_column(Float, default=None)  # 90 % predictive band
    expected_hi: Mapped[float | None] = mapped_column(Float, default=None)

    observation: Mapped[Observation] = relationship(back_populates="counts")


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; ``id`` is a short public handle (part of the key, shown in lists)."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # admin, reader, uploader
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    facilities: Mapped[list[ApiKeyFacility]] = relationship(
        cascade="all, delete-orphan", order_by="ApiKeyFacility.facility_id", lazy="selectin"
    )


class ApiKeyFacility(Base):
    """A facility an uploader key may upload to."""

    __tablename__ = "api_key_facilities"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"), primary_key=True)


class AlertThreshold(Base):
    """A facility's alert thresholds: a count whose score (or drop score) reaches one is an alert."""

    __tablename__ = "alert_thresholds"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"), primary_key=True)
    score: Mapped[float | None] = mapped_column(Float, default=None)  # None: surges never alert
    drop_score: Mapped[float | None] = mapped_column(Float, default=None)  # None: drops never alert
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlertDelivery(Base):
    """One webhook delivery of one alert (outbox): pending until the receiver answers 2xx; never deleted."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        UniqueConstraint("observation_id", "class_name", "direction", name="uq_delivery_alert"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"), index=True)
    observation_id: Mapped[int] = mapped_column(ForeignKey("observations.id", ondelete="CASCADE"))
    class_name: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))  # "surge" or "drop"
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(8), default="pending")  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class DetectionRow(Base):
    """One oriented detection of an uploaded image (pixel coordinates)."""

    __tablename__ = "detections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    observation_id: Mapped[int] = mapped_column(ForeignKey("observations.id", ondelete="CASCADE"), index=True)
    class_name: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float] = mapped_column(Float)
    obb: Mapped[list[list[float]]] = mapped_column(JSON)
    obb_lonlat: Mapped[list[list[float]] | None] = mapped_column(JSON, default=None)

    observation: Mapped[Observation] = relationship(back_populates="detections")


class Job(Base):
    """An image upload analysed in the background (large scenes): its inputs, progress and result."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"), index=True)
    captured_at: Mapped[datetime] = mapped_column(UTCDateTime)
    gsd_m: Mapped[float | None] = mapped_column(Float, default=None)
    image_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, done, failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(String(2000), default=None)
    error_status: Mapped[int | None] = mapped_column(Integer, default=None)
    observation_id: Mapped[int | None] = mapped_column(Integer, default=None)
    timing_ms: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The upload's ``Idempotency-Key`` and its scope, given to the observation the job stores.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    idempotency_scope: Mapped[str | None] = mapped_column(String(32), default=None)
    #: Lease of the worker running the job: who claimed it, and until when (renewed while it works; a job whose
    #: lease has expired is taken to be abandoned by a dead worker and may be claimed again).
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ImportRequest(Base):
    """An import sent with an ``Idempotency-Key`` (per API key and facility): the SHA-256 of its body and what it
    stored, written in the import's transaction, so that a repeat is answered with the original result."""

    __tablename__ = "import_requests"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"), primary_key=True)
    idempotency_scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    observation_ids: Mapped[list[int]] = mapped_column(JSON)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Store:
    """Engine and session factory for one database URL; migrates the schema to the newest on construction."""

    def __init__(self, database_url: str) -> None:
        from app.migrate import upgrade

        self.url = database_url
        self.engine: Engine = make_engine(database_url)
        upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reading (or writing without the SQLite write lock up front)."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one write transaction: commits on success, rolls back on any exception.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE`` so read-then-write sequences (rescoring) never
        race another writer; on PostgreSQL writers of one facility serialise on :func:`lock_facility`.
        """
        with self._sessions() as session:
            session.connection(execution_options={_IMMEDIATE: True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - health check reports, never raises
            return False

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def _enable_wal(cur: Any, attempts: int = 300, pause_s: float = 0.05) -> None:
    """Switch a SQLite file to WAL (a persistent setting of the file), retrying while it is locked.

    The switch needs the file to itself and SQLite does not wait for that with the busy timeout: several processes
    opening a fresh database at once got "database is locked" here (about 1 start in 16 of four at once).
    """
    for attempt in range(attempts):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(pause_s)


def make_engine(database_url: str) -> Engine:
    """Create an engine; for SQLite create the file's directory, enable foreign keys, WAL and a busy timeout."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(database_url, pool_pre_ping=True)
    database = url.database
    in_memory = not database or database == ":memory:" or database.startswith("file::memory:")
    if database and not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if in_memory:
        from sqlalchemy.pool import StaticPool

        kwargs["poolclass"] = StaticPool
    engine = create_engine(database_url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN itself (see "begin" below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if not in_memory:
            _enable_wal(cur)
            # Under WAL, NORMAL syncs at checkpoints, not at every commit: a committed transaction survives a crash
            # of the process (the WAL is in the OS's page cache); only a power loss or OS crash may roll back the
            # last commits, and never corrupts the database.
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


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
        select(Facility).where(Facility.id == facility_id).with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).one_or_none()


def list_facilities(
    session: Session, after: str | None = None, limit: int | None = None
) -> list[tuple[Facility, int]]:
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


def find_image_observation(session: Session, facility_id: str, captured_at: datetime,
                           image_sha256: str) -> Observation | None:
    """The observation of these image bytes at this facility and time, or ``None``."""
    return session.scalars(select(Observation).where(
        Observation.facility_id == facility_id, Observation.captured_at == captured_at,
        Observation.image_sha256 == image_sha256)).first()


def find_idempotent_observation(session: Session, facility_id: str, scope: str, key: str) -> Observation | None:
    """The observation stored by the upload with this ``Idempotency-Key`` (of this API key, at this facility)."""
    return session.scalars(select(Observation).where(
        Observation.facility_id == facility_id, Observation.idempotency_scope == scope,
        Observation.idempotency_key == key)).first()


def observation_counts(session: Session, facility_id: str) -> list[tuple[int, datetime, str, dict[str, int]]]:
    """``(observation_id, captured_at, source, {class: count})`` of every observation of a facility (known counts
    only), oldest first."""
    rows = session.execute(
        select(Observation.id, Observation.captured_at, Observation.source, ObservationCount.class_name,
               ObservationCount.count)
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
) -> dict[str, list[tuple[int, datetime, int, float | None]]]:
    """``class -> [(observation_id, captured_at, count, count_sd), ...]``, oldest first (by captured_at, then id),
    of every known count of the given classes at a facility (one query; a class without counts is absent)."""
    rows = session.execute(
        select(ObservationCount.class_name, Observation.id, Observation.captured_at, ObservationCount.count,
               ObservationCount.count_sd)
        .join(ObservationCount, ObservationCount.observation_id == Observation.id)
        .where(Observation.facility_id == facility_id, ObservationCount.class_name.in_(list(classes)))
        .order_by(Observation.captured_at, Observation.id)
    ).all()
    out: dict[str, list[tuple[int, datetime, int, float | None]]] = {}
    for cls, i, t, c, sd in rows:
        out.setdefault(cls, []).append((int(i), t, int(c), None if sd is None else float(sd)))
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


# ------------------------------------------------------------------------------------------ anomalies, alerts


def pooled_count_stats(
    session: Session, kind: str, class_name: str, exclude_facility: str
) -> list[tuple[int, float, float]]:
    """``(n, mean, sample variance)`` of the counts of a class at every other facility of a kind."""
    rows = session.execute(
        select(Observation.facility_id, func.count(), func.sum(cast(ObservationCount.count, Float)),
               func.sum(cast(ObservationCount.count, Float) * cast(ObservationCount.count, Float)))
        .join(ObservationCount, ObservationCount.observation_id == Observation.id)
        .join(Facility, Facility.id == Observation.facility_id)
        .where(Facility.kind == kind, ObservationCount.class_name == class_name,
               Observation.facility_id != exclude_facility)
        .group_by(Observation.facility_id)
    ).all()
    out = []
    for _fid, n, s1, s2 in rows:
        n, s1, s2 = int(n), float(s1 or 0), float(s2 or 0)
        if n >= 2:
            mean = s1 / n
            out.append((n, mean, max((s2 - n * mean * mean) / (n - 1), 0.0)))
    return out


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
        stmt = stmt.where(or_(Observation.captured_at < at,
                              and_(Observation.captured_at == at,
                                   or_(Observation.id < obs_id, and_(Observation.id == obs_id, same)))))
    return [(c, o) for c, o in session.execute(stmt).all()]
