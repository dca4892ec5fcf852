"""Storing an import in bulk: the scores it creates and changes are computed first, then written in one short
transaction.

Scoring costs milliseconds per point (each point fits the history before it), so an import of thousands of rows
scored inside its write transaction held the database's write lock for minutes. Here the scores are computed from a
snapshot of the facility's history (:func:`read_snapshot`, then :func:`compute_scores`, which needs no database);
the write transaction (:func:`write_import`) only inserts the rows and updates the changed scores with batched
statements, no ORM object per row. The caller checks that the history is unchanged before writing
(:func:`app.database.history_fingerprint`); the scores are then exactly those rescoring inside the transaction
would give.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from app import database as db
from app.core.offline import CLASS_NAMES
from app.core.validation import require_aware
from app.scoring import fit_cache
from app.scoring.anomaly import MIN_HISTORY, AnomalyScore, PooledPrior, facility_stats, pooled_prior, score_series
from app.scoring.review_calibration import effective_series
from app.usecases import alerts
from app.usecases.observations import STORED_SCORE_FIELDS, ObservationRecord

#: Points scored between two progress reports.
PROGRESS_EVERY = 100
#: Sort key of the i-th new row: after every stored id (new rows get the next ids, in the order given).
_NEW = 1 << 62

#: ``(key, class) -> score``; the key is a stored observation's id, or ``-(i + 1)`` for the i-th new row.
Scores = dict[tuple[int, str], AnomalyScore]


class Row(Protocol):
    """An import row (:class:`app.usecases.imports.ImportRow`)."""

    @property
    def captured_at(self) -> datetime: ...
    @property
    def counts(self) -> dict[str, int]: ...
    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class _Series:
    """One class's merged series to rescore from ``since``: ``(captured_at, key, count, count_sd)`` in order."""

    class_name: str
    since: datetime
    points: list[tuple[datetime, int, int, float | None]]
    prior: PooledPrior | None


@dataclass(frozen=True)
class Snapshot:
    """What scoring an import needs from the database: each affected class's history merged with the new rows."""

    facility_id: str
    series: list[_Series]


def read_snapshot(session: Session, facility_id: str, fresh: Sequence[Row]) -> Snapshot:
    """Read the histories the new rows change (one query) and, for cold starts, the pooled prior."""
    classes = [c for c in CLASS_NAMES if any(c in r.counts for r in fresh)]
    histories = db.count_histories(session, facility_id, classes)
    biases = {c: cal.count_bias for c, cal in db.facility_calibrations(session, facility_id).items()}
    kind: str | None = None
    out: list[_Series] = []
    for cls in classes:
        new = [(require_aware(r.captured_at), i, r.counts[cls]) for i, r in enumerate(fresh) if cls in r.counts]
        since = min(t for t, _, _ in new)
        # (captured_at, order, key, count, count_sd): stored rows by id, new rows after them in the order given
        stored = histories.get(cls, [])
        counts, sds = effective_series(stored, biases.get(cls, 0.0))  # verified counts, bias-corrected others
        merged = [(h[1], h[0], h[0], c, sd) for h, c, sd in zip(stored, counts, sds, strict=True)]
        merged += [(t, _NEW + i, -(i + 1), c, None) for t, i, c in new]
        merged.sort(key=lambda p: (p[0], p[1]))
        prior = None
        if sum(1 for p in merged if p[0] < since) < MIN_HISTORY:  # some rescored point is a cold start
            if kind is None:
                facility = db.get_facility(session, facility_id)
                kind = facility.kind if facility is not None else ""
            pooled = db.pooled_counts(session, kind, cls, facility_id)
            prior = pooled_prior([facility_stats(c) for c in pooled], kind)
        out.append(_Series(cls, since, [(t, key, c, sd) for t, _, key, c, sd in merged], prior))
    return Snapshot(facility_id, out)


def compute_scores(snapshot: Snapshot, progress: Callable[[float], None] | None = None) -> Scores:
    """Score every point at or after each class's earliest new row (no database needed: may run unlocked);
    ``progress`` is told the share of those points scored (0-1), at most every :data:`PROGRESS_EVERY` points."""
    out: Scores = {}
    total = sum(sum(1 for p in s.points if p[0] >= s.since) for s in snapshot.series)
    done = [0]

    def scored(i: int) -> None:
        done[0] += 1
        if progress is not None and (done[0] % PROGRESS_EVERY == 0 or done[0] == total):
            progress(done[0] / max(total, 1))

    for s in snapshot.series:
        scores = score_series(
            [p[0] for p in s.points],
            [p[2] for p in s.points],
            since=s.since,
            prior=s.prior,
            count_sd=[p[3] for p in s.points],
            fit=fit_cache.CACHE.fitter(snapshot.facility_id, s.class_name),
            progress=scored if progress is not None else None,
        )
        for (_, key, _, _), score in zip(s.points, scores, strict=True):
            if score is not None:
                out[(key, s.class_name)] = score
    return out


#: What a count nobody has scored yet holds (the columns' defaults).
_UNSCORED = AnomalyScore(
    score=None,
    expected=None,
    history_size=0,
    history_max=None,
    exceeds_history_max=False,
    history_span_days=None,
    reason="not scored yet",
)
_UNSCORED_COLUMNS = {name: getattr(_UNSCORED, name) for name in STORED_SCORE_FIELDS}


