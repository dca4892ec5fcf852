"""Facilities: create, list, show."""

from __future__ import annotations

from fastapi import APIRouter

from app import service
from app.api.deps import StoreDep
from app.api.routes.common import FacilityId, errors
from app.api.schemas import FacilityCreate, FacilityOut

router = APIRouter(tags=["facilities"])


@router.post("/facilities", status_code=201, response_model=FacilityOut, responses=errors(409, 422))
def create_facility(body: FacilityCreate, store: StoreDep) -> FacilityOut:
    """Create a facility (409 if the id exists)."""
    rec = service.create_facility(store, body.id, body.name, body.kind)
    return FacilityOut.model_validate(rec, from_attributes=True)


@router.get("/facilities", response_model=list[FacilityOut])
def list_facilities(store: StoreDep) -> list[FacilityOut]:
    """All facilities, ordered by id."""
    return [FacilityOut.model_validate(r, from_attributes=True) for r in service.list_facilities(store)]


@router.get("/facilities/{facility_id}", response_model=FacilityOut, responses=errors(404))
def get_facility(facility_id: FacilityId, store: StoreDep) -> FacilityOut:
    """One facility (404 if unknown)."""
    rec = service.get_facility(store, facility_id)
    return FacilityOut.model_validate(rec, from_attributes=True)
