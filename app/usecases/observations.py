"""A facility's observations: the records users see, reading them, and rescoring a history after a write."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app import database as db
from app.core.errors import InvalidInputError, NotFoundError
from app.core.offline import CLASS_NAMES
from app.core.validation import iso
from app.detection.results import Detection, quad
from app.scoring import fit_cache
from app.scoring.anomaly import MIN_HISTORY, AnomalyScore, facility_stats, pooled_prior, score_series
from app.scoring.review_calibration import effective_series
from app.usecases.facilities import require_facility

SOURCE_IMAGE = "image"
SOURCE_IMPORT = "import"

#: ``(scope, key)`` of an ``Idempotency-Key`` header: the scope is the API key's id (``-`` with auth off).
Idempotency = tuple[str, str]


@dataclass(frozen=True)
class ObservationRecord:
    """One observation as shown to users. Unknown classes have ``None`` count and anomaly."""

    id: int
    facility_id: str
    captured_at: datetime
    source: str
    counts: dict[str, int | None]
    anomaly: dict[str, AnomalyScore | None]
    image: dict[str, Any] | None
    model: dict[str, str] | None
    detections: list[Detection] | None = field(default=None)
    coverage: dict[str, Any] | None = None
    exposure: float | None = None
    #: The review in force (:func:`app.usecases.reviews.review_dict`) and the counts it verifies (None: not verified)
    review: dict[str, Any] | None = None
    verified_counts: dict[str, int | None] = field(default_factory=dict)
    #: Detections kept below the counting threshold (read with the detections)
    candidates: list[Detection] | None = None

    @property
    def has_image(self) -> bool:
        """Whether the observation came from an analysed image."""
        return self.image is not None

    def to_dict(self, with_detections: bool = False, with_candidates: bool = False) -> dict[str, Any]:
        """JSON-ready form (``with_candidates``: also the candidates below the counting threshold)."""
        out: dict[str, Any] = {
            "id": self.id,
            "facility_id": self.facility_id,
            "captured_at": iso(self.captured_at),
            "source": self.source,
            "has_image": self.has_image,
            "counts": dict(self.counts),
            "anomaly": {k: (None if v is None else v.to_dict()) for k, v in self.anomaly.items()},
            "image": self.image,
            "model": self.model,
            "coverage": self.coverage,
            "exposure": self.exposure,
            "review": self.review,
            "verified_counts": {c: self.verified_counts.get(c) for c in self.counts},
        }
        if with_detections:
            out["detections"] = [d.to_dict() for d in (self.detections or [])]
        if with_candidates:
            out["candidates"] = [d.to_dict() for d in (self.candidates or [])]
        return out


#: Fields of an anomaly score that are stored on its count row.
STORED_SCORE_FIELDS: tuple[str, ...] = (
    "score",
    "expected",
    "history_size",
    "history_max",
    "exceeds_history_max",
    "history_span_days",
    "reason",
    "drop_score",
    "model",
    "highest_in_days",
    "lowest_in_days",
    "expected_lo",
    "expected_hi",
)


def rescore(
    session: Session, facility_id: str, since: datetime, classes: Iterable[str], new: Iterable[db.ObservationCount] = ()
) -> int:
    """Recompute and store the anomaly scores of every count at or after ``since`` for the given classes.

    Runs inside the caller's transaction (after a flush, so new rows are visible). The history of all classes is
    read with one query, each point is fitted once (score, drop score and band come from the same fit), and only
    the points at or after ``since`` are fitted (an upload newer than everything stored fits just itself, or takes
    the fit prepared in the background: :mod:`app.scoring.fit_cache`; the scores are the same either way). ``new``:
    count rows the caller's session already holds (the new observation's), updated without being read again.
    Returns rows updated.
    """
    classes = list(classes)
    histories = db.count_histories(session, facility_id, classes)
    calibration = db.facility_calibrations(session, facility_id)
    known = {(row.observation_id, row.class_name): row for row in new}
    updated = 0
    kind: str | None = None
    for cls in classes:
        history = histories.get(cls)
        if not history:
            continue
        prior = None
        if sum(1 for h in history if h[1] < since) < MIN_HISTORY:  # some rescored point is a cold start
            if kind is None:
                facility = db.get_facility(session, facility_id)
                kind = facility.kind if facility is not None else ""
            pooled = db.pooled_counts(session, kind, cls, facility_id)
            prior = pooled_prior([facility_stats(c) for c in pooled], kind)
        cal = calibration.get(cls)
        counts, sds = effective_series(history, cal.count_bias if cal is not None else 0.0)
        scores = score_series(
            [h[1] for h in history],
            counts,
            since=since,
            prior=prior,
            count_sd=sds,
            fit=fit_cache.CACHE.fitter(facility_id, cls),
        )
        changed = {oid: s for (oid, *_), s in zip(history, scores, strict=True) if s is not None}
        rows = [known[(oid, cls)] for oid in changed if (oid, cls) in known]
        rows += db.count_rows(session, cls, [oid for oid in changed if (oid, cls) not in known])
        for row in rows:
            s = changed[row.observation_id]
            for name in STORED_SCORE_FIELDS:
                setattr(row, name, getattr(s, name))
            updated += 1
    session.flush()
    return updated


def review_dict(review: db.Review | None, with_boxes: bool = True) -> dict[str, Any] | None:
    """JSON-ready form of a review (``None`` stays ``None``)."""
    if review is None:
        return None
    out: dict[str, Any] = {
        "id": review.id,
        "status": review.status,
        "reviewed_at": iso(review.reviewed_at),
        "reviewer": review.reviewer,
        "exhaustive": review.exhaustive,
        "counts": {c: review.counts.get(c) for c in CLASS_NAMES},
    }
    if with_boxes:
        out["objects"] = review.objects
        out["ignore"] = review.ignore
    if review.status != db.REVIEW_CURRENT:
        out["ended_at"] = None if review.ended_at is None else iso(review.ended_at)
        out["ended_by"] = review.ended_by
    return out


def list_observations(
    store: db.Store, facility_id: str, start: datetime | None = None, end: datetime | None = None
) -> list[ObservationRecord]:
    """A facility's time series (``start <= captured_at <= end``), oldest first, with stored scores."""
    if start is not None and end is not None and start > end:
        raise InvalidInputError("start must not be after end")
    with store.session() as session:
        require_facility(session, facility_id)
        rows = db.list_observations(session, facility_id, start, end)
        reviews = db.current_reviews(session, [o.id for o in rows])
        return [observation_record(o, review=review_dict(reviews.get(o.id), with_boxes=False)) for o in rows]


