"""Reviews: an analyst records what an observation's image really shows, or withdraws it; the audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool

from app.api.auth import allow
from app.api.deps import RuntimeDep, StoreDep, request_prefit
from app.api.routes.common import ObservationId, errors
from app.api.schemas import ObservationDetailOut, ReviewTrailOut
from app.usecases import reviews
from app.usecases.keys import Access, Principal

router = APIRouter(tags=["reviews"])

_REVIEW_EXAMPLES = {
    "boxes": {
        "summary": "The true objects, undecided regions, every railcar and container marked",
        "value": {
            "objects": [{"class": "railcar", "obb": [[10, 20], [60, 45], [55, 55], [5, 30]]}],
            "ignore": [[[100, 100], [140, 100], [140, 130], [100, 130]]],
            "exhaustive": True,
        },
    },
    "counts": {"summary": "A count without boxes", "value": {"counts": {"railcar": 41}}},
}


def _defaults(runtime: RuntimeDep) -> reviews.CountingDefaults:
    s = runtime.settings
    return reviews.counting_defaults(runtime.detector, s.resolved_model_path, s.candidate_floor, s.count_rel_error)


def _detail(rec: Any) -> ObservationDetailOut:
    return ObservationDetailOut.model_validate(rec.to_dict(with_detections=True))


@router.put(
    "/observations/{observation_id}/review",
    response_model=ObservationDetailOut,
    responses=errors(404, 422),
)
async def put_review(
    observation_id: ObservationId,
    request: Request,
    runtime: RuntimeDep,
    principal: Annotated[Principal, allow(Access.REVIEW)],
    body: Annotated[Any, Body(openapi_examples=_REVIEW_EXAMPLES)],
) -> ObservationDetailOut:
    """Record what the image shows: either `objects` (the true objects as oriented boxes in the image's pixel
    coordinates, like `detections[].obb`), `ignore` (regions the analyst could not decide) and `exhaustive`
    (every object of `classes`, default all, was marked), or `counts` alone. Replaces the review in force (kept in
    the audit trail). The verified counts become the history's, the facility's calibration is refitted, its stored
    images are recounted at the calibrated thresholds and its history rescored, in one transaction.
    Roles: analyst, admin."""
    rec = await run_in_threadpool(
        reviews.put_review, runtime.store, observation_id, body, principal.scope, _defaults(runtime)
    )
    request_prefit(request, rec.facility_id)
    return _detail(rec)


@router.delete(
    "/observations/{observation_id}/review",
    response_model=ObservationDetailOut,
    responses=errors(404),
)
async def delete_review(
    observation_id: ObservationId,
    request: Request,
    runtime: RuntimeDep,
    principal: Annotated[Principal, allow(Access.REVIEW)],
) -> ObservationDetailOut:
    """Withdraw the review in force (kept in the audit trail): the detector's count is the history's again and
    the facility is recalibrated without it. 404 when there is none. Roles: analyst, admin."""
    rec = await run_in_threadpool(
        reviews.withdraw_review, runtime.store, observation_id, principal.scope, _defaults(runtime)
    )
    request_prefit(request, rec.facility_id)
    return _detail(rec)


@router.get(
    "/observations/{observation_id}/reviews",
    response_model=ReviewTrailOut,
    responses=errors(404),
    dependencies=[allow(Access.READ)],
)
def review_trail(observation_id: ObservationId, store: StoreDep) -> ReviewTrailOut:
    """Every review of the observation, oldest first: the one in force, those it replaced and those withdrawn,
    with who ended each and when."""
    return ReviewTrailOut.model_validate({"reviews": reviews.review_history(store, observation_id)})
