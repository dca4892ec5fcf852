"""Alerts: per-facility thresholds on the anomaly scores, the list of anomalies, and webhook delivery.

* A facility's thresholds (``score`` for surges, ``drop_score`` for drops; either may be off) live in
  ``alert_thresholds``. Listing anomalies uses them, or :data:`DEFAULT_SCORE_THRESHOLD` when a facility has none.
* When an observation is stored (upload or import) and one of its counts reaches a threshold the facility has
  *set*, one delivery per (observation, class, direction) is written to ``alert_deliveries`` in the same
  transaction (an outbox: an alert is never lost between the database and the webhook).
* :func:`deliver_due` POSTs the due deliveries as JSON to the configured webhook URL. A 2xx answer marks a
  delivery ``sent``; anything else (refusal, timeout, non-2xx) keeps it ``pending`` with ``next_attempt_at`` put
  back by exponential backoff (``base * 2^(attempts-1)``, capped). With ``max_attempts`` set, a delivery that
  exhausts it becomes ``failed``: kept, listed, and put back to ``pending`` by :func:`retry_failed`.

No FastAPI here; the API's lifespan runs :func:`deliver_due` periodically in a worker thread.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from app import database as db

log = logging.getLogger(__name__)

#: Threshold used to list anomalies of a facility that has no thresholds of its own (score and drop score).
DEFAULT_SCORE_THRESHOLD: float = 3.0
DIRECTIONS = ("surge", "drop")
#: Seconds beyond the POST timeout a process holds a delivery it is trying (other processes skip it meanwhile).
CLAIM_MARGIN_S = 60.0

#: ``post(url, body_bytes, timeout_s) -> HTTP status``; raises on transport errors.
PostFn = Callable[[str, bytes, float], int]


@dataclass(frozen=True)
class Thresholds:
    """Effective thresholds of a facility; ``configured`` is False when these are the defaults."""

    facility_id: str
    score: float | None
    drop_score: float | None
    configured: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "facility_id": self.facility_id,
            "score": self.score,
            "drop_score": self.drop_score,
            "configured": self.configured,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _check_threshold(name: str, value: float | None) -> None:
    if value is not None and not (0.0 < float(value) <= 300.0):
        raise ValueError(f"{name} threshold must be between 0 (exclusive) and 300, or null to switch it off")


def get_thresholds(session: Session, facility_id: str) -> Thresholds:
    """Effective thresholds: the facility's own, else the defaults."""
    row = db.get_thresholds(session, facility_id)
    if row is None:
        return Thresholds(facility_id, DEFAULT_SCORE_THRESHOLD, DEFAULT_SCORE_THRESHOLD, configured=False)
    return Thresholds(facility_id, row.score, row.drop_score, configured=True)


def set_thresholds(session: Session, facility_id: str, score: float | None, drop_score: float | None) -> Thresholds:
    """Set (replace) a facility's thresholds; ``None`` switches that direction off. Raises ValueError if invalid."""
    _check_threshold("score", score)
    _check_threshold("drop_score", drop_score)
    row = db.get_thresholds(session, facility_id)
    if row is None:
        row = db.AlertThreshold(facility_id=facility_id)
        session.add(row)
    row.score = None if score is None else float(score)
    row.drop_score = None if drop_score is None else float(drop_score)
    row.updated_at = db.utcnow()
    session.flush()
    return Thresholds(facility_id, row.score, row.drop_score, configured=True)


