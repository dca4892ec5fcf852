"""The database schema as SQLAlchemy 2 ORM tables (all datetimes stored as UTC).

Tables: ``facilities``; ``observations`` (one per uploaded image or imported row, with image and model metadata
when there was an image); ``observation_counts`` (one row per observation and *known* class count, with the stored
anomaly score; a class absent here is unknown, not zero); ``detections`` (oriented boxes of uploaded images);
``api_keys`` and ``api_key_facilities`` (hashed API keys, their roles and the facilities an uploader may upload to);
``alert_thresholds`` and ``alert_deliveries``; ``jobs``; ``import_requests`` (imports sent with an
``Idempotency-Key``: what they stored, to answer a repeat); ``scene_jobs``; ``subscriptions`` and
``subscription_items`` (STAC catalogs followed, and the items they found). The schema is made and changed by the
Alembic migrations in ``app/database/migrations`` (:mod:`app.database.migrate`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import text, true

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
    #: Where a scene delivered by reference came from: ``{"href", "etag", "size", "identity", "stac_item"}`` (the
    #: STAC item as given, when there was one); None for uploads and imports.
    scene_source: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

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

    observation_id: Mapped[int] = mapped_column(ForeignKey("observations.id", ondelete="CASCADE"), primary_key=True)
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
    #: The count the observation's current review gives (None: not reviewed for this class); the history uses it.
    verified_count: Mapped[int | None] = mapped_column(Integer, default=None)

    @property
    def effective_count(self) -> int:
        """The count the history uses: the verified one where a review gives it, else the detector's."""
        return self.count if self.verified_count is None else self.verified_count

    observation: Mapped[Observation] = relationship(back_populates="counts")


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; ``id`` is a short public handle (part of the key, shown in lists)."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # admin, reader, uploader, analyst
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
    #: The score operating thresholds compare (None: ``confidence``); ``counted``: at or above the threshold in
    #: force when it was last counted (False: a candidate, kept for re-thresholding).
    score: Mapped[float | None] = mapped_column(Float, default=None)
    counted: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    @property
    def threshold_score(self) -> float:
        """The score operating thresholds apply to."""
        return self.confidence if self.score is None else self.score

    observation: Mapped[Observation] = relationship(back_populates="detections")


class Job(Base):
    """Work done in the background: an image upload analysed (large scenes, ``kind`` ``upload``) or a large import
    of counts (``import``); its inputs, progress and result."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="upload", server_default="upload")  # upload, import
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)  # an upload's
    gsd_m: Mapped[float | None] = mapped_column(Float, default=None)
    image_sha256: Mapped[str | None] = mapped_column(String(64), default=None)  # an upload's
    #: An import's archived payload (its media type, a newline, its body), by SHA-256: also its idempotency digest.
    payload_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    #: What an import stored: ``{"imported", "duplicates", "observation_ids"}`` (ids oldest first).
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
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


class SceneJob(Base):
    """A scene (``POST /v1/scenes``) analysed in the background for every facility it covers: the request, who
    sent it, progress, and the result (per facility: the observation made, or why it was skipped)."""

    __tablename__ = "scene_jobs"
    __table_args__ = (Index("uq_scene_jobs_idempotency", "submitted_by", "idempotency_key", unique=True),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, done, failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    #: What was asked: source, capture time, GSD, facilities to reach and those skipped at submission.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Whose it is: the submitting API key's id (``-`` with authentication off); also the Idempotency-Key scope.
    submitted_by: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(String(2000), default=None)
    error_status: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Subscription(Base):
    """A vendor's STAC catalog followed: a static catalog or collection (walked) or a STAC API search endpoint
    (searched by collection and time), polled every ``interval_minutes``; each new item becomes a scene job."""

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_next_poll_at", "next_poll_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    url: Mapped[str] = mapped_column(String(4096))
    kind: Mapped[str] = mapped_column(String(8))  # static, api
    #: Collection ids to keep (None: all).
    collections: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    #: Facility ids the scenes are limited to (None: all).
    facilities: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    interval_minutes: Mapped[int] = mapped_column(Integer)
    #: The creating API key's id (``-`` with authentication off): the scene jobs' submitter.
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: Start of the last poll that read the whole catalog (a STAC API search's time window starts here).
    searched_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    next_poll_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(2000), default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class SubscriptionItem(Base):
    """An item a subscription found (once per collection and item id): the scene job it became, or why not."""

    __tablename__ = "subscription_items"
    __table_args__ = (Index("uq_subscription_items_item", "subscription_id", "collection", "item_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    collection: Mapped[str] = mapped_column(String(255))  # "" when the item names none
    item_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # submitting, submitted, failed, given_up
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    scene_job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    error: Mapped[str | None] = mapped_column(String(2000), default=None)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


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


#: Review states: the one in force, one a later review replaced, one its analyst withdrew.
REVIEW_CURRENT, REVIEW_REPLACED, REVIEW_WITHDRAWN = "current", "replaced", "withdrawn"


class Review(Base):
    """An analyst's review of an observation's image: the true objects (or counts) they saw. Never deleted: a new
    review replaces the current one and a withdrawal ends it, both kept as the audit trail; at most one is current
    per observation (``uq_reviews_current``)."""

    __tablename__ = "reviews"
    __table_args__ = (
        Index("ix_reviews_facility_status", "facility_id", "status"),
        Index(
            "uq_reviews_current",
            "observation_id",
            unique=True,
            sqlite_where=text("status = 'current'"),
            postgresql_where=text("status = 'current'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    observation_id: Mapped[int] = mapped_column(ForeignKey("observations.id", ondelete="CASCADE"), index=True)
    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=REVIEW_CURRENT)
    reviewer: Mapped[str] = mapped_column(String(200))
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Whether every object of the reviewed classes was marked (box reviews); count reviews are exhaustive.
    exhaustive: Mapped[bool] = mapped_column(Boolean, default=True)
    #: class -> verified count (classes the review does not speak of are absent)
    counts: Mapped[dict[str, int]] = mapped_column(JSON)
    #: [{"class", "obb"}] in image pixels, and ignore regions (lists of [x, y]); None for a count-only review
    objects: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    ignore: Mapped[list[list[list[float]]] | None] = mapped_column(JSON, default=None)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    ended_by: Mapped[str | None] = mapped_column(String(200), default=None)


class FacilityCalibration(Base):
    """What a facility's reviews taught about the detector there, per class (docs/reviews.md)."""

    __tablename__ = "facility_calibrations"

    facility_id: Mapped[str] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"), primary_key=True)
    class_name: Mapped[str] = mapped_column(String(32), primary_key=True)
    reviews: Mapped[int] = mapped_column(Integer)
    #: operating threshold in force (shrunk), and the facility's own best one before shrinking (None: count-only)
    threshold: Mapped[float] = mapped_column(Float)
    fitted_threshold: Mapped[float | None] = mapped_column(Float, default=None)
    #: relative count error left at ``threshold`` ((detected - true) / true), and its spread
    count_bias: Mapped[float] = mapped_column(Float)
    count_rel_sd: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
