"""Analysts' reviews: what an analyst saw in an observation's image (true objects and undecided regions, or counts),
the verified counts they give the history, and the facility calibration learnt from them.

A review is stored with its reviewer and time; a new one replaces the one in force and a withdrawal ends it, both
kept as the audit trail. Every change runs in one transaction under the facility's lock: the review, the verified
counts, the facility's calibration (:mod:`app.scoring.review_calibration`), the counts of its stored images
re-thresholded at the calibrated thresholds (from the candidates kept at upload, never re-running the model), and
the anomaly scores of its whole history. Withdrawing the last review restores the counts and scores exactly.
Nothing here knows about HTTP.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app import database as db
from app.core.errors import InvalidInputError, NotFoundError
from app.core.offline import CLASS_NAMES
from app.core.validation import iso
from app.detection.matching import LOOSE_CLASSES, Outcome, match_detections
from app.scoring.anomaly import count_uncertainty
from app.scoring.review_calibration import (
    ClassCalibration,
    Pool,
    ReviewEvidence,
    calibrate_class,
    effective_series,
    logit,
)
from app.usecases.observations import ObservationRecord, observation_record, rescore, review_dict

log = logging.getLogger(__name__)

#: Most objects and undecided regions one review may mark.
MAX_REVIEW_OBJECTS = 20_000
MAX_IGNORE_REGIONS = 1_000
#: Most vertices of an undecided region.
MAX_REGION_POINTS = 64
#: Smallest area (px^2) and side (px) of a marked box: anything smaller is a slip of the mouse.
MIN_BOX_AREA_PX = 4.0
MIN_BOX_SIDE_PX = 1.0
#: How far outside the image (px) a corner may lie (boxes cut by the image edge are drawn to it).
EDGE_TOLERANCE_PX = 2.0
#: Largest verified count per class.
MAX_VERIFIED_COUNT = 1_000_000


@dataclass(frozen=True)
class CountingDefaults:
    """The model's counting defaults that reviews calibrate: its operating thresholds per class, the candidate
    floor, and the assumed relative count error."""

    thresholds: Mapping[str, float]
    floor: float
    rel_sd: float


def counting_defaults(detector: Any, model_path: Path, floor: float, rel_sd: float) -> CountingDefaults:
    """The loaded detector's thresholds, or (no model loaded) those its sidecar JSON names."""
    thresholds = dict(getattr(detector, "class_conf", None) or {})
    if not thresholds:
        sidecar = Path(model_path).with_suffix(".json")
        conf: Any = 0.35
        if sidecar.exists():
            info = json.loads(sidecar.read_text())
            conf = info.get("conf", conf)
        thresholds = {c: float(conf.get(c, 0.35)) if isinstance(conf, dict) else float(conf) for c in CLASS_NAMES}
    return CountingDefaults(thresholds=thresholds, floor=float(floor), rel_sd=float(rel_sd))


# ------------------------------------------------------------------------------------------------ input


@dataclass(frozen=True)
class ReviewInput:
    """A checked review: boxes (``objects``, ``ignore``, ``exhaustive``, ``classes``) or ``counts`` only."""

    counts: dict[str, int] | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)
    ignore: list[list[list[float]]] = field(default_factory=list)
    exhaustive: bool = True
    classes: tuple[str, ...] = CLASS_NAMES

    @property
    def has_boxes(self) -> bool:
        """Whether this is a box review (not counts only)."""
        return self.counts is None


def _points(value: Any, where: str, n: int | None, width: int | None, height: int | None) -> list[list[float]]:
    if not isinstance(value, list) or (n is not None and len(value) != n) or not 3 <= len(value) <= MAX_REGION_POINTS:
        want = f"{n}" if n is not None else f"3 to {MAX_REGION_POINTS}"
        raise InvalidInputError(f"{where} must be a list of {want} [x, y] points")
    pts = []
    for p in value:
        if (
            not isinstance(p, list)
            or len(p) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            or not all(math.isfinite(float(v)) for v in p)
        ):
            raise InvalidInputError(f"{where} must be a list of [x, y] points with finite numbers")
        x, y = float(p[0]), float(p[1])
        if (
            width is not None
            and height is not None
            and not (
                -EDGE_TOLERANCE_PX <= x <= width + EDGE_TOLERANCE_PX
                and -EDGE_TOLERANCE_PX <= y <= height + EDGE_TOLERANCE_PX
            )
        ):
            raise InvalidInputError(f"{where} has a point ({x:g}, {y:g}) outside the {width} x {height} image")
        pts.append([x, y])
    return pts


