"""Facilities: create, read, rename and give a footprint; the lookup every other use case starts from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import database as db
from app.core.errors import ConflictError, InvalidInputError, NotFoundError
from app.core.validation import check_text, iso, validate_facility_id

FACILITY_KINDS: tuple[str, ...] = ("rail", "port", "mixed")


@dataclass(frozen=True)
class FacilityRecord:
    """A facility as shown to users."""

    id: str
    name: str
    kind: str
    created_at: datetime
    observation_count: int = 0
    footprint: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "created_at": iso(self.created_at),
            "observation_count": self.observation_count,
            "footprint": self.footprint,
        }


def create_facility(
    store: db.Store, facility_id: str, name: str, kind: str, footprint: dict[str, Any] | None = None
) -> FacilityRecord:
    """Create a facility (optionally with a WGS84 GeoJSON Polygon footprint); :class:`ConflictError` if the id is
    taken."""
    validate_facility_id(facility_id)
    footprint = check_footprint(footprint)
    if kind not in FACILITY_KINDS:
        raise InvalidInputError(f"kind {kind!r} must be one of {', '.join(FACILITY_KINDS)}")
    if not name or not name.strip():
        raise InvalidInputError("name must not be empty")
    check_text(name, "name")
    try:
        with store.transaction() as session:
            if db.get_facility(session, facility_id) is not None:
                raise ConflictError(f"facility {facility_id!r} exists already")
            row = db.Facility(id=facility_id, name=name.strip(), kind=kind, created_at=db.utcnow(), footprint=footprint)
            session.add(row)
            session.flush()
            return _facility_record(row, 0)
    except IntegrityError as exc:  # lost a race with a concurrent create
        raise ConflictError(f"facility {facility_id!r} exists already") from exc


def get_facility(store: db.Store, facility_id: str) -> FacilityRecord:
    """One facility; :class:`NotFoundError` if unknown."""
    with store.session() as session:
        row = require_facility(session, facility_id)
        return _facility_record(row, db.count_observations(session, facility_id))


_UNSET: Any = object()


def update_facility(
    store: db.Store, facility_id: str, name: str | None = None, footprint: dict[str, Any] | None = _UNSET
) -> FacilityRecord:
    """Change a facility's name and/or footprint (``footprint=None`` removes it); :class:`NotFoundError` if
    unknown. Existing observations keep their counts (rerun them with ``wagon-detector reprocess``)."""
    if name is not None and not name.strip():
        raise InvalidInputError("name must not be empty")
    if name is not None:
        check_text(name, "name")
    checked = footprint if footprint is _UNSET else check_footprint(footprint)
    with store.transaction() as session:
        row = require_facility(session, facility_id)
        if name is not None:
            row.name = name.strip()
        if checked is not _UNSET:
            row.footprint = checked
        session.flush()
        return _facility_record(row, db.count_observations(session, facility_id))


def list_facilities(store: db.Store, after: str | None = None, limit: int | None = None) -> list[FacilityRecord]:
    """Facilities ordered by id (those after the id ``after``; at most ``limit``)."""
    with store.session() as session:
        return [_facility_record(f, n) for f, n in db.list_facilities(session, after=after, limit=limit)]


def require_facility(session: Session, facility_id: str, lock: bool = False) -> db.Facility:
    """The facility (``lock``: locked against other writers of its history, before rescoring it)."""
    row = db.lock_facility(session, facility_id) if lock else db.get_facility(session, facility_id)
    if row is None:
        raise NotFoundError(f"facility {facility_id!r} not found")
    return row


def _facility_record(row: db.Facility, n: int) -> FacilityRecord:
    return FacilityRecord(
        id=row.id, name=row.name, kind=row.kind, created_at=row.created_at, observation_count=n, footprint=row.footprint
    )


def check_footprint(footprint: dict[str, Any] | None) -> dict[str, Any] | None:
    """``None``, or the footprint validated as a WGS84 GeoJSON Polygon (:class:`InvalidInputError` if not)."""
    if footprint is None:
        return None
    from app.detection.pipeline import validate_footprint

    try:
        return validate_footprint(footprint)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
