"""Observations: import historical counts, read a facility's time series, show one observation, its detections
as GeoJSON and an overlay picture."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api import json_body, web
from app.api.auth import allow
from app.api.deps import RuntimeDep, SettingsDep, StoreDep, request_prefit
from app.api.limits import disarm_timeout
from app.api.routes.common import DEFAULT_PAGE, MAX_PAGE, FacilityId, ObservationId, errors
from app.api.schemas import ImportJobAcceptedOut, ImportOut, ObservationDetailOut, ObservationOut, ObservationPageOut
from app.core import offline, validation
from app.usecases import facilities, imports, observations, reviews, scenes
from app.usecases.keys import Access, Principal

router = APIRouter(tags=["observations"])

_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ImportIn"}},
            "text/csv": {
                "schema": {"type": "string"},
                "example": "captured_at,railcar,container\n2021-03-04T09:30:00Z,12,\n2021-04-02T09:31:00Z,15,3\n",
            },
        },
    }
}


@router.post(
    "/facilities/{facility_id}/observations",
    status_code=201,
    response_model=ImportOut,
    responses={
        200: {"model": ImportOut, "description": "A repeated `Idempotency-Key`: the original result."},
        202: {"model": ImportJobAcceptedOut, "description": "A large import: validated, stored in the background."},
        **errors(404, 409, 413, 415, 422, 503),
    },
    openapi_extra=_IMPORT_BODY,
)
async def import_observations(
    facility_id: FacilityId,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    principal: Annotated[Principal, allow(Access.UPLOAD)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Any unique string (e.g. a UUID) per import: a retry with the same key and body (by the same "
            "API key, to the same facility) returns the original result instead of importing again.",
        ),
    ] = None,
) -> ImportOut | JSONResponse:
    """Import historical counts without images, as JSON or CSV (``Content-Type: text/csv``, header
    ``captured_at,railcar,container``; an empty cell is unknown). All rows are validated first; if any is bad
    nothing is imported and the error names each bad row. Later observations are rescored.

    Never counted twice: a row with the same `captured_at`, `source` and counts as a stored observation is skipped
    (`duplicates`); one with the same time and source but other counts is refused with 409 (nothing is imported).
    A repeated `Idempotency-Key` with the same body answers 200 with the original result (header
    `Idempotent-Replayed: true`); with another body, 422.

    An import of more than `WAGON_ASYNC_IMPORT_ROWS` rows is validated (a bad row: 422, nothing queued), then
    answered 202 with a job (`Location`: its `status_url`, `GET /v1/jobs/{id}`) that stores it as above; a repeat
    of the same body (same `Idempotency-Key`, or none while the job is unfinished) gets the same job."""
    await run_in_threadpool(facilities.get_facility, store, facility_id)
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(status_code=422, detail="body is not UTF-8 text") from None
    if media_type in ("text/csv", "application/csv"):
        rows = await run_in_threadpool(
            lambda: imports.parse_csv_import(text, window=settings.capture_window, max_counts=settings.max_counts)
        )
    elif media_type == "application/json" or media_type.endswith("+json"):
        payload = json_body.loads(text)
        rows = await run_in_threadpool(imports.parse_json_import, payload, settings.capture_window, settings.max_counts)
    else:
        raise HTTPException(
            status_code=415, detail=f"unsupported content type {media_type!r}; send application/json or text/csv"
        )
    disarm_timeout(request.scope)  # storing: the request finishes, so a 504 never hides a stored import
    idempotency = None if idempotency_key is None else (principal.scope, idempotency_key)
    digest = hashlib.sha256(media_type.encode() + b"\n" + body).hexdigest()
    if runtime.jobs is not None and len(rows) > settings.async_import_rows:
        queued = await run_in_threadpool(runtime.jobs.submit_import, facility_id, rows, digest, idempotency)
        if queued is not None:  # else: imported directly before under this key; the replay follows
            url = f"/v1/jobs/{queued[0]}"
            accepted = ImportJobAcceptedOut.model_validate(
                {"job_id": queued[0], "status": queued[1], "status_url": url}
            )
            return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": url})
    result = await run_in_threadpool(imports.import_counts, store, facility_id, rows, idempotency, digest)
    out = ImportOut(
        imported=len(result.observations),
        duplicates=result.duplicates,
        observations=[ObservationOut.model_validate(r.to_dict()) for r in result.observations],
    )
    if result.replayed:
        return JSONResponse(out.model_dump(mode="json"), status_code=200, headers={"Idempotent-Replayed": "true"})
    request_prefit(request, facility_id)  # the next upload's anomaly fits, in the background
    return out


@router.get(
    "/facilities/{facility_id}/observations",
    response_model=ObservationPageOut,
    responses={
        200: {"content": {"text/csv": {}}, "description": "A page of observations (JSON, or CSV with `format=csv`)."},
        **errors(404, 422),
    },
    dependencies=[allow(Access.READ)],
)
def list_observations(
    facility_id: FacilityId,
    store: StoreDep,
    start: Annotated[str | None, Query(description="Earliest captured_at (inclusive), ISO 8601 with timezone.")] = None,
    end: Annotated[str | None, Query(description="Latest captured_at (inclusive), ISO 8601 with timezone.")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most observations in the page.")] = DEFAULT_PAGE,
    order: Annotated[Literal["asc", "desc"], Query(description="`asc`: oldest first; `desc`: newest first.")] = "asc",
    format: Annotated[
        Literal["json", "csv"],
        Query(description="`csv`: one row per observation; the next page's cursor is in the `X-Next-Cursor` header."),
    ] = "json",
) -> ObservationPageOut | Response:
    """A facility's time series with counts and per-class anomaly scores, a page at a time: the page's
    `observations` and `next_cursor` (null on the last page; pass it as `cursor` to continue)."""
    lo = validation.parse_timestamp(start, "start") if start else None  # empty parameter = not given
    hi = validation.parse_timestamp(end, "end") if end else None
    records = observations.list_observations(store, facility_id, lo, hi)
    if order == "desc":
        records = records[::-1]
    after = web.cursor_key(cursor, str, int)
    if after is not None:
        key = (validation.parse_timestamp(after[0], "cursor"), after[1])
        if order == "asc":
            records = [r for r in records if (r.captured_at, r.id) > key]
        else:
            records = [r for r in records if (r.captured_at, r.id) < key]
    page, next_cursor = web.paginate(records, limit, lambda r: [validation.iso(r.captured_at), r.id])
    dicts = [r.to_dict() for r in page]
    if format == "csv":
        classes = list(offline.CLASS_NAMES)
        return web.csv_response(
            web.observation_csv_header(classes),
            (web.observation_csv_row(d, classes) for d in dicts),
            f"{facility_id}-observations.csv",
            headers={"X-Next-Cursor": next_cursor} if next_cursor else None,
        )
    return ObservationPageOut(observations=[ObservationOut.model_validate(d) for d in dicts], next_cursor=next_cursor)


@router.get(
    "/observations/{observation_id}",
    response_model=ObservationDetailOut,
    responses=errors(404, 422),
    dependencies=[allow(Access.READ)],
)
def get_observation(
    observation_id: ObservationId,
    store: StoreDep,
    include: Annotated[
        Literal["candidates"] | None,
        Query(description="`candidates`: also the detections kept below the counting threshold."),
    ] = None,
) -> ObservationDetailOut:
    """One observation with its detections (those counted), its review in force and verified counts."""
    rec = reviews.get_observation(store, observation_id)
    return ObservationDetailOut.model_validate(
        rec.to_dict(with_detections=True, with_candidates=include == "candidates")
    )


@router.get(
    "/observations/{observation_id}/detections.geojson",
    responses={
        200: {"content": {"application/geo+json": {}}, "description": "GeoJSON FeatureCollection (WGS84)."},
        **errors(404),
    },
    dependencies=[allow(Access.READ)],
)
def get_detections_geojson(observation_id: ObservationId, store: StoreDep) -> Response:
    """The observation's detections as a GeoJSON FeatureCollection in WGS84 (one Polygon per oriented box, with
    `class`, `confidence` and `captured_at`); opens as it is in QGIS. 404 when the image was not georeferenced."""
    collection = scenes.observation_geojson(store, observation_id)
    return Response(
        json.dumps(collection),
        media_type="application/geo+json",
        headers={"Content-Disposition": f'inline; filename="observation-{observation_id}.geojson"'},
    )


@router.get(
    "/observations/{observation_id}/overlay.png",
    responses={
        200: {"content": {"image/png": {}}, "description": "The image with oriented boxes and a legend."},
        **errors(404),
    },
    dependencies=[allow(Access.READ)],
)
def get_overlay(
    observation_id: ObservationId,
    store: StoreDep,
    settings: SettingsDep,
    boxes: Annotated[bool, Query(description="false: the image alone (to draw a review on).")] = True,
) -> Response:
    """The observation's image (the region read, downscaled to at most `WAGON_OVERLAY_MAX_PX` a side) with its
    counted oriented boxes drawn per class, the facility footprint, and the counts in a legend (`boxes=false`: the
    image alone). 404 without an archived original."""
    png = scenes.render_overlay(store, settings, observation_id, boxes=boxes)
    return Response(png, media_type="image/png")
