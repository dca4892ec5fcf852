"""An import is scored before its write transaction: the scores stored are those rescoring inside the transaction
gives, also when another writer changes the history meanwhile (the import is then scored again)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import database as db
from app.database import Store
from app.usecases import facilities, import_store, imports
from app.usecases.imports import ImportRow
from app.usecases.observations import STORED_SCORE_FIELDS, rescore

pytestmark = pytest.mark.databases("sqlite", "postgresql")

T0 = datetime(2021, 1, 1, tzinfo=UTC)


def _rows(n: int, start: datetime, step: timedelta, base: int = 20) -> list[ImportRow]:
    return [ImportRow(start + i * step, {"railcar": base + i % 7, "container": i % 3}) for i in range(n)]


def _stored_scores(store: Store) -> dict[tuple[int, str], tuple[Any, ...]]:
    with store.session() as session:
        rows = session.query(db.ObservationCount).all()
        return {(r.observation_id, r.class_name): tuple(getattr(r, f) for f in STORED_SCORE_FIELDS) for r in rows}


def _rescored_in_place(store: Store) -> dict[tuple[int, str], tuple[Any, ...]]:
    """The scores that rescoring the whole history inside a transaction gives (rolled back afterwards)."""
    with store.session() as session:
        rescore(session, "yard", since=T0 - timedelta(days=1), classes=["railcar", "container"])
        rows = session.query(db.ObservationCount).all()
        out = {(r.observation_id, r.class_name): tuple(getattr(r, f) for f in STORED_SCORE_FIELDS) for r in rows}
        session.rollback()
    return out


def test_scores_equal_rescoring_in_the_transaction(store: Store) -> None:
    facilities.create_facility(store, "yard", "Yard", "rail")
    imports.import_counts(store, "yard", _rows(30, T0, timedelta(days=2)))
    result = imports.import_counts(store, "yard", _rows(30, T0 + timedelta(days=1), timedelta(days=2), base=25))
    stored = _stored_scores(store)
    assert stored == _rescored_in_place(store)
    assert all(v[0] is not None or v[6] != "not scored yet" for v in stored.values())
    shown = {(r.id, c): s for r in result.observations for c, s in r.anomaly.items() if s is not None}
    assert {k: tuple(getattr(s, f) for f in STORED_SCORE_FIELDS) for k, s in shown.items()} == {
        k: stored[k] for k in shown
    }


def test_history_changed_while_scoring_is_scored_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    facilities.create_facility(store, "yard", "Yard", "rail")
    imports.import_counts(store, "yard", _rows(20, T0, timedelta(days=3)))
    compute = import_store.compute_scores
    calls: list[int] = []

    def meddling(snapshot: Any, progress: Any = None) -> Any:
        calls.append(1)
        if len(calls) == 1:  # another writer stores an observation in the middle of the history meanwhile
            imports.import_counts(store, "yard", [ImportRow(T0 + timedelta(days=31), {"railcar": 90}, "other")])
        return compute(snapshot, progress)

    monkeypatch.setattr(import_store, "compute_scores", meddling)
    result = imports.import_counts(store, "yard", _rows(20, T0 + timedelta(days=1), timedelta(days=3)))
    assert len(result.observations) == 20
    assert len(calls) == 3  # the first plan (stale), the nested import's, the second plan
    with store.session() as session:
        assert db.count_observations(session, "yard") == 41
    assert _stored_scores(store) == _rescored_in_place(store)