def clear_thresholds(session: Session, facility_id: str) -> bool:
    """Remove a facility's thresholds (back to defaults, no webhook alerts). True if there were any."""
    row = db.get_thresholds(session, facility_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def _crossings(row: db.ObservationCount, score_thr: float | None, drop_thr: float | None) -> list[str]:
    out = []
    if score_thr is not None and row.score is not None and row.score >= score_thr:
        out.append("surge")
    if drop_thr is not None and row.drop_score is not None and row.drop_score >= drop_thr:
        out.append("drop")
    return out


def anomaly_dict(
    row: db.ObservationCount, obs: db.Observation, direction: str, threshold: float, facility_name: str | None = None
) -> dict[str, Any]:
    """One anomaly as shown by the API and sent to the webhook."""
    return {
        "facility_id": obs.facility_id,
        "facility_name": facility_name,
        "observation_id": obs.id,
        "captured_at": _iso(obs.captured_at),
        "source": obs.source,
        "class": row.class_name,
        "direction": direction,
        "count": row.count,
        "threshold": threshold,
        "score": row.score,
        "drop_score": row.drop_score,
        "expected": row.expected,
        "count_sd": row.count_sd,
        "history_size": row.history_size,
        "history_max": row.history_max,
        "exceeds_history_max": bool(row.exceeds_history_max),
        "history_span_days": row.history_span_days,
        "highest_in_days": row.highest_in_days,
        "lowest_in_days": row.lowest_in_days,
        "reason": row.reason,
        "model": row.model,
    }


def enqueue_alerts(session: Session, facility_id: str, observations: Iterable[db.Observation]) -> int:
    """Queue webhook deliveries for counts of these (just stored and scored) observations that cross the
    facility's *configured* thresholds. Idempotent per (observation, class, direction). Returns how many."""
    thr = db.get_thresholds(session, facility_id)
    if thr is None:
        return 0
    facility = db.get_facility(session, facility_id)
    name = facility.name if facility is not None else None
    existing: set[tuple[int, str, str]] = set()  # (observation, class, direction) already queued
    obs_list = list(observations)
    ids = [o.id for o in obs_list]
    for i in range(0, len(ids), 500):
        existing.update(
            session.execute(
                select(db.AlertDelivery.observation_id, db.AlertDelivery.class_name, db.AlertDelivery.direction).where(
                    db.AlertDelivery.observation_id.in_(ids[i : i + 500])
                )
            ).all()
        )
    n = 0
    now = db.utcnow()
    for obs in obs_list:
        for row in obs.counts:
            for direction in _crossings(row, thr.score, thr.drop_score):
                if (obs.id, row.class_name, direction) in existing:
                    continue
                threshold = thr.score if direction == "surge" else thr.drop_score
                assert threshold is not None
                payload = {"event": "anomaly", **anomaly_dict(row, obs, direction, threshold, name)}
                session.add(
                    db.AlertDelivery(
                        facility_id=facility_id,
                        observation_id=obs.id,
                        class_name=row.class_name,
                        direction=direction,
                        payload=payload,
                        status="pending",
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
                n += 1
    if n:
        session.flush()
        log.info("facility %s: %d alert(s) queued", facility_id, n)
    return n


def list_anomalies(
    session: Session,
    facility_id: str | None = None,
    since: datetime | None = None,
    min_score: float | None = None,
    min_drop_score: float | None = None,
    limit: int = 1000,
    after: tuple[datetime, int, str, str] | None = None,
) -> list[dict[str, Any]]:
    """Counts crossing their facility's thresholds (or the given ones), newest first, one entry per direction.

    The order is (captured_at, observation id) descending, then class name and direction (surge before drop), a
    unique key; ``after`` (captured_at, observation id, class, direction) continues just after that entry. With
    explicit ``min_score``/``min_drop_score`` those apply to every facility; otherwise each facility's own
    thresholds (or the defaults) apply.
    """
    explicit = min_score is not None or min_drop_score is not None
    own = db.all_thresholds(session)
    if explicit:
        floor_score, floor_drop = min_score, min_drop_score
    else:  # the lowest threshold anywhere narrows the query; each row is then checked against its own
        scores = [t.score for t in own.values() if t.score is not None] + [DEFAULT_SCORE_THRESHOLD]
        drops = [t.drop_score for t in own.values() if t.drop_score is not None] + [DEFAULT_SCORE_THRESHOLD]
        floor_score, floor_drop = min(scores), min(drops)
    names = {f.id: f.name for f, _ in db.list_facilities(session)}
    out: list[dict[str, Any]] = []
    batch = max(2 * limit, 100)
    start: tuple[datetime, int, str] | None = (after[0], after[1], after[2]) if after else None
    include_start = True  # the cursor's count may still have its other direction to show
    while len(out) < limit:
        rows = db.anomalous_counts(session, facility_id, since, floor_score, floor_drop, batch, start, include_start)
        for row, obs in rows:
            if explicit:
                s_thr, d_thr = min_score, min_drop_score
            elif obs.facility_id in own:
                s_thr, d_thr = own[obs.facility_id].score, own[obs.facility_id].drop_score
            else:
                s_thr = d_thr = DEFAULT_SCORE_THRESHOLD
            for direction in _crossings(row, s_thr, d_thr):
                if (
                    after is not None
                    and (obs.id, row.class_name) == (after[1], after[2])
                    and DIRECTIONS.index(direction) <= DIRECTIONS.index(after[3])
                ):
                    continue  # at or before the cursor
                thr = s_thr if direction == "surge" else d_thr
                assert thr is not None
                out.append(anomaly_dict(row, obs, direction, thr, names.get(obs.facility_id)))
        if len(rows) < batch:
            break
        last_row, last_obs = rows[-1]
        start, include_start = (last_obs.captured_at, last_obs.id, last_row.class_name), False
    return out[:limit]


def http_post(url: str, body: bytes, timeout_s: float) -> int:
    """POST a JSON body with urllib; returns the HTTP status (non-2xx statuses are returned, not raised)."""
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "wagon-detector"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            # the URL comes from the settings, not from a request
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def backoff_seconds(attempts: int, base_s: float, max_s: float) -> float:
    """Wait before the next try after ``attempts`` failed tries: ``base * 2^(attempts-1)``, at most ``max_s``."""
    return float(min(max_s, base_s * 2.0 ** max(0, attempts - 1)))


def deliver_due(
    store: db.Store,
    url: str,
    *,
    now: datetime | None = None,
    timeout_s: float = 10.0,
    base_backoff_s: float = 5.0,
    max_backoff_s: float = 3600.0,
    max_attempts: int = 0,
    batch: int = 50,
    post: PostFn = http_post,
) -> dict[str, int]:
    """Try every pending delivery whose time has come (oldest first, at most ``batch``).

    Each outcome is committed on its own, so a crash mid-batch loses nothing. ``max_attempts`` 0: retry forever.
    Returns counts of ``sent`` and ``retry``/``failed`` outcomes.
    """
    now = now or db.utcnow()
    with store.session() as session:
        due = session.execute(
            select(db.AlertDelivery.id, db.AlertDelivery.payload, db.AlertDelivery.attempts)
            .where(db.AlertDelivery.status == "pending", db.AlertDelivery.next_attempt_at <= now)
            .order_by(db.AlertDelivery.next_attempt_at, db.AlertDelivery.id)
            .limit(batch)
        ).all()
    result = {"sent": 0, "retry": 0, "failed": 0}
    lease = timedelta(seconds=timeout_s + CLAIM_MARGIN_S)
    for delivery_id, payload, attempts in due:
        if not _claim(store, delivery_id, now, now + lease):
            continue  # another process (polling the same database) took it
        body = json.dumps({**payload, "delivery_id": delivery_id}).encode()
        error: str | None = None
        try:
            status = post(url, body, timeout_s)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except Exception as exc:
            # any transport failure means "try again later"
            error = f"{type(exc).__name__}: {exc}"[:500]
        attempts += 1
        values: dict[str, Any] = {"attempts": attempts, "last_error": error}
        if error is None:
            values.update(status="sent", sent_at=db.utcnow())
            result["sent"] += 1
        elif max_attempts and attempts >= max_attempts:
            values.update(status="failed")
            result["failed"] += 1
            log.warning("alert delivery %d failed for good after %d attempts: %s", delivery_id, attempts, error)
        else:
            values.update(
                next_attempt_at=now + timedelta(seconds=backoff_seconds(attempts, base_backoff_s, max_backoff_s))
            )
            result["retry"] += 1
            log.info("alert delivery %d attempt %d failed (%s); will retry", delivery_id, attempts, error)
        with store.transaction() as session:
            session.execute(update(db.AlertDelivery).where(db.AlertDelivery.id == delivery_id).values(**values))
    return result


def _claim(store: db.Store, delivery_id: int, now: datetime, until: datetime) -> bool:
    """Take a due delivery for this process by moving its next attempt to ``until`` (a lease: if the process
    dies before recording the outcome, the delivery is due again then). A conditional update, so of several
    processes exactly one wins (PostgreSQL rechecks the condition after the row lock; SQLite writes one at a time).
    """
    with store.transaction() as session:
        res = session.execute(
            update(db.AlertDelivery)
            .where(
                db.AlertDelivery.id == delivery_id,
                db.AlertDelivery.status == "pending",
                db.AlertDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=until)
        )
        return int(cast(CursorResult, res).rowcount or 0) == 1  # an UPDATE's result is a CursorResult


def retry_failed(session: Session, now: datetime | None = None) -> int:
    """Put every ``failed`` delivery back to ``pending``, due now. Returns how many."""
    res = session.execute(
        update(db.AlertDelivery)
        .where(db.AlertDelivery.status == "failed")
        .values(status="pending", next_attempt_at=now or db.utcnow())
    )
    return int(cast(CursorResult, res).rowcount or 0)  # an UPDATE's result is a CursorResult


def list_deliveries(
    session: Session, status: str | None = None, limit: int = 200, before: int | None = None
) -> list[dict[str, Any]]:
    """Deliveries, newest (highest id) first, optionally of one status; with ``before``, only ids below it."""
    stmt = select(db.AlertDelivery).order_by(db.AlertDelivery.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(db.AlertDelivery.id < before)
    if status is not None:
        stmt = stmt.where(db.AlertDelivery.status == status)
    return [
        {
            "id": d.id,
            "facility_id": d.facility_id,
            "observation_id": d.observation_id,
            "class": d.class_name,
            "direction": d.direction,
            "status": d.status,
            "attempts": d.attempts,
            "next_attempt_at": _iso(d.next_attempt_at),
            "last_error": d.last_error,
            "created_at": _iso(d.created_at),
            "sent_at": _iso(d.sent_at),
        }
        for d in session.scalars(stmt).all()
    ]