def _check_box(pts: list[list[float]], where: str) -> None:
    import shapely

    poly = shapely.Polygon(pts)
    sides = [math.dist(pts[i - 1], pts[i]) for i in range(4)]
    if not poly.is_valid or poly.area < MIN_BOX_AREA_PX or min(sides) < MIN_BOX_SIDE_PX:
        raise InvalidInputError(
            f"{where} is degenerate (area {poly.area:.1f} px², shortest side {min(sides):.1f} px; corners must go "
            "round a box of at least 4 px² with sides of at least 1 px)"
        )


def parse_review(body: Any, width: int | None, height: int | None) -> ReviewInput:
    """Check a review body against the image's size: 422 (:class:`InvalidInputError`) with the reason."""
    if not isinstance(body, dict) or not body:
        raise InvalidInputError("a review needs `objects` (with `ignore` and `exhaustive`) or `counts`")
    allowed = {"objects", "ignore", "exhaustive", "classes", "counts"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    if "counts" in body:
        if set(body) - {"counts"}:
            raise InvalidInputError("give either `counts` or `objects`/`ignore`/`exhaustive`/`classes`, not both")
        counts = body["counts"]
        if not isinstance(counts, dict) or not counts:
            raise InvalidInputError('`counts` must be an object of class -> count, e.g. {"railcar": 41}')
        out: dict[str, int] = {}
        for cls, n in counts.items():
            if cls not in CLASS_NAMES:
                raise InvalidInputError(f"unknown class {cls!r} in `counts`; classes: {', '.join(CLASS_NAMES)}")
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_VERIFIED_COUNT:
                raise InvalidInputError(f"`counts.{cls}` must be a whole number from 0 to {MAX_VERIFIED_COUNT}")
            out[cls] = n
        return ReviewInput(counts=out)
    if "objects" not in body:
        raise InvalidInputError("a box review needs `objects` (the true objects; [] when there are none)")
    objects = body["objects"]
    if not isinstance(objects, list) or len(objects) > MAX_REVIEW_OBJECTS:
        raise InvalidInputError(f"`objects` must be a list of at most {MAX_REVIEW_OBJECTS} objects")
    checked: list[dict[str, Any]] = []
    for i, obj in enumerate(objects):
        where = f"objects[{i}]"
        if not isinstance(obj, dict) or set(obj) - {"class", "obb"} or "obb" not in obj or "class" not in obj:
            raise InvalidInputError(f'{where} must be {{"class": ..., "obb": [[x, y] x 4]}}')
        if obj["class"] not in CLASS_NAMES:
            raise InvalidInputError(f"{where}: unknown class {obj['class']!r}; classes: {', '.join(CLASS_NAMES)}")
        pts = _points(obj["obb"], f"{where}.obb", 4, width, height)
        _check_box(pts, f"{where}.obb")
        checked.append({"class": obj["class"], "obb": pts})
    ignore = body.get("ignore", [])
    if not isinstance(ignore, list) or len(ignore) > MAX_IGNORE_REGIONS:
        raise InvalidInputError(f"`ignore` must be a list of at most {MAX_IGNORE_REGIONS} regions")
    regions = []
    for i, region in enumerate(ignore):
        pts = _points(region, f"ignore[{i}]", None, width, height)
        import shapely

        if shapely.Polygon(pts).buffer(0).area < MIN_BOX_AREA_PX:
            raise InvalidInputError(f"ignore[{i}] is degenerate (it encloses less than 4 px²)")
        regions.append(pts)
    exhaustive = body.get("exhaustive", True)
    if not isinstance(exhaustive, bool):
        raise InvalidInputError("`exhaustive` must be true or false")
    classes = body.get("classes", list(CLASS_NAMES))
    if (
        not isinstance(classes, list)
        or not classes
        or any(c not in CLASS_NAMES for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise InvalidInputError(f"`classes` must list the reviewed classes once each, from: {', '.join(CLASS_NAMES)}")
    stray = sorted({o["class"] for o in checked} - set(classes))
    if stray:
        raise InvalidInputError(f"objects of class {', '.join(stray)} are marked but not among `classes`")
    return ReviewInput(objects=checked, ignore=regions, exhaustive=exhaustive, classes=tuple(classes))


# ------------------------------------------------------------------------------------------------ records


def record_with_review(session: Session, obs: db.Observation, with_detections: bool = True) -> ObservationRecord:
    """The observation's record with its review in force."""
    return observation_record(
        obs, with_detections=with_detections, review=review_dict(db.current_review(session, obs.id))
    )


def review_history(store: db.Store, observation_id: int) -> list[dict[str, Any]]:
    """Every review of an observation, oldest first: the audit trail."""
    with store.session() as session:
        if db.get_observation(session, observation_id) is None:
            raise NotFoundError(f"observation {observation_id} not found")
        return [d for d in (review_dict(r) for r in db.review_trail(session, observation_id)) if d is not None]


# ------------------------------------------------------------------------------------------------ writes


def _verified_counts(obs: db.Observation, review: ReviewInput) -> dict[str, int]:
    """Class -> verified count a review gives (box reviews: exhaustive ones only, objects centred inside the
    facility footprint when one was applied)."""
    if not review.has_boxes:
        return dict(review.counts or {})
    if not review.exhaustive:
        return {}
    footprint = (obs.geo or {}).get("footprint_px")
    inside = None
    if footprint:
        import shapely

        inside = shapely.Polygon(footprint)
    out = {c: 0 for c in review.classes}
    for o in review.objects:
        if inside is not None:
            import shapely

            cx, cy = np.asarray(o["obb"], np.float64).mean(axis=0)
            if not inside.contains(shapely.Point(cx, cy)):
                continue
        out[o["class"]] += 1
    return out


def put_review(
    store: db.Store, observation_id: int, body: Any, reviewer: str, defaults: CountingDefaults
) -> ObservationRecord:
    """Store a review of an observation (replacing the one in force), apply it and recalibrate the facility."""
    with store.transaction() as session:
        obs = db.get_observation(session, observation_id)
        if obs is None:
            raise NotFoundError(f"observation {observation_id} not found")
        db.lock_facility(session, obs.facility_id)
        before = scored_histories(session, obs.facility_id)
        width = obs.image_width if obs.image_sha256 is not None else None
        height = obs.image_height if obs.image_sha256 is not None else None
        review = parse_review(body, width, height)
        if review.has_boxes and obs.image_sha256 is None:
            raise InvalidInputError(
                f"observation {observation_id} has no image to mark boxes on; review it with counts"
            )
        now = db.utcnow()
        previous = db.current_review(session, observation_id)
        if previous is not None:
            previous.status, previous.ended_at, previous.ended_by = db.REVIEW_REPLACED, now, reviewer
            session.flush()  # the old one stops being current before the new one is
        verified = _verified_counts(obs, review)
        session.add(
            db.Review(
                observation_id=observation_id,
                facility_id=obs.facility_id,
                status=db.REVIEW_CURRENT,
                reviewer=reviewer,
                reviewed_at=now,
                exhaustive=review.exhaustive,
                counts=verified,
                objects=review.objects if review.has_boxes else None,
                ignore=review.ignore if review.has_boxes else None,
            )
        )
        _set_verified(obs, verified)
        session.flush()
        apply_reviews(session, obs.facility_id, defaults, before)
        session.refresh(obs)
        record = record_with_review(session, obs)
    log.info("observation %d reviewed by %s: verified %s", observation_id, reviewer, verified)
    return record


def withdraw_review(
    store: db.Store, observation_id: int, reviewer: str, defaults: CountingDefaults
) -> ObservationRecord:
    """Withdraw the review in force (kept in the audit trail); the detector's count is the history's again."""
    with store.transaction() as session:
        obs = db.get_observation(session, observation_id)
        if obs is None:
            raise NotFoundError(f"observation {observation_id} not found")
        db.lock_facility(session, obs.facility_id)
        before = scored_histories(session, obs.facility_id)
        current = db.current_review(session, observation_id)
        if current is None:
            raise NotFoundError(f"observation {observation_id} has no review in force")
        current.status, current.ended_at, current.ended_by = db.REVIEW_WITHDRAWN, db.utcnow(), reviewer
        _set_verified(obs, {})
        session.flush()
        apply_reviews(session, obs.facility_id, defaults, before)
        session.refresh(obs)
        record = record_with_review(session, obs)
    log.info("observation %d: review withdrawn by %s", observation_id, reviewer)
    return record


def _set_verified(obs: db.Observation, verified: Mapping[str, int]) -> None:
    by_class = {c.class_name: c for c in obs.counts}
    for cls in set(by_class) | set(verified):
        row = by_class.get(cls)
        if row is None:  # a class the detector did not count (an import without it): the review makes it known
            row = db.ObservationCount(class_name=cls, count=int(verified[cls]), count_sd=None)
            obs.counts.append(row)
        row.verified_count = verified.get(cls)


# ------------------------------------------------------------------------------------------------ calibration


def review_evidence(session: Session, facility_id: str, classes: Sequence[str]) -> dict[str, list[ReviewEvidence]]:
    """Per class, the evidence of each review in force at a facility (images with stored candidate scores only)."""
    out: dict[str, list[ReviewEvidence]] = {c: [] for c in classes}
    for review in db.facility_reviews(session, facility_id):
        obs = db.get_observation(session, review.observation_id)
        if obs is None or obs.image_sha256 is None:
            continue
        rows = [d for d in obs.detections if d.score is not None]
        if not rows and any(d.score is None for d in obs.detections):
            continue  # stored before candidates were kept: no scores to calibrate with
        for cls in classes:
            if cls not in review.counts:
                continue
            dets = [d for d in rows if d.class_name == cls]
            scores = np.array([d.threshold_score for d in dets], np.float64)
            if review.objects is None:
                out[cls].append(ReviewEvidence(scores, None, int(review.counts[cls])))
                continue
            truth = [np.asarray(o["obb"], np.float64) for o in review.objects if o["class"] == cls]
            outcomes = match_detections(
                [np.asarray(d.obb, np.float64) for d in dets],
                scores.tolist(),
                truth,
                [np.asarray(r, np.float64) for r in (review.ignore or [])],
                loose=cls in LOOSE_CLASSES,
            )
            keep = np.array([o is not Outcome.IGNORED for o in outcomes], bool)
            hits = np.array([o is Outcome.HIT for o in outcomes], bool)
            out[cls].append(
                ReviewEvidence(scores[keep] if len(keep) else scores, hits[keep] if len(keep) else hits, len(truth))
            )
    return out


def pool_for(session: Session, facility_id: str, cls: str, default_threshold: float) -> Pool:
    """The other calibrated facilities' evidence for a class (the hierarchical prior)."""
    others = [c for c in db.other_calibrations(session, facility_id) if c.class_name == cls]
    z0 = logit(default_threshold)
    return Pool(
        offsets=[logit(c.fitted_threshold) - z0 for c in others if c.fitted_threshold is not None],
        biases=[c.count_bias for c in others],
        spreads=[c.count_rel_sd for c in others],
    )


History = dict[str, list[tuple[int, Any, int, float | None]]]


def scored_histories(session: Session, facility_id: str) -> History:
    """Per class, the series the facility's anomaly scores are computed on: ``(id, time, count, count_sd)`` with
    verified counts and bias-corrected detector counts (:func:`app.scoring.review_calibration.effective_series`)."""
    histories = db.count_histories(session, facility_id, CLASS_NAMES)
    biases = {c: cal.count_bias for c, cal in db.facility_calibrations(session, facility_id).items()}
    out: History = {}
    for cls, history in histories.items():
        counts, sds = effective_series(history, biases.get(cls, 0.0))
        out[cls] = [(h[0], h[1], c, sd) for h, c, sd in zip(history, counts, sds, strict=True)]
    return out


def rescore_changes(session: Session, facility_id: str, before: History) -> None:
    """Rescore each class from its first point whose scored value differs from ``before`` (a point's score depends
    only on the points before it, so the earlier ones keep theirs exactly)."""
    after = scored_histories(session, facility_id)
    for cls in sorted(set(before) | set(after)):
        old, new = before.get(cls, []), after.get(cls, [])
        first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
        if first < len(new):
            rescore(session, facility_id, since=new[first][1], classes=[cls])


def apply_reviews(
    session: Session, facility_id: str, defaults: CountingDefaults, before: History
) -> dict[str, ClassCalibration]:
    """Recalibrate a facility from its reviews in force, re-threshold its stored images at the new thresholds and
    rescore its history from the first point the change reaches (inside the caller's transaction, facility
    locked; ``before``: :func:`scored_histories` read before the change). Returns the calibration."""
    classes = list(CLASS_NAMES)
    evidence = review_evidence(session, facility_id, classes)
    stored = db.facility_calibrations(session, facility_id)
    result: dict[str, ClassCalibration] = {}
    for cls in classes:
        default = float(defaults.thresholds.get(cls, 0.35))
        cal = calibrate_class(
            evidence[cls], default, defaults.floor, defaults.rel_sd, pool_for(session, facility_id, cls, default)
        )
        result[cls] = cal
        row = stored.get(cls)
        if not evidence[cls]:
            if row is not None:
                session.delete(row)
            continue
        if row is None:
            row = db.FacilityCalibration(facility_id=facility_id, class_name=cls)
            session.add(row)
        row.reviews, row.threshold, row.fitted_threshold = cal.reviews, cal.threshold, cal.fitted_threshold
        row.count_bias, row.count_rel_sd, row.updated_at = cal.count_bias, cal.count_rel_sd, db.utcnow()
    session.flush()
    thresholds = {
        c: (cal.threshold if cal.reviews else float(defaults.thresholds.get(c, 0.35))) for c, cal in result.items()
    }
    spreads = {c: (cal.count_rel_sd if cal.reviews else defaults.rel_sd) for c, cal in result.items()}
    rethreshold_facility(session, facility_id, thresholds, spreads)
    rescore_changes(session, facility_id, before)
    return result


def rethreshold_facility(
    session: Session, facility_id: str, thresholds: Mapping[str, float], spreads: Mapping[str, float]
) -> int:
    """Recount the facility's stored images at ``thresholds`` from their kept candidates (images stored before
    candidates were kept are left as they are); returns counts changed."""
    changed = 0
    for obs in db.list_observations(session, facility_id):
        if obs.image_sha256 is None or any(d.score is None for d in obs.detections):
            continue
        by_class = {c.class_name: c for c in obs.counts}
        for cls, t in thresholds.items():
            row = by_class.get(cls)
            if row is None:
                continue
            conf = []
            for d in obs.detections:
                if d.class_name == cls:
                    d.counted = d.threshold_score >= t
                    if d.counted:
                        conf.append(float(d.confidence))
            sd = round(count_uncertainty(conf, len(conf), spreads.get(cls, 0.2)), 4)
            if row.count != len(conf) or row.count_sd != sd:
                row.count, row.count_sd = len(conf), sd
                changed += 1
    session.flush()
    return changed


def facility_calibration(session: Session, facility_id: str) -> dict[str, dict[str, Any]]:
    """A facility's calibration as shown in the API (classes never reviewed are absent)."""
    return {
        c: {
            "reviews": row.reviews,
            "threshold": round(row.threshold, 4),
            "fitted_threshold": None if row.fitted_threshold is None else round(row.fitted_threshold, 4),
            "count_bias": round(row.count_bias, 4),
            "count_rel_sd": round(row.count_rel_sd, 4),
            "updated_at": iso(row.updated_at),
        }
        for c, row in sorted(db.facility_calibrations(session, facility_id).items())
    }


def calibrated_thresholds(session: Session, facility_id: str) -> tuple[dict[str, float], dict[str, float]]:
    """The thresholds and count spreads in force at a facility by its reviews (classes never reviewed absent)."""
    rows = db.facility_calibrations(session, facility_id)
    return {c: r.threshold for c, r in rows.items()}, {c: r.count_rel_sd for c, r in rows.items()}


__all__ = [
    "CountingDefaults",
    "ReviewInput",
    "apply_reviews",
    "calibrated_thresholds",
    "counting_defaults",
    "facility_calibration",
    "parse_review",
    "put_review",
    "rethreshold_facility",
    "review_dict",
    "review_history",
    "withdraw_review",
]


def get_calibration(store: db.Store, facility_id: str) -> dict[str, dict[str, Any]]:
    """:func:`facility_calibration` in its own session."""
    with store.session() as session:
        return facility_calibration(session, facility_id)


def get_observation(store: db.Store, observation_id: int) -> ObservationRecord:
    """One observation with its detections, candidates and review in force; :class:`NotFoundError` if unknown."""
    with store.session() as session:
        obs = db.get_observation(session, observation_id)
        if obs is None:
            raise NotFoundError(f"observation {observation_id} not found")
        return record_with_review(session, obs)