def _columns(score: AnomalyScore | None) -> dict[str, Any]:
    """The stored score columns of a count."""
    if score is None:
        return dict(_UNSCORED_COLUMNS)
    return {name: getattr(score, name) for name in STORED_SCORE_FIELDS}


def _as_stored(score: AnomalyScore | None) -> AnomalyScore:
    """The score as reading its stored row back gives it (imported counts are exact: no ``count_sd``)."""
    return _UNSCORED if score is None else AnomalyScore(**_columns(score))


@dataclass(frozen=True)
class Prepared:
    """An import ready to write: the columns of every row to insert or update, built before the write lock."""

    facility_id: str
    rows: Sequence[Row]
    #: Columns of the new observations, in order.
    observations: list[dict[str, Any]]
    #: ``(index of the new observation, columns of its count without observation_id)``.
    counts: list[tuple[int, dict[str, Any]]]
    #: Score columns of stored counts that change, with their keys.
    updates: list[dict[str, Any]]
    #: Each new observation's scores by class, as stored.
    anomaly: list[dict[str, AnomalyScore]]


def prepare(facility_id: str, fresh: Sequence[Row], scores: Scores, created: datetime) -> Prepared:
    """Every column the write needs (no database needed: may run unlocked)."""
    anomaly = [{cls: _as_stored(scores.get((-(i + 1), cls))) for cls in r.counts} for i, r in enumerate(fresh)]
    return Prepared(
        facility_id=facility_id,
        rows=fresh,
        observations=[
            {
                "facility_id": facility_id,
                "captured_at": require_aware(r.captured_at),
                "source": r.source,
                "created_at": created,
            }
            for r in fresh
        ],
        counts=[
            (i, {"class_name": cls, "count": int(n), "count_sd": None, **_columns(scores.get((-(i + 1), cls)))})
            for i, r in enumerate(fresh)
            for cls, n in r.counts.items()
        ],
        updates=[
            {"observation_id": key, "class_name": cls, **_columns(s)} for (key, cls), s in scores.items() if key > 0
        ],
        anomaly=anomaly,
    )


def write_import(session: Session, prepared: Prepared) -> list[int]:
    """Insert the new rows with their scores, update the stored scores that changed and queue alerts for new counts
    crossing the facility's thresholds, in the caller's transaction; return the new observations' ids in order."""
    ids = db.insert_observations(session, prepared.facility_id, prepared.observations)
    for i, columns in prepared.counts:
        columns["observation_id"] = ids[i]
    db.insert_counts(session, [columns for _, columns in prepared.counts])
    db.update_scores(session, prepared.updates)
    if db.get_thresholds(session, prepared.facility_id) is not None:
        _queue_alerts(session, prepared.facility_id, records(prepared, ids))
    return ids


def oldest_first(prepared: Prepared, ids: Sequence[int]) -> list[int]:
    """The new observations' ids, oldest first (by captured_at, then id)."""
    return [oid for _, oid in sorted(zip((o["captured_at"] for o in prepared.observations), ids, strict=True))]


def records(prepared: Prepared, ids: Sequence[int]) -> list[ObservationRecord]:
    """The new observations as users see them, oldest first."""
    out = [
        _record(oid, prepared.facility_id, r, anomaly)
        for oid, r, anomaly in zip(ids, prepared.rows, prepared.anomaly, strict=True)
    ]
    out.sort(key=lambda rec: (rec.captured_at, rec.id))
    return out


def _record(oid: int, facility_id: str, row: Row, anomaly: Mapping[str, AnomalyScore]) -> ObservationRecord:
    classes = list(CLASS_NAMES) + sorted(set(row.counts) - set(CLASS_NAMES))
    return ObservationRecord(
        id=oid,
        facility_id=facility_id,
        captured_at=require_aware(row.captured_at),
        source=row.source,
        counts={c: row.counts.get(c) for c in classes},
        anomaly={c: anomaly.get(c) for c in classes},
        image=None,
        model=None,
    )


def _queue_alerts(session: Session, facility_id: str, records: Sequence[ObservationRecord]) -> None:
    """Queue the webhook deliveries of new counts crossing the configured thresholds (:func:`alerts.enqueue_alerts`,
    given ORM objects only for the observations that may cross: not one per row)."""
    thr = db.get_thresholds(session, facility_id)
    if thr is None:
        return
    crossing = [
        rec
        for rec in records
        if any(
            s is not None
            and (
                (thr.score is not None and s.score is not None and s.score >= thr.score)
                or (thr.drop_score is not None and s.drop_score is not None and s.drop_score >= thr.drop_score)
            )
            for s in rec.anomaly.values()
        )
    ]
    objs = []
    for rec in crossing:
        obs = db.Observation(id=rec.id, facility_id=facility_id, captured_at=rec.captured_at, source=rec.source)
        obs.counts = [
            db.ObservationCount(
                observation_id=rec.id, class_name=cls, count=n, count_sd=None, **_columns(rec.anomaly[cls])
            )
            for cls, n in rec.counts.items()
            if n is not None
        ]
        objs.append(obs)
    if objs:
        alerts.enqueue_alerts(session, facility_id, objs)