def get_observation(store: db.Store, observation_id: int) -> ObservationRecord:
    """One observation with its detections; :class:`NotFoundError` if unknown."""
    with store.session() as session:
        obs = db.get_observation(session, observation_id)
        if obs is None:
            raise NotFoundError(f"observation {observation_id} not found")
        return observation_record(obs, with_detections=True)


def detection_row(d: Detection) -> dict[str, Any]:
    """The stored columns of a detection (plain floats, corners as lists)."""
    return {
        "class_name": d.class_name,
        "confidence": float(d.confidence),
        "obb": [[float(x), float(y)] for x, y in d.obb],
        "obb_lonlat": None if d.obb_lonlat is None else [[float(x), float(y)] for x, y in d.obb_lonlat],
        "score": float(d.threshold_score),
        "counted": bool(d.counted),
    }


def stored_detection(row: Any) -> Detection:
    """A stored detection row (a :class:`db.DetectionRow` or its :func:`detection_row` dict) as a Detection."""
    get: Callable[[str], Any] = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    obb, lonlat = get("obb"), get("obb_lonlat")
    score = get("score")
    counted = get("counted")
    return Detection(
        class_name=get("class_name"),
        confidence=get("confidence"),
        obb=quad(obb),
        obb_lonlat=None if lonlat is None else quad(lonlat),
        score=None if score is None else float(score),
        counted=True if counted is None else bool(counted),
    )


def observation_record(
    obs: db.Observation, with_detections: bool = False, review: dict[str, Any] | None = None
) -> ObservationRecord:
    """The record users see of a stored observation (``review``: its review in force, as JSON)."""
    by_class = {c.class_name: c for c in obs.counts}
    classes = list(CLASS_NAMES) + sorted(set(by_class) - set(CLASS_NAMES))
    counts: dict[str, int | None] = {}
    anomaly: dict[str, AnomalyScore | None] = {}
    for cls in classes:
        row = by_class.get(cls)
        counts[cls] = None if row is None else row.count
        anomaly[cls] = (
            None
            if row is None
            else AnomalyScore(
                score=row.score,
                expected=row.expected,
                history_size=row.history_size,
                history_max=row.history_max,
                exceeds_history_max=bool(row.exceeds_history_max),
                history_span_days=row.history_span_days,
                reason=row.reason,
                drop_score=row.drop_score,
                model=row.model,
                count_sd=row.count_sd,
                highest_in_days=row.highest_in_days,
                lowest_in_days=row.lowest_in_days,
                expected_lo=row.expected_lo,
                expected_hi=row.expected_hi,
            )
        )
    image = None
    model = None
    if obs.image_sha256 is not None:
        image = {
            "width": obs.image_width,
            "height": obs.image_height,
            "format": obs.image_format,
            "gsd_m": obs.gsd_m,
            "sha256": obs.image_sha256,
        }
        if obs.geo:
            image.update({k: obs.geo.get(k) for k in ("crs", "gsd_source", "window", "bands")})
        model = {"name": obs.model_name or "", "version": obs.model_version or ""}
    detections = candidates = None
    if with_detections:
        detections = [stored_detection(d) for d in obs.detections if d.counted]
        candidates = [stored_detection(d) for d in obs.detections if not d.counted]
    return ObservationRecord(
        id=obs.id,
        facility_id=obs.facility_id,
        captured_at=obs.captured_at,
        source=obs.source,
        counts=counts,
        anomaly=anomaly,
        image=image,
        model=model,
        detections=detections,
        coverage=obs.coverage,
        exposure=obs.exposure,
        review=review,
        verified_counts={c.class_name: c.verified_count for c in obs.counts},
        candidates=candidates,
    )
