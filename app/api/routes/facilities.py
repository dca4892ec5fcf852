"""Facilities: create, list, show, change (name, footprint)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api import web
from app.api.auth import allow
from app.api.deps import StoreDep
from app.api.routes.common import DEFAULT_PAGE, MAX_PAGE, FacilityId, errors
from app.api.schemas import FacilityCreate, FacilityOut, FacilityPageOut, FacilityPatch
from app.usecases import facilities, reviews
from app.usecases.keys import Access

router = APIRouter(tags=["facilities"])


@router.post(
    "/facilities",
    status_code=201,
    response_model=FacilityOut,
    responses=errors(409, 422),
    dependencies=[allow(Access.ADMIN)],
)
def create_facility(body: FacilityCreate, store: StoreDep) -> FacilityOut:
    """Create a facility (409 if the id exists)."""
    rec = facilities.create_facility(store, body.id, body.name, body.kind, footprint=body.footprint)
    return FacilityOut.model_validate(rec, from_attributes=True)


@router.get("/facilities", response_model=FacilityPageOut, responses=errors(422), dependencies=[allow(Access.READ)])
def list_facilities(
    store: StoreDep,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most facilities in the page.")] = DEFAULT_PAGE,
) -> FacilityPageOut:
    """Facilities ordered by id, a page at a time: the page's `facilities` and `next_cursor` (null on the last
    page; pass it as `cursor` to continue)."""
    after = web.cursor_key(cursor, str)
    records = facilities.list_facilities(store, after=after[0] if after else None, limit=limit + 1)
    page, next_cursor = web.paginate(records, limit, lambda r: [r.id])
    return FacilityPageOut(
        facilities=[FacilityOut.model_validate(r, from_attributes=True) for r in page], next_cursor=next_cursor
    )


@router.get(
    "/facilities/{facility_id}", response_model=FacilityOut, responses=errors(404), dependencies=[allow(Access.READ)]
)
def get_facility(facility_id: FacilityId, store: StoreDep) -> FacilityOut:
    """One facility (404 if unknown), with the `calibration` its reviews give."""
    rec = facilities.get_facility(store, facility_id)
    data = FacilityOut.model_validate(rec, from_attributes=True).model_dump()
    data["calibration"] = reviews.get_calibration(store, facility_id)
    return FacilityOut.model_validate(data)


@router.patch(
    "/facilities/{facility_id}",
    response_model=FacilityOut,
    responses=errors(404, 422),
    dependencies=[allow(Access.ADMIN)],
)
def update_facility(facility_id: FacilityId, body: FacilityPatch, store: StoreDep) -> FacilityOut:
    """Change a facility's name and/or footprint (a GeoJSON Polygon in WGS84; `null` removes it). Fields left out
    stay as they are; earlier observations keep their counts."""
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    rec = facilities.update_facility(
        store,
        facility_id,
        name=changes.get("name"),
        **({"footprint": changes["footprint"]} if "footprint" in changes else {}),
    )
    return FacilityOut.model_validate(rec, from_attributes=True)
